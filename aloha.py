"""
ALOHA bimanual tasks (gym-aloha's transfer cube and insertion) rendered headless on the CPU, and a scripted
expert that records their demonstrations the way ACT did (Zhao et al. 2023, "Learning Fine-Grained Bimanual
Manipulation with Low-Cost Hardware").

The robot: two 6-DoF ViperX 300 arms facing each other across a table (bases at x = -/+0.469 m), each with a
parallel gripper. Action (14,) = per arm 6 joint-angle targets (rad) + gripper opening in [0, 1] (0 closed);
position servos track the targets at 50 Hz (10 physics steps of 2 ms). State (14,) = measured joint angles and
gripper openings, same layout. Reward (gym-aloha, from contacts): transfer cube 1 = right fingers touch the
cube, 2 = ... and it is off the table, 3 = left fingers touch it, 4 = ... off the table = success (ends the
episode). Insertion: 1 = both objects touched, 2 = both lifted, 3 = peg touches socket, 4 = peg touches the pin.

The expert (ACT's recipe), per seed:
  1. plan: time-indexed waypoints (t, position, orientation, gripper) for the point between each gripper's
     finger pads, computed from the objects' initial poses (approach, grasp, lift, meet, hand over / insert);
  2. execute the plan in the END-EFFECTOR version of the task, where mocap bodies welded to the grippers drag
     the arms along (MuJoCo's constraint solver finds the joint angles), and record the joint angles;
  3. replay those joint angles as position targets in the joint-space env (the real task) and keep the
     episode if the env reports success (reward 4). The replay's images, states and targets are the demo.
The plan is open loop. Off the expert's path (DAgger, `eval.py --policy=expert`) AlohaExpert.get_action instead
solves inverse kinematics on the MuJoCo model from the CURRENT joint angles to the plan's next gripper poses.
"""
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # render without a display (Mesa EGL on the CPU); set before mujoco loads

import time  # noqa: E402

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from dm_control import mujoco as dm_mujoco  # noqa: E402
from dm_control.rl import control  # noqa: E402
from gym_aloha.constants import ASSETS_DIR, DT, START_ARM_POSE  # noqa: E402
from gym_aloha.constants import ACTIONS, JOINTS  # noqa: E402
from gym_aloha.tasks import sim, sim_end_effector  # noqa: E402
from gym_aloha.utils import sample_box_pose, sample_insertion_pose  # noqa: E402

from tasks import ALOHA_HIGH, ALOHA_LOW, TASKS, TEST_SEED, new_mujoco_renderer  # noqa: E402

FPS = 50
ARM = {"left": (0, 6), "right": (8, 14)}  # qpos slices of each arm's 6 joints (qpos 6:8, 14:16 = finger slides)
GRIPPER_BODY = {"left": "vx300s_left/gripper_link", "right": "vx300s_right/gripper_link"}
GRIP = 0.11  # m from the gripper_link origin along its x axis (the fingers) to the point we aim at the object
ARM_LOW, ARM_HIGH = ALOHA_LOW[:6], ALOHA_HIGH[:6]  # joint limits (rad) of each arm's 6 joints (no gripper)

# -----------------------------------------------------------------------------
# the environments: gym-aloha's tasks (same XML, action mapping, reward) with cheap observations


class _NoRender:
    """gym-aloha's tasks render three 480x640 cameras on every step (~130 ms on a CPU); we render on demand."""

    def get_observation(self, physics):
        return {"qpos": self.get_qpos(physics)}


class _SeededEndEffector(_NoRender):
    """gym-aloha's end-effector tasks draw the object pose from an unseeded RNG: place it like the joint tasks."""

    def initialize_episode(self, physics):
        with physics.reset_context():
            self.initialize_robots(physics)  # arms at the start pose, grippers closed
            physics.data.qpos[16:] = sim.BOX_POSE[0]


class _TransferCube(_NoRender, sim.TransferCubeTask): pass  # noqa: E701
class _Insertion(_NoRender, sim.InsertionTask): pass  # noqa: E701
class _TransferCubeEE(_SeededEndEffector, sim_end_effector.TransferCubeEndEffectorTask): pass  # noqa: E701
class _InsertionEE(_SeededEndEffector, sim_end_effector.InsertionEndEffectorTask): pass  # noqa: E701


