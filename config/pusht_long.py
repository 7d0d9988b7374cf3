# The longer PushT recipe (issue 5's >= 90% target): the default preset (config/pusht.py) with 2000 expert demos
# and 40000 iterations (about an hour of training on a 2-core CPU; RESULTS.md has what it reached: 0.88).
#   python train_bc.py --task=pusht_long        (the same as: python train_bc.py --task=pusht config/pusht_long.py)
task = 'pusht'
out_dir = 'out/pusht_long'
dataset_episodes = 2000
augment = False
action_head_type = 'mlp'
action_chunk_size = 16
n_action_steps = 8
max_iters = 40000
batch_size = 64
learning_rate = 3e-4
eval_interval = 5000
eval_episodes = 20
final_eval_episodes = 100
