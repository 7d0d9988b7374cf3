# robosuite Lift (Panda picks up a red cube) from the agentview camera + gripper position and finger joints, at
# a size that trains and evaluates end to end on a CPU. Actions are 4-D OSC position deltas + gripper in
# [-1, 1] (lift.py); a gaussian head with chunks of 16 executed 8 at a time (0.4 s at 20 Hz).
# Demos: the closed-loop scripted reach-grasp-lift expert (lift.py, ~40 steps per episode). The Gaussian
# head is the seed's recipe; --action_head_type=mlp solves the task (1.00, RESULTS.md).
# The image encoder is the ImageNet EfficientNet-Lite0, frozen (pip package, requirements-weights.txt): at about the
# scratch CNN's training time it reached 0.48 on 50 held-out seeds in 5.6 min (1800 iterations), the 16-wide CNN
# from scratch 0.32 in 6.8 min (6000), the same EfficientNet fine-tuned 0.32 in 9.8 min (900): pretrained features
# find the cube with fewer steps, and frozen ones cost half a fine-tuned step (RESULTS.md, 2026-12-02; one seed each).
task = 'lift'
out_dir = 'out/lift'
dataset_episodes = 50
vision_encoder = 'efficientnet-lite0'
freeze_vision = True
action_head_type = 'gaussian'
action_chunk_size = 16
n_action_steps = 8
max_iters = 1800
augment = False  # a fixed simulated camera: augmentation cost 30% of the step and did not help PushT (RESULTS.md)
batch_size = 64
learning_rate = 3e-4
eval_interval = 0
final_eval_episodes = 20
