# LIBERO (Liu et al. 2023) as LeRobot publishes it: 1,693 episodes over 40 tasks of a Franka arm in 4 suites, 10 fps,
# two 256x256 cameras (agent view `observation.images.image`, wrist `observation.images.image2`), state 8, action 7
# (end-effector delta + gripper). This repo has no LIBERO simulator task, so task = '': the dataset trains
# without a simulator and validates open loop on its last 10% of episodes (README, "Your own data"). Frames are
# resized to 96x96 while they decode: ~15 GB of frame cache instead of ~107 GB at full size. The suites are other
# hub ids, whose wrist camera is named `wrist_image` (every camera is used, whatever its name):
# --task=libero --dataset=lerobot/libero_10 (or _spatial, _object, _goal).
# Not trained here: no figures yet. tests/test_train_bc.py runs it on a stand-in with this schema in the hub cache.
task = ''
dataset = 'lerobot/libero'
out_dir = 'out/libero'
image_size = 96
action_chunk_size = 10  # 1 s at 10 fps
n_action_steps = 5
max_iters = 30000
eval_interval = 2000  # open-loop validation: seconds, not minutes, without a simulator
