"""
Single-arm pick and lift: robosuite's Lift task (Zhu et al. 2020, "robosuite: A Modular Simulation Framework and
Benchmark for Robot Learning"; the task robomimic learns from images) rendered headless on the CPU, and a scripted
closed-loop expert that records its demonstrations.

The robot: a 7-DoF Franka Panda at the edge of a table with a parallel-jaw gripper; a red cube (4 cm) lies on the
table near the middle (x, y uniform in +-3 cm, any yaw). Success (robosuite's own check, Lift._check_success): the
cube's center is more than 4 cm above the table top, i.e. lifted ~2 cm; the episode ends there.

Control: operational-space control (OSC, Khatib 1987) of the gripper POSITION only, at 20 Hz. The action (4,) in
[-1, 1] = (dx, dy, dz, gripper): the first three ask for the end effector to move by up to 5 cm per step from where
it is (robot base frame = world axes here: +x away from the robot, +z up); the controller turns that Cartesian
goal into joint torques through the arm's Jacobian and mass matrix (25 physics steps of 2 ms per action), holding
the gripper's orientation fixed (pointing down). gripper: -1 opens, +1 closes (robosuite integrates its sign: a
full close takes ~10 steps). robosuite's default for the Panda is OSC_POSE (7-D, adds rotation deltas). A cube
can be grasped from above with the hand pointing down whatever its yaw: the jaws (8 cm wide open) close on two
opposite faces or, yawed, on two opposite vertical edges (the 6 cm diagonal), and either grip lifts it. So the 4-D
position-only action is enough, simpler to script and one less thing to learn.
State (5,) = what the robot knows about itself: gripper (grip site) position in the world (3) and the two finger
joint positions (2, m; +-0.04 = fully open). NOT the cube: the policy has to find it in the image.
Image: the 'agentview' camera (in front of the table, looking at the robot), 96x96 like robomimic's 84x84.

Seeding: robosuite draws the cube's size (at build), placement and yaw, and the arm's initial joint noise from
numpy's GLOBAL random state; reset(seed) seeds it around the reset (and restores it after), so the scene depends
on the seed alone. The model is built once (hard_reset=False) with a fixed seed: every env has the same cube.

The expert (LiftExpert) is a state machine whose phase is read off the CURRENT state each step, not off a clock,
so it also takes over from any state a learner left (DAgger, `eval.py --policy=expert`):
    holding the cube (both finger pads touch it, fingers stopped)    -> close, move up
    grip site within 1 cm of the cube center                        -> close, hold position
                                  ... but the fingers closed past it -> open, back off upward (then retry)
    above the cube (xy within 1.2 cm)                               -> open; once wider than the cube's
                                                                       diagonal, descend to its center
    elsewhere                                                       -> open, go to 8 cm above the cube
                                                                       (straight up first if low beside it)
Motion is a proportional controller on the grip site with a bounded step (at most 0.5 of the 5 cm range).
Measured (seeds 200000..200049, `python lift.py`): 100% success, median 40 steps (2 s), ~7 ms per step without
rendering (~0.15 ms of it the expert); with the 96x96 image ~60 ms per step on a busy 2-core CPU.
"""
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # render without a display (Mesa EGL on the CPU); set before mujoco loads

import contextlib  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from tasks import TASKS, TEST_SEED, new_mujoco_renderer  # noqa: E402

# robosuite logs advice at import (no private macro file, no robosuite_models, no mink IK) and an INFO line per
# controller load: noise for us. A filter on its logger (set before the import) keeps errors only
logging.getLogger("robosuite_logs").addFilter(lambda record: record.levelno >= logging.ERROR)
import robosuite  # noqa: E402
from robosuite.controllers import load_composite_controller_config, load_part_controller_config  # noqa: E402

SPECS = {"lift": TASKS["lift"]}
EXPERT_FLAGS = ()  # the expert options `python envs.py` takes for this task: none
FPS = SPECS["lift"]["fps"]  # robosuite's control_freq: 25 physics steps of 2 ms per action
STATE_NAMES = ["eef_x", "eef_y", "eef_z", "finger_left", "finger_right"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]
CAMERA = "agentview"
BUILD_SEED = 0  # the global-RNG seed the model is built with: fixes the cube's size (2.0-2.2 cm half size)

