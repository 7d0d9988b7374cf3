# The longer PushT recipe (issue 5's >= 90% target): the default preset with 2000 expert demos and
# 40000 iterations (about an hour of training on a 2-core CPU; RESULTS.md has what it reached).
#   python train_bc.py --task=pusht config/pusht_long.py
dataset_episodes = 2000
max_iters = 40000
eval_interval = 5000
out_dir = 'out/pusht_long'