SIMS = {  # task -> gym-aloha name, its (joint task, end-effector task) classes, seed -> object poses (7 per object)
    "aloha_transfer_cube": ("transfer_cube", _TransferCube, _TransferCubeEE, sample_box_pose),
    "aloha_insertion": ("insertion", _Insertion, _InsertionEE, lambda s: np.concatenate(sample_insertion_pose(s))),
}
SPECS = {task: TASKS[task] for task in SIMS}
EXPERT_FLAGS = ("ik",)  # the expert options `python envs.py` takes for these tasks: ik=True records the IK expert


def cube_contacts(physics):
    """(left arm, right arm, table) touch the cube: 0/1 each. An arm touches it with either finger: gym-aloha's
    transfer-cube reward looks at one finger geom per arm, but a handover often pinches the cube against the other."""
    name, contact = physics.model.id2name, physics.data.contact  # the active contacts (ncon of them)
    touching = {name(b if name(a, "geom") == "red_box" else a, "geom") for a, b in zip(contact.geom1, contact.geom2)
                if "red_box" in (name(a, "geom"), name(b, "geom"))}
    return np.array([any(n.startswith(f"vx300s_{side}/") and "finger" in n for n in touching) for side in ("left", "right")]
                    + ["table" in touching], float)


class AlohaEnv(gym.Env):
    """A gymnasium env around gym-aloha's dm_control task. obs_type 'pixels_agent_pos' -> {"pixels": {"top":
    uint8 (S, S, 3)}, "agent_pos": (14,)} like gym-aloha; 'state' -> (14,) joint state, no rendering (~30x faster).
    end_effector=True: the mocap version, action (16,) = per arm mocap position (3), quaternion (4), gripper (1)."""
    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(self, task="aloha_transfer_cube", obs_type="pixels_agent_pos", image_size=96, end_effector=False,
                 render_size=(240, 320)):
        name, joint_task, ee_task, self._place = SIMS[task]
        xml = f"bimanual_viperx_{'end_effector_' if end_effector else ''}{name}.xml"
        physics = dm_mujoco.Physics.from_xml_path(str(ASSETS_DIR / xml))
        if end_effector:
            # the shipped weld is soft (solimp 0.25): the arms sag ~4 cm under gravity and lag the mocap. A stiff
            # weld makes the gripper go where the plan says; only the recorded joint angles leave this env
            physics.model.eq_solimp[:, :3] = [0.99, 0.99, 0.001]
        physics.model.vis.quality.offsamples = 0  # no MSAA: we supersample instead (see _camera)
        self._env = control.Environment(physics, ee_task() if end_effector else joint_task(), time_limit=float("inf"),
                                        control_timestep=DT, flat_observation=False)
        self.task, self.obs_type, self.image_size, self.render_size = task, obs_type, image_size, render_size
        self.render_mode, self.t, self.episode, self._renderers = "rgb_array", 0, 0, {}
        self.initial_object_pose = None
        n = 16 if end_effector else 14
        self.action_space = gym.spaces.Box(-np.inf, np.inf, (n,), np.float32)
        state = gym.spaces.Box(-np.inf, np.inf, (14,), np.float64)
        image = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = state if obs_type == "state" else gym.spaces.Dict(
            {"pixels": gym.spaces.Dict({"top": image}), "agent_pos": state})

    @property
    def physics(self):
        return self._env.physics

    def reset(self, seed=None, options=None):
        """Objects at gym-aloha's pose for this seed (uniform over a box on the table), arms at the start pose."""
        super().reset(seed=seed)
        sim.BOX_POSE[0] = self.initial_object_pose = self._place(seed)  # gym-aloha's tasks read this global
        self._env.reset()
        self.t, self.episode = 0, self.episode + 1
        return self._obs(), {"is_success": False}

    def step(self, action):
        ts = self._env.step(np.asarray(action, np.float64))
        self.t += 1
        success = ts.reward == 4
        return self._obs(), float(ts.reward), success, False, {"is_success": success}

    def _obs(self):
        qpos = self._env.task.get_qpos(self.physics)  # (14,): arm joints + normalized gripper openings
        if self.obs_type == "state":
            return qpos
        return {"pixels": {"top": self._camera(self.image_size, self.image_size)}, "agent_pos": qpos}

    def render(self):
        """A larger 4:3 frame of the top camera for videos."""
        return self._camera(*self.render_size)

    def _camera(self, h, w, ss=2):
        """The top camera, (h, w, 3) uint8. Shadows off: the 4096^2 shadow map is most of the cost on a CPU
        rasterizer (37 -> 5 ms a frame). Anti-aliasing by 2x supersampling (render 2h x 2w, average 2x2 blocks):
        at 96 px the cube is ~3 px wide, and blended edge pixels keep its sub-pixel position. A square image
        of this camera is the central crop of the 4:3 view: the whole table, without the arms' bases."""
        if (h, w) not in self._renderers:
            self._renderers[(h, w)] = new_mujoco_renderer(self.physics.model.ptr, ss * h, ss * w)
        r = self._renderers[(h, w)]
        r.update_scene(self.physics.data.ptr, camera="top")
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        img = r.render().reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
        return np.round(img).astype(np.uint8)

    def close(self):
        for r in self._renderers.values():
            r.close()
        self._renderers = {}


