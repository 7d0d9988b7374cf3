# robosuite Lift (Panda picks up a red cube) from the agentview camera + gripper position and finger joints, at
# a size that trains and evaluates end to end on a CPU. Actions are 4-D OSC position deltas + gripper in
# [-1, 1] (lift.py); a gaussian head with chunks of 16 executed 8 at a time (0.4 s at 20 Hz).
# Demos: the closed-loop scripted reach-grasp-lift expert (lift.py, ~40 steps per episode). The Gaussian
# head is the seed's recipe (0.35 held-out success); --action_head_type=mlp solves the task (1.00, RESULTS.md).
task = 'lift'
out_dir = 'out/lift'
dataset_episodes = 50
action_head_type = 'gaussian'
action_chunk_size = 16
n_action_steps = 8
max_iters = 6000
augment = False  # a fixed simulated camera: augmentation cost 30% of the step and did not help PushT (RESULTS.md)
batch_size = 64
learning_rate = 3e-4
eval_interval = 0
final_eval_episodes = 20