# -----------------------------------------------------------------------------
# the environment


@contextlib.contextmanager
def _global_numpy_seed(seed):
    """robosuite samples from np.random's global state: seed it for the block, then put the caller's state back
    (so seeding an episode does not change the random numbers of the code around it)."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def controller_config():
    """Panda's default composite controller (BASIC) with the arm part swapped to OSC_POSITION (3-D position
    deltas of at most 5 cm per step, kp 150, critically damped) and robosuite's GRIP gripper kept: action (4,)."""
    cfg = load_composite_controller_config(robot="Panda")
    arm = load_part_controller_config(default_controller="OSC_POSITION")
    arm["gripper"] = cfg["body_parts"]["right"]["gripper"]
    cfg["body_parts"]["right"] = arm
    return cfg


class LiftEnv(gym.Env):
    """A gymnasium env around robosuite's Lift with a Panda. obs_type 'pixels_agent_pos' -> {"pixels": {"agentview":
    uint8 (S, S, 3)}, "agent_pos": (5,)}; 'state' -> (5,) only, no rendering. info["is_success"] = robosuite's
    success check (cube lifted); terminated on success. cube_pos() / eef_pos() / finger_qpos() / is_grasping()
    expose what the expert reads."""
    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(self, obs_type="pixels_agent_pos", image_size=96, render_size=(240, 320)):
        with _global_numpy_seed(BUILD_SEED):
            self._env = robosuite.make(
                "Lift", robots="Panda", controller_configs=controller_config(), control_freq=FPS,
                has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False,  # we render ourselves
                use_object_obs=False, renderer="mujoco",
                hard_reset=False,  # reset = mj_resetData + resample; a hard reset re-parses the XML (~1 s)
                horizon=10 ** 9, ignore_done=True)  # time limit: gymnasium's TimeLimit (make_env)
        robot = self._env.robots[0]
        self._eef_site = robot.eef_site_id["right"]
        self._fingers = np.array(robot._ref_gripper_joint_pos_indexes["right"])
        self._finger_vel = np.array(robot._ref_gripper_joint_vel_indexes["right"])
        self.obs_type, self.image_size, self.render_size = obs_type, image_size, render_size
        self.render_mode, self.t, self.episode, self._renderers = "rgb_array", 0, 0, {}
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        state = gym.spaces.Box(-np.inf, np.inf, (5,), np.float64)
        image = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = state if obs_type == "state" else gym.spaces.Dict(
            {"pixels": gym.spaces.Dict({CAMERA: image}), "agent_pos": state})

    @property
    def sim(self):
        return self._env.sim

    @property
    def table_height(self):
        return float(self._env.model.mujoco_arena.table_offset[2])

    @property
    def cube_half_size(self):
        return np.asarray(self._env.cube.size, dtype=float)

    def reset(self, seed=None, options=None):
        """Cube placement (x, y in +-3 cm of the table center, uniform yaw) and the arm's initial joint noise
        (gaussian, 0.02 rad) from the seed alone; seed=None draws one from the env's own generator."""
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2 ** 31))
        with _global_numpy_seed(seed):
            self._env.reset()
        self.t, self.episode = 0, self.episode + 1
        return self._obs(), {"is_success": False}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        _, reward, _, _ = self._env.step(action)
        self.t += 1
        success = bool(self._env._check_success())
        return self._obs(), float(reward), success, False, {"is_success": success}

    # what the robot knows about itself, and what only the expert reads
    def eef_pos(self):
        """World position (3,) of the grip site, the point between the finger pads."""
        return self.sim.data.site_xpos[self._eef_site].copy()

    def finger_qpos(self):
        """The two finger slide joints (m): +-0.04 wide open, ~+-0.02 on the cube, ~0 closed on nothing."""
        return self.sim.data.qpos[self._fingers].copy()

    def finger_speed(self):
        return float(np.abs(self.sim.data.qvel[self._finger_vel]).max())

    def cube_pos(self):
        return self.sim.data.body_xpos[self._env.cube_body_id].copy()

    def is_grasping(self):
        """robosuite's grasp test: a geom of each finger pad touches the cube."""
        return bool(self._env._check_grasp(gripper=self._env.robots[0].gripper, object_geoms=self._env.cube))

    def _state(self):
        return np.r_[self.eef_pos(), self.finger_qpos()]

    def _obs(self):
        if self.obs_type == "state":
            return self._state()
        return {"pixels": {CAMERA: self._camera(self.image_size, self.image_size)}, "agent_pos": self._state()}

    def render(self):
        """A larger 4:3 frame of the same camera for videos."""
        return self._camera(*self.render_size)

    def _camera(self, h, w, ss=2):
        """The agentview camera, (h, w, 3) uint8, upright (mujoco.Renderer flips OpenGL's bottom-up rows; robosuite's
        own sim.render does not). Visual meshes only (robosuite puts the collision geoms in group 0). Shadows off
        (cheaper on a CPU rasterizer) and 2x supersampling for anti-aliasing: at 96 px the cube is ~4 px wide."""
        if (h, w) not in self._renderers:
            r = new_mujoco_renderer(self.sim.model._model, ss * h, ss * w)
            opt = mujoco.MjvOption()
            opt.geomgroup[0] = 0  # collision geoms
            opt.sitegroup[:] = 0  # robosuite's marker sites
            self._renderers[(h, w)] = (r, opt)
        r, opt = self._renderers[(h, w)]
        r.update_scene(self.sim.data._data, camera=CAMERA, scene_option=opt)
        r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        img = r.render().reshape(h, ss, w, ss, 3).mean(axis=(1, 3))
        return np.round(img).astype(np.uint8)

    def close(self):
        for r, _ in self._renderers.values():
            r.close()
        self._renderers = {}