def make_env(task, render_mode="rgb_array", obs_type=None, image_size=None):
    """The joint-space task with a time limit; obs_type=None -> images + joint state, 'state' -> no images.
    render_mode: rgb_array is the only one. image_size: the top camera's side (None = the task's; ACT's was 480x640)."""
    spec = SPECS[task]
    env = AlohaEnv(task, obs_type=obs_type or "pixels_agent_pos", image_size=image_size or spec["image_size"])
    return gym.wrappers.TimeLimit(env, max_episode_steps=spec["max_steps"])


def obs_to_frame(task, obs):
    """Observation dict -> frame with LeRobot keys: image uint8 (S, S, 3), state float32 (14,)."""
    spec = SPECS[task]
    if not isinstance(obs, dict) or "pixels" not in obs:
        raise ValueError("obs_to_frame needs the image observation; build the env with make_env(task) "
                         "(obs_type=None), not obs_type='state'")
    return {spec["image_keys"][0]: np.ascontiguousarray(obs["pixels"]["top"], dtype=np.uint8),
            spec["state_key"]: np.asarray(obs["agent_pos"], dtype=np.float32)}


def feature_names(task):
    """(state names, action names, robot type) for the dataset's meta/info.json: gym-aloha's joint names."""
    return JOINTS, ACTIONS, "aloha"


def episode_metrics(task, env):
    """ALOHA: the reward stages (eval.py counts them) say where an episode stopped; nothing else."""
    return {}


def gail_features(task, env):
    """GAIL's view of the state (train_gail.py --obs_mode=state): the 14 joint angles and gripper openings, and each
    object's free-joint pose (position in m, quaternion): 7 per object. (21,) or (28,) float32."""
    u = env.unwrapped
    return np.r_[u._env.task.get_qpos(u.physics), u.physics.data.qpos[16:]].astype(np.float32)


# -----------------------------------------------------------------------------
# poses: quaternions (w, x, y, z) with MuJoCo's own helpers


def quat(axis, deg):
    q = np.zeros(4)
    mujoco.mju_axisAngle2Quat(q, np.asarray(axis, float), np.deg2rad(deg))
    return q


def qmul(a, b):
    """a then b in a's frame (b is a rotation about the axes of the frame a produces)."""
    q = np.zeros(4)
    mujoco.mju_mulQuat(q, np.asarray(a, float), np.asarray(b, float))
    return q


def rotate(q, v):
    out = np.zeros(3)
    mujoco.mju_rotVecQuat(out, np.asarray(v, float), np.asarray(q, float))
    return out


def grip_pose(model, data, side):
    """World pose (position (3,), quaternion (4,)) of the aim point between one gripper's finger pads."""
    b = data.body(GRIPPER_BODY[side])
    return b.xpos + rotate(b.xquat, [GRIP, 0, 0]), b.xquat.copy()


def mocap_for(model, side, pos, q):
    """The mocap pose that puts a grip point at (pos, q). A weld holds body2 (gripper_link) at a fixed pose
    relative to body1 (mocap), the one they had in the XML's reference configuration (eq_data[3:10])."""
    i = 0 if side == "left" else 1
    rel_pos, rel_q = model.eq_data[i, 3:6], model.eq_data[i, 6:10]
    q_mocap = np.zeros(4)
    mujoco.mju_mulQuat(q_mocap, q, np.array([rel_q[0], *-rel_q[1:]]))  # q = q_mocap * rel_q
    gripper = pos - rotate(q, [GRIP, 0, 0])
    return gripper - rotate(q_mocap, rel_pos), q_mocap


