# ALOHA bimanual peg insertion (gym-aloha): the left arm holds the socket, the right slides the peg in until it
# touches the pin. The cube transfer's recipe (config/aloha_transfer_cube.py: ACT's transformer decoder, 1 s chunks,
# temporal ensembling), chosen on the cube transfer's validation seeds, at 50 demos and 6000 iterations (15 min):
# 0.48 on 200 held-out seeds, was 0.25 with the diffusion head (RESULTS.md, issue 35). Most failures put the peg in
# the socket without reaching the pin. Demos from aloha.plan_insertion + joint replay (99 s to record).
task = 'aloha_insertion'
out_dir = 'out/aloha_insertion'
dataset_episodes = 50
action_head_type = 'transformer'
action_chunk_size = 50
n_action_steps = 1
temporal_ensemble_coeff = 0.01
max_iters = 6000
augment = False
batch_size = 64
learning_rate = 3e-4
eval_interval = 0
final_eval_episodes = 200
eval_workers = 2
