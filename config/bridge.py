# BridgeData V2 (Walke et al. 2023) as the Open X-Embodiment port to LeRobot's format: 53,192 episodes (1.89M frames)
# of a WidowX 250 arm in kitchens and toy sinks, 5 fps, up to four 256x256 AV1 cameras, state 8 (end-effector xyz,
# roll-pitch-yaw, a pad, gripper), action 7 (end-effector delta xyz and rpy, gripper), one instruction per episode.
# image_0 is the fixed over-the-shoulder view that every episode has (the others are blank in many of them); OpenVLA
# and Octo train on it alone, and so does this preset. No Bridge simulator here: task = '', open-loop validation on
# the last 10% of episodes (README, "Your own data"). The frame cache at 96x96 holds ~52 GB on disk (one camera).
# Not trained here: no figures yet. tests/test_train_bc.py runs it on a stand-in with this schema in the hub cache.
task = ''
dataset = 'IPEC-COMMUNITY/bridge_orig_lerobot'
out_dir = 'out/bridge'
cameras = 'observation.images.image_0'
image_size = 96
action_chunk_size = 4  # 0.8 s at 5 fps: Octo's action horizon on Bridge
n_action_steps = 2
max_iters = 100000
eval_interval = 5000