# -----------------------------------------------------------------------------
# plans: waypoints (t, grip position, grip orientation, gripper opening) per arm, linear in between


def interpolate(waypoints, t):
    """Pose and gripper opening at time t (steps); orientation interpolated linearly and renormalized (nlerp)."""
    for a, b in zip(waypoints[:-1], waypoints[1:]):
        if a[0] <= t <= b[0]:
            f = (t - a[0]) / max(b[0] - a[0], 1)
            q = a[2] + f * (b[2] - a[2])
            return a[1] + f * (b[1] - a[1]), q / np.linalg.norm(q), a[3] + f * (b[3] - a[3])
    last = waypoints[-1]
    return last[1], last[2], last[3]


MEET = np.array([0.0, 0.5, 0.25])  # where the arms hand the cube over, above the table center
CUBE_IN_HAND = np.array([0.015, 0.0, -0.031])  # cube center - right grip point after the grasp (100 seeds: +-6 mm)


def plan_transfer_cube(objects, left, right):
    """Right arm picks the cube and lifts it to MEET; the left arm takes it there; the right lets go.
    objects: (7,) cube pose; left/right: start grip poses. The right gripper is pitched 60 deg down (about its
    own y axis), so its fingers straddle the cube from above; the left one is rolled 90 deg about its x axis
    so its fingers close vertically, on the cube's top and bottom faces, where the right fingers are not."""
    cube = np.array([objects[0], objects[1], 0.02])  # resting on the table (cube half size 2 cm)
    down = qmul(right[1], quat([0, 1, 0], 60))
    # the gripper keeps its start heading wherever the cube is, so the two roll joints (forearm roll, wrist
    # rotate) do the aiming; near the wrist singularity (wrist angle ~0, where they align) they swing fast: up
    # to 0.29 rad in one 20 ms step in the recorded demos (deploy.py's shield allows 0.3 for this task)
    pick = down
    rolled = qmul(left[1], quat([1, 0, 0], 90))
    take = MEET + CUBE_IN_HAND + [-0.015, 0, -0.003]  # the left aims a bit to its side of the cube center
    right_wps = [(0, *right, 0),
                 (60, cube + [0, 0, 0.08], pick, 1),  # above the cube, open
                 (90, cube + [0, 0, 0.01], pick, 1),  # down around it
                 (110, cube + [0, 0, 0.01], pick, 0),  # close
                 (150, MEET, down, 0),  # lift to the meeting point
                 (230, MEET, down, 0),  # hold while the left gripper takes the cube
                 (250, MEET, down, 1),  # open
                 (290, MEET + [0.1, 0, 0], down, 1),  # move away
                 (400, MEET + [0.1, 0, 0], down, 1)]
    left_wps = [(0, *left, 0),
                (130, take + [-0.1, 0, 0], rolled, 1),  # in front of the meeting point, open
                (190, take, rolled, 1),  # slide the fingers around the cube
                (210, take, rolled, 0),  # close
                (250, take, rolled, 0),  # hold while the right gripper opens
                (290, take + [-0.1, 0, 0], rolled, 0),  # pull the cube away
                (400, take + [-0.1, 0, 0], rolled, 0)]
    return left_wps, right_wps


# insertion: the socket is a square tube (12 cm long, 4.4 cm wide) with an 8 cm pin inside, the peg a 12 x 2 x 2 cm
# bar; the peg's end must touch the pin, i.e. go 2 cm into the tube, while both are held off the table
PEG_IN_HAND = np.array([-0.021, 0.0, -0.038])  # peg center - right grip point after the grasp (measured, seeds 1-2)
SOCKET_IN_HAND = np.array([0.019, 0.0, -0.037])  # socket center - left grip point
SOCKET_AT = np.array([-0.05, 0.5, 0.2])  # the socket's center in the left hand: mouth at x = 0.01, pin's end at -0.01


