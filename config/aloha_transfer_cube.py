# ALOHA bimanual cube transfer (gym-aloha) from the top camera + 14 joint angles, on a CPU. ACT's recipe at CPU size
# (Zhao et al. 2023): its transformer decoder predicts 1 s of joint targets (50 steps at 50 Hz), re-planned every
# step and averaged over the overlapping chunks (temporal ensembling). On the same 50 demos and 6000 iterations it
# lifts validation success from 0.08 (diffusion, chunk 16) to 0.50: the reach to the cube was what failed. 200 demos
# (the scripted expert's are free: 4.7 min) and 15000 iterations (37 min) take it to 0.92 on validation and 0.915 on
# 200 test seeds; 500 demos (8.9 min to record) and the same 15000 iterations (38 min) to 0.94 and 0.955
# (a second training seed: 0.945)
# (RESULTS.md, issue 35; 50 demos and 15000 iterations: 0.795). Demos: scripted plan + joint replay (aloha.py).
# A 192x192 camera (--image_size=192) and EMA off were no better at 50 demos (0.52, 0.42 against 0.50).
task = 'aloha_transfer_cube'
out_dir = 'out/aloha_transfer_cube'
dataset_episodes = 500
action_head_type = 'transformer'
action_chunk_size = 50
n_action_steps = 1
temporal_ensemble_coeff = 0.01  # ACT's weight exp(-m * i) over the chunks that predicted this step
max_iters = 15000
augment = False  # a fixed simulated camera: augmentation cost 30% of the step and did not help PushT (RESULTS.md)
batch_size = 64
learning_rate = 3e-4
eval_interval = 0
final_eval_episodes = 200
eval_workers = 2  # the 200 test episodes in 2 processes
