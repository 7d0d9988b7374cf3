# PushT from the 206 HUMAN demonstrations that Diffusion Policy and LeRobot's diffusion_pusht were trained on
# (`lerobot/pusht` on the hub; offline, pass the local copy: --dataset=../shared/datasets/pusht_human_v30).
#   python train_bc.py --task=pusht_human --dataset=../shared/datasets/pusht_human_v30
# Human demos are few (25,650 frames) and the camera never moves, so the policy memorizes pixel positions:
# random +-4 px image shifts are what helped (RESULTS.md, recipe sweep: coverage 0.51 -> 0.68 at ~10k iterations).
# At equal iterations the MLP head beat diffusion at success (0.22 vs 0.02 on 50 validation seeds) and two
# observation steps did not help. A 32-wide CNN with a 4x4 token grid led the 16-wide one in every sweep draw,
# at 1.9x the CPU step, so the recipe spent the budget on width: 14000 iterations instead of 30000.
# Half of its failures ended within ~6 px of the goal pose: the head now predicts each action as an offset from
# the pusher's own position (relative_actions) instead of an absolute target it must first reproduce to ~1 px.
# Measured with a 32-wide CNN (RESULTS.md, 200 test seeds): 0.465 success (avg max reward 0.838) after 60 min of
# training, 0.38 (0.839) with --seed=2 after 50 min (seed-to-seed spread of ~0.09 on this data); with absolute
# actions 0.315 (0.799); 20000 iterations (~100 min) 0.435 (0.849), no better; the flow-matching head in the same
# ~60 min (10000 of its slower steps) 0.240 (0.851). So the rest of the 2-hour budget goes to width instead: a
# 64-wide CNN, the same 14000 iterations in 82 min, 0.49 (0.865) on the same 200 test seeds, the best measured there
# (one seed: 0.025 above the 32-wide CNN's better seed, under one standard error), and 0.415 on the next 200 seeds:
# 0.45 over 400, so its lead is within the noise.
# A mixture head (5 Laplace components, the heaviest executed) with this recipe: 0.07 -- its best component fits the
# demos as well as the MLP, but it cannot tell which one the human took (RESULTS.md, 2026-11-27 #10).
# PushT is mirror-symmetric about the goal T's stem (the line x + y = 512), so every demonstration reflected across it
# is another valid one (augment_mirror, data.mirror_batch): with the same 14000 iterations (85.6 min) 0.65 on the 200
# test seeds (avg max reward 0.907) and 0.575 on each of the next two sets of 200: 0.60 over 600, against 0.48 without
# (RESULTS.md, 2026-11-27 #11). LeRobot's diffusion_pusht reaches 0.638 after 200k GPU steps.
# The human episodes stop the moment the T is placed, so the last few-pixel pushes are a small share of the frames
# (a near miss is a policy that stops or pushes through at coverage ~0.94): seeing each episode's last 20 frames 3x
# per epoch (end_frames / end_repeats) gives 0.705 / 0.65 / 0.69 on the three sets of 200 test seeds, 0.68 over 600
# (avg max reward 0.915), against the mirror alone's 0.60, after 81.5 min of training (RESULTS.md, 2026-11-27 #12):
# above LeRobot's 0.638 by ~2 standard errors. A second training seed (--seed=2, 56 min on a faster day): 0.647 over the
# same 600 (avg max reward 0.901), so 0.664 over both seeds (RESULTS.md, 2026-12-08).
task = 'pusht'  # the simulator: gym-pusht (the dataset's own task text conditions the policy)
dataset = 'lerobot/pusht'
out_dir = 'out/pusht_human'
action_head_type = 'mlp'
n_obs_steps = 1
augment = False
augment_shift = 4
augment_mirror = True  # half of each batch reflected across the goal's axis: 0.48 -> 0.60 success over 600 test seeds
end_frames = 20  # each episode's last 20 frames (2 s, the final alignment) ...
end_repeats = 3  # ... 3 times per epoch: 0.60 -> 0.68 over 600 test seeds
cnn_width = 64  # 32: 0.465 / 0.38 over two seeds in ~50-60 min; 64: 0.49 in 82 min, same test seeds (RESULTS.md; before the mirror)
vision_grid = 4
relative_actions = True  # offsets from the pusher's position (absolute targets: 0.315 -> 0.465)
action_chunk_size = 16
n_action_steps = 8
max_iters = 14000  # ~82-86 min on a 2-core CPU (0.32-0.37 s/iter) + ~1 min of validation + ~4.5 min of final test
batch_size = 64
learning_rate = 3e-4
eval_interval = 7000
eval_episodes = 50
final_eval_episodes = 200
