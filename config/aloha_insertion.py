# ALOHA bimanual peg insertion (gym-aloha): the left arm holds the socket, the right slides the peg in until it
# touches the pin. The cube transfer's recipe (config/aloha_transfer_cube.py: ACT's transformer decoder, 1 s chunks,
# temporal ensembling, 200 demos, 15000 iterations), chosen on the cube transfer's validation seeds: 0.90 on 200
# held-out seeds after 39 min of training, 0.935 with a second training seed (RESULTS.md, issue 35); at 50 demos it reached 0.48 after 6000 iterations
# and 0.735 after 15000, the former diffusion preset 0.25. The 20 failures put the peg in the socket without touching the pin.
# Demos: aloha.plan_insertion + joint replay (4.9 min to record 200).
task = 'aloha_insertion'
out_dir = 'out/aloha_insertion'
dataset_episodes = 200
action_head_type = 'transformer'
action_chunk_size = 50
n_action_steps = 1
temporal_ensemble_coeff = 0.01
max_iters = 15000
augment = False
batch_size = 64
learning_rate = 3e-4
eval_interval = 0
final_eval_episodes = 200
eval_workers = 2
