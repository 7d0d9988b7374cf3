# PushT from 96x96 pixels + agent position on one CPU in under 30 minutes (the default recipe; RESULTS.md).
# The seed's recipe is the MLP head; --action_head_type=diffusion|flow|transformer are alternatives.
task = 'pusht'
out_dir = 'out/pusht'
dataset_episodes = 200
action_head_type = 'mlp'
action_chunk_size = 16
n_action_steps = 8
max_iters = 12000
batch_size = 64
learning_rate = 3e-4
eval_interval = 3000
eval_episodes = 20
final_eval_episodes = 100
