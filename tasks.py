"""
The task table and what the simulator modules share, in a leaf module that imports none of them. envs.py imports
the task modules (pusht.py, aloha.py, lift.py) lazily; if they imported envs back for these few names, the imports
would go in a circle, and importing envs to read a spec would have to load MuJoCo or robosuite.
"""
import atexit
import weakref

import numpy as np

# ALOHA joint limits (rad) of waist, shoulder, elbow, forearm roll, wrist angle, wrist rotate, then the gripper
# opening in [0, 1], per arm (left, right): gym-aloha's XML ranges
ALOHA_LOW = [-3.14158, -1.85005, -1.76278, -3.14158, -1.8675, -3.14158, 0.0] * 2
ALOHA_HIGH = [3.14158, 1.25664, 1.6057, 3.14158, 2.23402, 3.14158, 1.0] * 2
TASKS = {
    "pusht": dict(module="pusht", env_id="gym_pusht/PushT-v0", fps=10, max_steps=300, image_size=96,
                  instruction="push the T-shaped block onto the T-shaped target",
                  image_keys=["observation.image"], state_key="observation.state", state_dim=2, action_dim=2,
                  action_low=0.0, action_high=512.0, mirror_line=512.0,
                  max_step_change=40.0),  # px: the expert moves <= 20 px/step; policy chunks jump a bit more
    # ALOHA (aloha.py): 50 Hz, 400 steps like ACT and LeRobot; state / action = 14 joint angles / joint targets
    "aloha_transfer_cube": dict(module="aloha", env_id="gym_aloha/AlohaTransferCube-v0", fps=50, max_steps=400,
                                image_size=96,
                                instruction="pick up the cube with the right arm and transfer it to the left arm",
                                image_keys=["observation.images.top"], state_key="observation.state",
                                state_dim=14, action_dim=14, action_low=ALOHA_LOW, action_high=ALOHA_HIGH,
                                reward_stages=["none", "right touched", "right lifted", "left touched", "transferred"],
                                # rad (gripper: fraction) per 20 ms step: the expert's wrist rolls turn up to 0.29
                                # near the wrist singularity, every other joint < 0.07
                                max_step_change=0.3),
    "aloha_insertion": dict(module="aloha", env_id="gym_aloha/AlohaInsertion-v0", fps=50, max_steps=400, image_size=96,
                            instruction="pick up the peg and the socket and insert the peg into the socket",
                            image_keys=["observation.images.top"], state_key="observation.state",
                            state_dim=14, action_dim=14, action_low=ALOHA_LOW, action_high=ALOHA_HIGH,
                            reward_stages=["none", "both touched", "both lifted", "peg in socket", "inserted"],
                            max_step_change=0.3),  # its demos: < 0.13 rad per step
    # robosuite Lift (lift.py): Panda lifts a cube; action = OSC position delta (3) + gripper in [-1, 1];
    # state = gripper xyz + 2 fingers
    "lift": dict(module="lift", env_id="robosuite/Lift-Panda", fps=20, max_steps=150, image_size=96,
                 instruction="pick up the red cube and lift it",
                 image_keys=["observation.images.agentview"], state_key="observation.state",
                 state_dim=5, action_dim=4, action_low=[-1.0] * 4, action_high=[1.0] * 4,
                 action_mode=("delta", "delta", "delta", "absolute"), rest_action=[0.0, 0.0, 0.0, -1.0],
                 # its actions are already velocities (Cartesian steps, bounded to [-1, 1] by the box) and a
                 # gripper command that flips -1 <-> +1: no extra rate limit
                 max_step_change=2.0),
}
# mirror_line: the scene is symmetric under the reflection (x, y) -> (L - y, L - x) across the line x + y = L, so a
# reflected demonstration is another valid one (data.mirror_batch; train_bc.py --augment_mirror). PushT: the goal T
# (256, 256, 45 deg) has its stem on x + y = 512, and the T block, the round pusher and the physics are symmetric too.
# module: the file that simulates the task and scripts its expert (envs.task_module imports it on first use).
# max_step_change: deploy.py's safety shield, the largest change of the command per control step (raw units).
# reward_stages: names of the rewards 0..4 of a staged task; eval.py counts the episodes whose best reward was each.
# action_mode (default 'absolute'): an 'absolute' action is a target position (PushT's pusher, ALOHA's joints);
# a 'delta' one is a displacement per step (Lift's OSC deltas), held at 0. rest_action: the command of a robot at
# rest (Lift: no motion, gripper open), the safety shield's first reference where the state is not a command.


def delta_dims(action_mode, action_dim):
    """A spec's action_mode -> bool array, True where an action dim is a displacement ('delta'), not a target."""
    modes = [action_mode] * action_dim if isinstance(action_mode, str) else list(action_mode)
    if len(modes) != action_dim or set(modes) - {'absolute', 'delta'}:
        raise ValueError(f"action_mode must be 'absolute', 'delta' or one of them per action dim ({action_dim}), "
                         f"got {action_mode!r}")
    return np.array([m == 'delta' for m in modes])


VAL_SEED = 100_000  # periodic eval during training uses seeds VAL_SEED.. ; demos use seeds [0, 100000)
TEST_SEED = 200_000  # final reported eval

_open_renderers = weakref.WeakSet()  # MuJoCo renderers of the MuJoCo tasks (aloha.py, lift.py)


def new_mujoco_renderer(model, height, width):
    """An offscreen mujoco.Renderer that is freed at exit while EGL is still up (one freed after an exit hook has
    called eglTerminate prints errors). mujoco registers that hook at its first context, dm_control (gym-aloha) when
    it is imported, which can be after a Lift renderer: so our hook moves to the end of the exit hooks with every
    new renderer, and atexit, last in first out, runs it before theirs."""
    import mujoco  # the MuJoCo tasks import it first, after setting MUJOCO_GL

    r = mujoco.Renderer(model, height, width)
    _open_renderers.add(r)
    atexit.unregister(_close_mujoco_renderers)
    atexit.register(_close_mujoco_renderers)
    return r


def _close_mujoco_renderers():
    for r in list(_open_renderers):
        r.close()