def plan_insertion(objects, left, right):
    """Each arm picks its object near the far end, both lift onto one line along x, the right arm slides the peg into
    the socket until it meets the pin. objects: (14,) peg pose, socket pose. Both grippers pitch 75 deg down: their
    fingertips then reach ~4.5 cm below the aim point, so aiming 3.5 cm above the 2 cm peg's center closes the tips
    around it without touching the table (table contact drags the fingers and the peg slips out)."""
    peg, socket = np.array([*objects[:2], 0.01]), np.array([*objects[7:9], 0.022])  # resting on the table
    down_r, down_l = qmul(right[1], quat([0, 1, 0], 75)), qmul(left[1], quat([0, 1, 0], 75))
    grip_peg, grip_socket = peg + [0.02, 0, 0.035], socket + [-0.02, 0, 0.035]

    def peg_at(x):  # the right grip point that puts the peg's center at x on the socket's axis
        return np.array([x, SOCKET_AT[1], SOCKET_AT[2]]) - PEG_IN_HAND

    right_wps = [(0, *right, 0),
                 (60, grip_peg + [0, 0, 0.08], down_r, 1),  # above the peg, open
                 (90, grip_peg, down_r, 1),  # down around it
                 (110, grip_peg, down_r, 0),  # close
                 (125, grip_peg, down_r, 0),  # let the fingers settle on it
                 (170, peg_at(0.15), down_r, 0),  # lift onto the socket's axis, its end 8 cm from the mouth
                 (260, peg_at(0.12), down_r, 0),  # approach slowly while the socket settles
                 (330, peg_at(0.04), down_r, 0),  # slide in: the end meets the pin once the center passes 0.05
                 (400, peg_at(0.04), down_r, 0)]
    left_wps = [(0, *left, 0),
                (60, grip_socket + [0, 0, 0.08], down_l, 1),
                (90, grip_socket, down_l, 1),
                (110, grip_socket, down_l, 0),
                (170, SOCKET_AT - SOCKET_IN_HAND, down_l, 0),  # lift and hold it there
                (400, SOCKET_AT - SOCKET_IN_HAND, down_l, 0)]
    return left_wps, right_wps


PLANS = {"aloha_transfer_cube": plan_transfer_cube, "aloha_insertion": plan_insertion}


def start_poses(task):
    """Grip poses of both arms at the start configuration (forward kinematics of START_ARM_POSE)."""
    model = mujoco.MjModel.from_xml_path(str(ASSETS_DIR / f"bimanual_viperx_{SIMS[task][0]}.xml"))
    data = mujoco.MjData(model)
    data.qpos[:16] = START_ARM_POSE
    mujoco.mj_kinematics(model, data)
    return grip_pose(model, data, "left"), grip_pose(model, data, "right")


def make_plan(task, objects):
    """Waypoints (left, right) for the objects' initial poses."""
    if task not in PLANS:
        raise NotImplementedError(f"no scripted plan for {task} yet (have: {', '.join(PLANS)})")
    return PLANS[task](objects, *start_poses(task))


def plan_joint_trajectory(task, seed, steps=400):
    """Steps 1-2 of the recipe: execute the plan with mocap bodies in the end-effector env, without rendering.
    -> dict(actions (steps, 14) float32 joint targets for the joint-space env, ee_success, seconds)."""
    t0 = time.perf_counter()
    env = AlohaEnv(task, obs_type="state", end_effector=True)
    env.reset(seed=seed)
    plan = make_plan(task, env.initial_object_pose)
    model = env.physics.model.ptr
    arms, grippers, ee_success = [], [], False
    for t in range(1, steps + 1):  # the target for step t is the plan's pose at t (t=0 is where we are)
        action = []
        for side, wps in zip(("left", "right"), plan):
            pos, q, g = interpolate(wps, t)
            action += [*np.concatenate(mocap_for(model, side, pos, q)), g]
        _, reward, _, _, _ = env.step(np.array(action))
        ee_success |= reward == 4
        qpos = env.physics.data.qpos
        arms.append(np.r_[qpos[0:6], qpos[8:14]])
        grippers.append([action[7], action[15]])
    arms, grippers = np.array(arms), np.array(grippers)
    # the joint target for step t = the angles the mocap rollout reached after step t. The gripper target is
    # the COMMAND, not the measured opening: closed on a cube the fingers stop at its width, and commanding
    # that width would hold it with no force (ACT replaces the gripper joints the same way)
    arms = np.clip(arms, ARM_LOW * 2, ARM_HIGH * 2)  # the weld may pull a joint a hair past its soft limit
    actions = np.concatenate([arms[:, :6], grippers[:, :1], arms[:, 6:], grippers[:, 1:]], axis=1)
    return dict(actions=actions.astype(np.float32), ee_success=ee_success, seconds=time.perf_counter() - t0)


