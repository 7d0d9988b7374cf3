# A few-iteration smoke run of the whole pipeline (data, training, eval, checkpoint) in ~1 minute.
task = 'pusht'
out_dir = 'out/pusht_debug'
dataset_episodes = 4
max_iters = 20
batch_size = 8
warmup_iters = 5
log_interval = 5
eval_interval = 0
final_eval_episodes = 2
ckpt_interval = 10