def make_env(task, render_mode="rgb_array", obs_type=None, image_size=None):
    """The task with its time limit; obs_type=None -> image + state (what the policy sees), 'state' -> no image.
    render_mode: rgb_array is the only one. image_size: the camera's side (None = the task's)."""
    spec = SPECS[task]
    env = LiftEnv(obs_type=obs_type or "pixels_agent_pos", image_size=image_size or spec["image_size"])
    return gym.wrappers.TimeLimit(env, max_episode_steps=spec["max_steps"])


def obs_to_frame(task, obs):
    """Observation dict -> frame with LeRobot keys: image uint8 (S, S, 3), state float32 (5,)."""
    spec = SPECS[task]
    if not isinstance(obs, dict) or "pixels" not in obs:
        raise ValueError("obs_to_frame needs the image observation; build the env with make_env(task) "
                         "(obs_type=None), not obs_type='state'")
    return {spec["image_keys"][0]: np.ascontiguousarray(obs["pixels"][CAMERA], dtype=np.uint8),
            spec["state_key"]: np.asarray(obs["agent_pos"], dtype=np.float32)}


# -----------------------------------------------------------------------------
# the scripted expert

OPEN, CLOSE = -1.0, 1.0
HOVER = 0.08  # m above the cube center where the gripper lines up before descending
LIFT = 0.10  # m above the table the cube is carried to (success is at 0.04: the env ends the episode first)


