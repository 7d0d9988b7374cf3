# PushT from the 206 HUMAN demonstrations that Diffusion Policy and LeRobot's diffusion_pusht were trained on
# (`lerobot/pusht` on the hub; offline, pass the local copy: --dataset=../shared/datasets/pusht_human_v30).
#   python train_bc.py --task=pusht_human --dataset=../shared/datasets/pusht_human_v30
# Human demos are multimodal (the same state, different pushes) and few (25,650 frames), so the recipe differs
# from the expert-data preset: a generative head (at 9 min all heads scored 0 and mlp/diffusion tied on coverage;
# regression averages the modes of human pushes), two observation steps, random image shifts. NOT yet better than
# the simple MLP recipe at success (RESULTS.md: 0.020 at 9500 of these 12000 iterations vs 0.17).
task = 'pusht'  # the simulator: gym-pusht (the dataset's own task text conditions the policy)
dataset = 'lerobot/pusht'
out_dir = 'out/pusht_human'
action_head_type = 'diffusion'
n_obs_steps = 2
augment = False
augment_shift = 4
action_chunk_size = 16
n_action_steps = 8
max_iters = 12000  # ~70 min on a 2-core CPU (+ ~14 min of evaluation: 2 x 50 validation, 200 test episodes)
batch_size = 64
learning_rate = 3e-4
eval_interval = 4000
eval_episodes = 50
final_eval_episodes = 200
