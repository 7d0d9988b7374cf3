# DROID (Khazatsky et al. 2024), the 100-episode sample LeRobot publishes (32,212 frames): a Franka arm in many real
# scenes, 15 fps, two exterior cameras and a wrist camera at 180x320, state 8 and action 8 (their names are in the
# dataset's meta/info.json). All three cameras are used, resized to 96x171 (the same 16:9 aspect) while they decode.
# No DROID simulator here: task = '', open-loop validation on the last 10 episodes (README, "Your own data").
# Not trained here: no figures yet. tests/test_train_bc.py runs it on a stand-in with this schema in the hub cache.
task = ''
dataset = 'lerobot/droid_100'
out_dir = 'out/droid'
image_size = 96
action_chunk_size = 15  # 1 s at 15 fps
n_action_steps = 8
max_iters = 10000
eval_interval = 1000
