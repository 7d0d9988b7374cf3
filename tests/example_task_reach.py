"""
Reach, a fourth task written the way a new task is added: THIS module (saved as reach.py beside pusht.py), one
entry in tasks.TASKS and one preset in config/ (tests/test_new_task.py adds the three to a copy of the repo and runs
every stage on it). A round agent on a 512 x 512 table moves to a green target dot; the action is the point it
servos to (30 px per step at most), like PushT's pusher; success is being within 12 px of the target.

Every task module has the same names: SPECS, EXPERT_FLAGS, make_env, obs_to_frame, episode_metrics, gail_features,
feature_names, make_expert, run_expert_episode, evaluate_expert, and, for stage 1's questions, VQA, vqa_state,
vqa_image, vqa_answers.
"""
import gymnasium as gym
import numpy as np

from tasks import TASKS, TEST_SEED

SPECS = {"reach": TASKS["reach"]}
EXPERT_FLAGS = ()  # the expert takes no options from `python envs.py`
TABLE, RADIUS, SUCCESS_PX, MAX_MOVE = 512.0, 15.0, 12.0, 30.0


class ReachEnv(gym.Env):
    """The agent and the target start at uniform random places (seeded); obs_type None = image + agent xy,
    'state' = agent xy and target xy (no rendering)."""
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, image_size=96, obs_type=None):
        self.image_size, self.obs_type = image_size, obs_type
        self.action_space = gym.spaces.Box(0.0, TABLE, (2,), np.float32)
        self.observation_space = gym.spaces.Box(0.0, TABLE, (4,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.agent, self.target = self.np_random.uniform(50, TABLE - 50, (2, 2))
        return self._obs(), {"is_success": False}

    def step(self, action):
        move = np.clip(np.asarray(action, np.float64), 0.0, TABLE) - self.agent
        self.agent = self.agent + move * min(1.0, MAX_MOVE / max(np.linalg.norm(move), 1e-9))
        distance = float(np.linalg.norm(self.agent - self.target))
        success = distance < SUCCESS_PX
        return self._obs(), 1.0 - distance / TABLE, success, False, {"is_success": success}

    def _obs(self):
        if self.obs_type == "state":
            return np.r_[self.agent, self.target].astype(np.float32)
        return {"pixels": self.render(), "agent_pos": self.agent.astype(np.float32)}

    def render(self):
        s = self.image_size
        rows, cols = np.mgrid[0:s, 0:s] * (TABLE / s)
        image = np.full((s, s, 3), 230, np.uint8)
        image[np.hypot(cols - self.target[0], rows - self.target[1]) < SUCCESS_PX] = (40, 180, 40)
        image[np.hypot(cols - self.agent[0], rows - self.agent[1]) < RADIUS] = (60, 80, 230)
        return image


def make_env(task, render_mode="rgb_array", obs_type=None, image_size=None):
    spec = SPECS[task]
    env = ReachEnv(image_size or spec["image_size"], obs_type)
    return gym.wrappers.TimeLimit(env, max_episode_steps=spec["max_steps"])


def obs_to_frame(task, obs):
    spec = SPECS[task]
    return {spec["image_keys"][0]: np.ascontiguousarray(obs["pixels"], dtype=np.uint8),
            spec["state_key"]: np.asarray(obs["agent_pos"], dtype=np.float32)}


def episode_metrics(task, env):
    """How far from the target the episode ended (px)."""
    u = env.unwrapped
    return dict(distance=float(np.linalg.norm(u.agent - u.target)))


def gail_features(task, env):
    """Agent xy and target xy in [-1, 1]."""
    u = env.unwrapped
    return (np.r_[u.agent, u.target] / (TABLE / 2) - 1).astype(np.float32)


def feature_names(task):
    return ["x", "y"], ["x", "y"], None


class ReachExpert:
    """Commands the target itself: the servo's speed limit makes the straight path."""

    def __init__(self, seed=None):
        self.plan_time, self.n_decisions = 0.0, 0

    def reset(self):
        pass

    def get_action(self, env):
        self.n_decisions += 1
        return env.unwrapped.target.astype(np.float32)


def make_expert(task, **kw):
    return ReachExpert(**kw)


def run_expert_episode(task, seed, expert_kw=None, render=True, image_size=None):
    spec = SPECS[task]
    env = make_env(task, obs_type=None if render else "state", image_size=image_size)
    expert = make_expert(task, **(expert_kw or {}))
    obs, _ = env.reset(seed=seed)
    frames, actions, success = [], [], False
    for _ in range(spec["max_steps"]):
        if render:
            frames.append(obs_to_frame(task, obs))
        actions.append(expert.get_action(env))
        obs, _, success, truncated, _ = env.step(actions[-1])
        if success or truncated:
            break
    ep = dict(seed=seed, success=bool(success), steps=len(actions), actions=np.array(actions, np.float32),
              plan_seconds=expert.plan_time, decisions=expert.n_decisions)
    if render:
        ep["images"] = np.stack([f[spec["image_keys"][0]] for f in frames])
        ep["states"] = np.stack([f[spec["state_key"]] for f in frames])
    return ep


def evaluate_expert(task, num_episodes, seed=TEST_SEED, expert_kw=None, verbose=False):
    eps = [run_expert_episode(task, s, expert_kw, render=False) for s in range(seed, seed + num_episodes)]
    ok = [e for e in eps if e["success"]]
    return dict(episodes=num_episodes, success_rate=len(ok) / num_episodes,
                median_steps=float(np.median([e["steps"] for e in ok])) if ok else float("nan"))


# stage 1's questions (train_vlm.py): answers from the simulator's state
VQA = {"reach": dict(state_names=["agent_x", "agent_y", "target_x", "target_y"], per_episode=4, horizon=20,
                     obs_type=None, stop_at_success=True)}


def vqa_state(task, env):
    u = env.unwrapped
    return np.r_[u.agent, u.target].astype(np.float32)


def vqa_image(task, env, obs):
    return obs_to_frame(task, obs)[SPECS[task]["image_keys"][0]]


def vqa_answers(task, state):
    dx, dy = state[2] - state[0], state[3] - state[1]
    return {"where is the target relative to the agent?": f"{'upper' if dy < 0 else 'lower'} "
                                                         f"{'left' if dx < 0 else 'right'}",
            "is the agent at the target?": "yes" if np.hypot(dx, dy) < SUCCESS_PX else "no"}