# -----------------------------------------------------------------------------
# inverse kinematics: the closed-loop expert for states off the plan's path


def make_expert(task, **kw):
    """The closed-loop (IK) expert, the one that answers from any state; kw: AlohaExpert's options."""
    return AlohaExpert(task, **kw)


class AlohaExpert:
    """get_action(env) -> (14,) joint targets that move both grip points to the plan's poses for the next step,
    from the current joint angles. The plan is made once per episode from the objects' initial poses; inverse
    kinematics by damped least squares (Levenberg-Marquardt) on a private copy of the MuJoCo model:
        e = [p* - p; w * rotation(q* q^-1)]  (6,)      J = d(p, rotation)/d(6 joint angles)  (6, 6)
        dtheta = J^T (J J^T + lambda^2 I)^-1 e          (damping keeps steps bounded near singular poses)"""

    def __init__(self, task="aloha_transfer_cube", seed=0, iters=10, damping=0.02, rot_weight=0.2):
        self.task, self.iters, self.damping, self.rot_weight = task, iters, damping, rot_weight
        self.model = mujoco.MjModel.from_xml_path(str(ASSETS_DIR / f"bimanual_viperx_{SIMS[task][0]}.xml"))
        self.data = mujoco.MjData(self.model)
        self.plan_time, self.n_decisions = 0.0, 0
        self.reset()

    def reset(self):
        self.plan, self.episode = None, None

    def get_action(self, env):
        u = env.unwrapped
        t0 = time.perf_counter()
        if self.plan is None or self.episode != (id(u), u.episode):  # a new episode: plan from its objects
            self.plan, self.episode = make_plan(self.task, u.initial_object_pose), (id(u), u.episode)
        qpos = u.physics.data.qpos[:16].copy()
        targets = [interpolate(wps, u.t + 1) for wps in self.plan]
        q = self.solve(qpos, [(p, q) for p, q, _ in targets])
        self.plan_time, self.n_decisions = self.plan_time + time.perf_counter() - t0, self.n_decisions + 1
        return np.r_[q[0:6], targets[0][2], q[8:14], targets[1][2]].astype(np.float32)

    def solve(self, qpos, targets):
        """Joint angles (16,) that put the left and right grip points at targets [(pos, quat)] x 2."""
        m, d = self.model, self.data
        d.qpos[:16] = qpos
        jacp, jacr = np.zeros((3, m.nv)), np.zeros((3, m.nv))
        for _ in range(self.iters):
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)  # mj_jac needs the bodies' centers of mass too
            worst = 0.0
            for side, (pos, q) in zip(("left", "right"), targets):
                lo, hi = ARM[side]
                p_now, q_now = grip_pose(m, d, side)
                rot_err = np.zeros(3)
                mujoco.mju_subQuat(rot_err, q, q_now)  # rotation from q_now to q, in q_now's frame
                e = np.r_[pos - p_now, self.rot_weight * rotate(q_now, rot_err)]  # world frame, like the Jacobian
                mujoco.mj_jac(m, d, jacp, jacr, p_now, m.body(GRIPPER_BODY[side]).id)
                J = np.r_[jacp[:, lo:hi], self.rot_weight * jacr[:, lo:hi]]
                dq = J.T @ np.linalg.solve(J @ J.T + self.damping ** 2 * np.eye(6), e)
                d.qpos[lo:hi] = np.clip(d.qpos[lo:hi] + dq, ARM_LOW, ARM_HIGH)
                worst = max(worst, np.abs(e).max())
            if worst < 1e-4:
                break
        return d.qpos[:16].copy()


# -----------------------------------------------------------------------------
# stage 1's questions (train_vlm.py), transfer cube only (VQA): answers computed from the simulator's contacts
# per task: as pusht.VQA; the handover happens around steps 200-300; frames rendered when kept
VQA = {"aloha_transfer_cube": dict(state_names=["touch_left", "touch_right", "touch_table", "cube_x", "cube_y",
                                                "cube_z"], per_episode=40, horizon=400, obs_type="state",
                                   stop_at_success=False)}


def vqa_state(task, env):
    """(6,): the cube touches a finger of the left arm, of the right arm, the table (cube_contacts); cube xyz."""
    u = env.unwrapped
    return np.r_[cube_contacts(u.physics), u.physics.data.qpos[16:19]].astype(np.float32)


