# PushT from 96x96 pixels + agent position on one CPU (the default recipe; RESULTS.md): 1000 expert demos
# (~8.5 min to record with 4 worker processes on 2 cores, done once), then 16000 iterations (~21 min) and
# a 100-episode test (~1 min): 0.70 success. Data is what the policy lacked: with 200 demos it memorized them
# (train vs held-out open-loop error 12.7 vs 20.7 px) and reached 0.29-0.32; with 600, 0.67; with 1000, 0.70.
# No image augmentation: the simulated camera never moves, and it costs 30% of a step. The seed's recipe is
# the MLP head; --action_head_type=diffusion|flow|transformer are alternatives. config/pusht_long.py is longer.
# The flow head sampled at temperature 0.25 (--action_head_type=flow --flow_noise_scale=0.25) was no better over two
# runs on the test seeds: 0.665 after 14000 iterations (31 min with its recording) and 0.765 after 16000, against the
# MLP's 0.70 / 0.73 / 0.695; its step costs 1.3x.
# 2000 demos at these 16000 iterations: 0.745 on the 200 test seeds where this recipe got 0.73, for 13 more minutes of
# recording (RESULTS.md): the long preset's 0.88 needs its 40000 iterations, not its demos alone.
# learning_rate=1e-3 (min_lr=1e-4) learns no faster: 0.615 on those 200 seeds, more gross failures (RESULTS.md, 2026-12-08).
task = 'pusht'
out_dir = 'out/pusht'
dataset_episodes = 1000
augment = False
action_head_type = 'mlp'
action_chunk_size = 16
n_action_steps = 8
max_iters = 16000
batch_size = 64
learning_rate = 3e-4
eval_interval = 4000
eval_episodes = 20
final_eval_episodes = 100