class LiftExpert:
    """get_action(env) -> (4,) action: reach above the cube, descend with the gripper open, close, lift. The phase
    is recomputed from the current state each step (see the module docstring), so there is no plan to fall off.
    Motion: a = clip(gain * (target - grip site) / 5 cm, +-max_step), a proportional controller whose step is
    bounded (max_step 0.5 = at most 2.5 cm of goal shift per step; the arm then moves ~7 mm per step, 13 cm/s),
    so the demos look like calm teleoperation. seed is unused (the expert is deterministic)."""

    def __init__(self, seed=0, gain=2.0, max_step=0.5, xy_tol=0.012, grasp_tol=0.01):
        self.seed, self.gain, self.max_step, self.xy_tol, self.grasp_tol = seed, gain, max_step, xy_tol, grasp_tol
        self.plan_time, self.n_decisions, self.phase = 0.0, 0, None

    def reset(self):
        self.phase = None

    def get_action(self, env):
        t0 = time.perf_counter()
        target, grip, self.phase = self.decide(env.unwrapped)
        u = env.unwrapped
        move = np.clip(self.gain * (target - u.eef_pos()) / 0.05, -self.max_step, self.max_step)
        self.plan_time, self.n_decisions = self.plan_time + time.perf_counter() - t0, self.n_decisions + 1
        return np.r_[move, grip].astype(np.float32)

    def decide(self, u):
        """-> (grip-site target (3,), gripper command, phase name) from the current state of LiftEnv u."""
        eef, cube, half = u.eef_pos(), u.cube_pos(), u.cube_half_size
        opening = float(np.abs(u.finger_qpos()).sum())  # finger gap (m): ~0.08 open, ~0.04 around the cube
        off_xy, grasping = np.linalg.norm(cube[:2] - eef[:2]), u.is_grasping()
        if grasping and u.finger_speed() < 0.01:  # pads on the cube and the squeeze has settled
            return np.r_[eef[:2], u.table_height + LIFT], CLOSE, "lift"
        if off_xy < self.grasp_tol and abs(cube[2] - eef[2]) < self.grasp_tol:
            if opening < 2 * half[:2].min() - 0.01 and not grasping:  # closed past the cube (it slipped out):
                return cube + [0, 0, HOVER], OPEN, "retry"  # let go and back off; then open, descend again
            return cube, CLOSE, "grasp"
        if off_xy < self.xy_tol:
            if opening > 2 * half[:2].max() * 1.41 + 0.005:  # open wider than the cube's diagonal: go down
                return cube, OPEN, "descend"
            return np.r_[cube[:2], max(eef[2], cube[2] + half[2] + 0.02)], OPEN, "open"
        hover = cube + [0, 0, HOVER]
        if eef[2] < cube[2] + half[2] + 0.02 and off_xy < 0.1:  # low beside the cube: rise before moving over it
            return np.r_[eef[:2], hover[2]], OPEN, "rise"
        return hover, OPEN, "reach"


def make_expert(task, **kw):
    """The state-machine expert; kw: LiftExpert's options."""
    return LiftExpert(**kw)


def feature_names(task):
    """(state names, action names, robot type) for the dataset's meta/info.json."""
    return STATE_NAMES, ACTION_NAMES, "panda"


def episode_metrics(task, env):
    """Lift: success and reward say it all."""
    return {}


def gail_features(task, env):
    """GAIL's view of the state (train_gail.py --obs_mode=state), in about unit scale: grip site xyz and cube xyz
    relative to the table's center (dm), their offset (dm), finger gap (cm), grasping. (11,) float32."""
    u = env.unwrapped
    eef, cube = u.eef_pos(), u.cube_pos()
    center = np.array([0.0, 0.0, u.table_height])
    return np.r_[10 * (eef - center), 10 * (cube - center), 10 * (cube - eef), 100 * np.abs(u.finger_qpos()).sum(),
                 float(u.is_grasping())].astype(np.float32)


# -----------------------------------------------------------------------------
# stage 1's questions (train_vlm.py): answers computed from the simulator's state, never annotated
# per task: as pusht.VQA; grasped by ~step 35, lifted by ~50; a state-only env, frames rendered when kept
VQA = {"lift": dict(state_names=["cube_x", "cube_y", "cube_z", "grip_x", "grip_y", "grip_z", "finger_gap", "grasping",
                                 "table_z", "cube_half_z"], per_episode=8, horizon=60, obs_type="state",
                    stop_at_success=False)}


def vqa_state(task, env):
    """(10,): cube xyz, grip site xyz, finger gap, grasping, table height, cube half-height (m)."""
    u = env.unwrapped
    gap = float(np.abs(u.finger_qpos()).sum())
    return np.r_[u.cube_pos(), u.eef_pos(), gap, u.is_grasping(), u.table_height, u.cube_half_size[2]
                 ].astype(np.float32)


def vqa_image(task, env, obs):
    """The frame the policy would see now, rendered from a state-only env through the policy's camera."""
    size = TASKS[task]["image_size"]
    return env.unwrapped._camera(size, size)