def vqa_image(task, env, obs):
    """The frame the policy would see now, rendered from a state-only env through the top camera."""
    size = TASKS[task]["image_size"]
    return env.unwrapped._camera(size, size)


def vqa_answers(task, state):
    """state (6,) of vqa_state -> {question: answer}. An arm holds the cube when its fingers touch it off the table."""
    left, right, table = state[0] > 0.5, state[1] > 0.5, state[2] > 0.5
    holds = "neither arm" if table or not (left or right) else \
        "both arms" if left and right else "the left arm" if left else "the right arm"
    return {"which arm holds the cube?": holds,
            "is the cube on the table?": "yes" if table else "no",
            "does the right gripper touch the cube?": "yes" if right else "no",
            "does the left gripper touch the cube?": "yes" if left else "no"}


# -----------------------------------------------------------------------------
# episodes, recording and evaluation


def run_expert_episode(task, seed, expert_kw=None, render=True, image_size=None, full=False):
    """Plan (EE env), then replay the joint trajectory in the joint-space env (expert_kw {"ik": True}: the IK
    expert drives instead, with the rest of expert_kw as its options). Stops at success (reward 4, the env
    terminates), unless full: then the whole plan runs and 'final_reward' says whether the cube ended in the
    left hand. -> dict(success, steps, actions (T, 14), and when render: images (T, S, S, 3), states (T, 14):
    the observation BEFORE each action; S = image_size, None = the task's)."""
    t0, spec, kw = time.perf_counter(), SPECS[task], dict(expert_kw or {})
    ik = kw.pop("ik", False)
    plan = None if ik else plan_joint_trajectory(task, seed, spec["max_steps"])
    env = AlohaEnv(task, obs_type=None if render else "state", image_size=image_size or spec["image_size"])
    expert = make_expert(task, **kw) if ik else None
    obs, _ = env.reset(seed=seed)
    frames, actions, rewards, t_replay = [], [], [], time.perf_counter()
    for t in range(spec["max_steps"]):
        if render:
            frames.append(obs_to_frame(task, obs))
        actions.append(expert.get_action(env) if ik else plan["actions"][t])
        obs, reward, success, _, _ = env.step(actions[-1])
        rewards.append(reward)
        if success and not full:
            break
    env.close()
    rewards = np.array(rewards)
    ep = dict(seed=seed, success=bool((rewards == 4).any()), steps=int(np.argmax(rewards == 4) + 1 if
              (rewards == 4).any() else len(rewards)), final_reward=float(rewards[-1]),
              actions=np.array(actions, dtype=np.float32), ee_success=None if ik else plan["ee_success"],
              plan_seconds=expert.plan_time if ik else plan["seconds"], replay_seconds=time.perf_counter() - t_replay,
              seconds=time.perf_counter() - t0, decisions=len(actions))
    if render:
        ep["images"] = np.stack([f[spec["image_keys"][0]] for f in frames])
        ep["states"] = np.stack([f[spec["state_key"]] for f in frames])
    return ep


def evaluate_expert(task, num_episodes, seed=TEST_SEED, expert_kw=None, verbose=False):
    """Success of the plan + replay (or of the IK expert) without rendering; the whole plan runs (full=True)
    so that 'final_reward_4' counts the episodes whose final reward is still 4."""
    eps, ik = [], (expert_kw or {}).get("ik", False)
    for k in range(seed, seed + num_episodes):
        eps.append(run_expert_episode(task, k, expert_kw, render=False, full=True))
        if verbose:
            e = eps[-1]
            print(f"seed {k}: success={e['success']} steps={e['steps']} final_reward={e['final_reward']:.0f}")
    ok = [e for e in eps if e["success"]]
    n_steps = sum(e["decisions"] for e in eps)
    return dict(episodes=num_episodes, success_rate=len(ok) / num_episodes,
                final_reward_4=float(np.mean([e["final_reward"] == 4 for e in eps])),
                ee_success_rate=None if ik else float(np.mean([e["ee_success"] for e in eps])),
                median_steps=float(np.median([e["steps"] for e in ok])) if ok else float("nan"),
                plan_seconds_per_step=sum(e["plan_seconds"] for e in eps) / n_steps,
                replay_seconds_per_step=sum(e["replay_seconds"] for e in eps) / n_steps,
                failed_seeds=[e["seed"] for e in eps if not e["success"]])
