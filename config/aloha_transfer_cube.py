# ALOHA bimanual cube transfer (gym-aloha) from the top camera + 14 joint angles, at a size that trains
# and evaluates end to end on a CPU. The seed's recipe: diffusion head, chunk 16, ACT temporal ensembling
# (re-plan every step and average the overlapping chunks). Demos: scripted plan + joint replay (aloha.py).
task = 'aloha_transfer_cube'
out_dir = 'out/aloha_transfer_cube'
dataset_episodes = 50
action_head_type = 'diffusion'
action_chunk_size = 16
n_action_steps = 1
temporal_ensemble_coeff = 0.01  # ACT's weight exp(-m * i) over the chunks that predicted this step
max_iters = 6000
augment = False  # a fixed simulated camera: augmentation cost 30% of the step and did not help PushT (RESULTS.md)
batch_size = 64
learning_rate = 3e-4
eval_interval = 0
final_eval_episodes = 20