def vqa_answers(task, state):
    """state (10,) of vqa_state -> {question: answer}."""
    cube, grip, gap, grasping, table, half = state[0:3], state[3:6], state[6], state[7], state[8], state[9]
    near = np.linalg.norm(grip[:2] - cube[:2]) < 0.02  # over the cube (it is ~4 cm wide)
    where = ("at the cube" if near and abs(grip[2] - cube[2]) <= 0.03 else
             "above the cube" if near and grip[2] > cube[2] else "away from the cube")
    return {"is the cube lifted?": "yes" if cube[2] - (table + half) > 0.02 else "no",  # 2 cm off the table
            "is the gripper holding the cube?": "yes" if grasping > 0.5 else "no",  # both finger pads touch it
            "is the gripper open?": "yes" if gap > 0.06 else "no",  # ~0.08 m open, ~0.04 on the cube, ~0 closed
            "where is the gripper relative to the cube?": where}


# -----------------------------------------------------------------------------
# episodes, recording and evaluation


_envs = {}  # (image size, render) -> env of this process, see run_expert_episode


def run_expert_episode(task, seed, expert_kw=None, render=True, image_size=None, env=None):
    """Roll the expert out on one seeded episode until success (the env terminates) or the time limit.
    -> dict(success, steps, actions (T, 4) float32, seconds, plan_seconds, and when render: images (T, S, S, 3)
    uint8 (S = image_size, None = the task's), states (T, 5) float32: the observation BEFORE each action). env:
    reuse one from make_env(task, obs_type=None if render else 'state'); by default one is kept per process
    (building one costs ~0.4 s, its renderer ~1 s more, about as much as an episode)."""
    t0, spec = time.perf_counter(), SPECS[task]
    if env is None:  # one env per process and observation type, reused across the episodes it runs
        key = (image_size or spec["image_size"], render)
        if key not in _envs:
            _envs[key] = make_env(task, obs_type=None if render else "state", image_size=key[0])
        env = _envs[key]
    expert = make_expert(task, seed=seed, **(expert_kw or {}))
    obs, _ = env.reset(seed=seed)
    frames, actions, success = [], [], False
    for _ in range(spec["max_steps"]):
        if render:
            frames.append(obs_to_frame(task, obs))
        actions.append(expert.get_action(env))
        obs, _, success, truncated, _ = env.step(actions[-1])
        if success or truncated:
            break
    ep = dict(seed=seed, success=bool(success), steps=len(actions), actions=np.array(actions, dtype=np.float32),
              seconds=time.perf_counter() - t0, plan_seconds=expert.plan_time, decisions=expert.n_decisions)
    if render:
        ep["images"] = np.stack([f[spec["image_keys"][0]] for f in frames])
        ep["states"] = np.stack([f[spec["state_key"]] for f in frames])
    return ep


def evaluate_expert(task, num_episodes, seed=TEST_SEED, expert_kw=None, verbose=False):
    """Expert success rate, median episode length and cost per step, without rendering or writing anything."""
    eps, env = [], make_env(task, obs_type="state")
    for k in range(seed, seed + num_episodes):
        eps.append(run_expert_episode(task, k, expert_kw, render=False, env=env))
        if verbose:
            print(f"seed {k}: success={eps[-1]['success']} steps={eps[-1]['steps']}")
    ok = [e for e in eps if e["success"]]
    n_steps = sum(e["steps"] for e in eps)
    return dict(episodes=num_episodes, success_rate=len(ok) / num_episodes,
                median_steps=float(np.median([e["steps"] for e in ok])) if ok else float("nan"),
                seconds_per_step=sum(e["seconds"] for e in eps) / n_steps,
                expert_seconds_per_step=sum(e["plan_seconds"] for e in eps) / n_steps,
                failed_seeds=[e["seed"] for e in eps if not e["success"]])


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Evaluate the scripted Lift expert (no rendering).")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=TEST_SEED)
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    t0 = time.time()
    m = evaluate_expert("lift", args.episodes, args.seed, verbose=args.verbose)
    print(f"lift expert over seeds {args.seed}..{args.seed + args.episodes - 1}: success {m['success_rate']:.0%}, "
          f"median {m['median_steps']:.0f} steps, {m['seconds_per_step'] * 1e3:.1f} ms/step (sim + expert, "
          f"expert alone {m['expert_seconds_per_step'] * 1e3:.2f} ms), failed seeds {m['failed_seeds']}, "
          f"{time.time() - t0:.0f}s")
