"""
The tasks, their simulators and scripted experts behind one set of functions, and the recorder that
turns expert episodes into LeRobot datasets. Each simulator and its expert live in their own file:
pusht.py (gym-pusht), aloha.py (gym-aloha bimanual), lift.py (robosuite single-arm Lift). They all export
the same interface, and the functions here pass each call to the module MODULES names for the task. The
task specs (TASKS) and seeds live in tasks.py, which imports no simulator.
"""
import argparse
import contextlib
import importlib
import multiprocessing as mp
import os
import sys
import time

import numpy as np

from tasks import TASKS, TEST_SEED, VAL_SEED  # the task table and seed ranges, here for the callers

# task -> the module that simulates it and scripts its expert. Each module exports SPECS (its tasks' entries of
# TASKS), EXPERT_FLAGS (which expert flags of this file's command line apply to it) and the functions make_env,
# obs_to_frame, make_expert, run_expert_episode, evaluate_expert and feature_names, each taking the task name first.
MODULES = {"pusht": "pusht", "aloha_transfer_cube": "aloha", "aloha_insertion": "aloha", "lift": "lift"}

# -----------------------------------------------------------------------------
# environment API


def task_module(task):
    """The task's module, imported on first use: MuJoCo, dm_control and robosuite load only for their tasks."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)} "
                         f"(add an entry to tasks.TASKS and envs.MODULES)")
    return importlib.import_module(MODULES[task])


def make_env(task, render_mode="rgb_array", obs_type=None):
    """A gymnasium env with the task's time limit. obs_type=None -> images + state (what the policy sees);
    obs_type="state" is ~10x faster (no rendering) and is what planning uses."""
    return task_module(task).make_env(task, render_mode, obs_type)


def obs_to_frame(task, obs):
    """Observation -> a frame with LeRobot keys: image uint8 (H, W, 3), state float32 (state_dim,)."""
    return task_module(task).obs_to_frame(task, obs)


def is_success(info):
    """PushT success: coverage of the goal by the block > 95%; ALOHA: reward 4 (both envs terminate then)."""
    return bool(info.get("is_success", False))


def coverage(info):
    """Fraction of the goal T covered by the block, in [0, 1]; reward = clip(coverage / 0.95, 0, 1)."""
    return float(info.get("coverage", 0.0))


def make_expert(task, **kw):
    """The scripted expert for a task: get_action(env) -> action, reset() between episodes."""
    return task_module(task).make_expert(task, **kw)


class SimRobot:
    """A simulator behind deploy.py's robot interface (get_observation() -> frame dict with 'timestamp',
    send_action(a), close()), so the control loop runs end to end on a laptop.
    send_action steps the simulator; .success/.done report the episode's outcome."""

    def __init__(self, task, seed, max_steps=0):
        self.task, self.env = task, make_env(task)
        self.action_dim = int(np.prod(self.env.action_space.shape))
        self.max_steps = max_steps or TASKS[task]['max_steps']
        self.obs, _ = self.env.reset(seed=seed)
        self.stamp, self.steps, self.success, self.done = time.monotonic(), 0, False, False

    def get_observation(self):
        frame = obs_to_frame(self.task, self.obs)
        return dict(frame, timestamp=self.stamp)

    def send_action(self, action):
        self.obs, reward, terminated, truncated, info = self.env.step(np.asarray(action, np.float32))
        self.stamp, self.steps = time.monotonic(), self.steps + 1
        self.success = self.success or is_success(info)
        self.done = self.success or terminated or truncated or self.steps >= self.max_steps

    def close(self):
        self.env.close()


# -----------------------------------------------------------------------------
# recording demonstrations


def run_expert_episode(task, seed, expert_kw=None, render=True):
    """Roll out the expert on one seeded episode until success (the env terminates) or the time limit.
    -> dict(seed, success, steps, actions (T, action_dim) float32, plan_seconds, decisions, task-specific
    measures, and when render: images uint8 (T, H, W, 3), states float32 (T, state_dim): the observation BEFORE
    each action). expert_kw: options of the task's expert (PushT: max_step; ALOHA: ik)."""
    return task_module(task).run_expert_episode(task, seed, expert_kw, render)


def _episode_worker(args):
    """Process-pool entry point: episodes travel back as numpy arrays; failures without their images."""
    ep = run_expert_episode(*args)
    return ep if ep["success"] else {k: v for k, v in ep.items() if k not in ("images", "states")}


@contextlib.contextmanager
def _main_script_hidden():
    """A spawned worker re-runs the parent's main script (to find functions defined there) unless it has a
    `if __name__ == "__main__"` guard; nanoGPT-style scripts like train_bc.py have none, so every worker
    would start training. Our worker function lives in envs.py: hide the script while the workers start."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    main.__dict__.pop("__file__", None)
    main.__spec__ = None
    try:
        yield
    finally:
        main.__dict__.update(saved)


def _imap(worker, jobs, num_workers):
    """Yield worker(job) for each job in order, from this process or a pool of spawned processes.
    worker: the NAME of a function of this module (what a spawned process can import)."""
    import envs  # the importable module even when this file runs as `python envs.py` (__main__ is hidden)
    if num_workers <= 1:
        yield from map(getattr(envs, worker), jobs)
        return
    with _main_script_hidden():  # spawn (not fork): no copied pygame / torch thread state in the workers
        pool = mp.get_context("spawn").Pool(num_workers)
    with pool:
        yield from pool.imap(getattr(envs, worker), jobs)


def _episodes(task, seeds, num_workers, expert_kw):
    """Yield finished expert episodes in seed order."""
    return _imap("_episode_worker", [(task, s, expert_kw) for s in seeds], num_workers)


_POLICY = {}  # checkpoint folder -> its loaded policy: the current round's only, loaded once per (worker) process


def _dagger_worker(args):
    """One DAgger rollout: the mixture beta * expert + (1 - beta) * learner drives. With segment = 0 who drives is
    chosen per step and every visited state is recorded with the EXPERT's action as its label (Ross et al. 2011).
    With segment = H > 0 the
    choice is made every H steps and only the expert's stretches are recorded, each as an episode of its own: it
    starts where the learner went, and its labels are the expert's own consecutive actions, so a chunk of them
    is one plan (per-step labels of learner-driven states are each a first step of a different plan).
    With branch = B > 0 the learner drives every step (the states are its own, as in Ross et al.'s later rounds);
    at each of its decision points (every H steps) the expert, with probability beta, plays B steps from a COPY of
    the state in a second env, and that branch is recorded: labels on the learner's own states, each chunk one plan.
    -> dict(seed, success, steps, expert_fraction, labels: how many, episodes: [(frame dicts, labels (T, A))]).
    The rng is seeded per episode, so the labels do not depend on how many workers share the rollouts."""
    task, ckpt, seed, beta, max_steps, rng_seed, threads, expert_kw, segment, branch = args
    import torch
    from deploy import load_policy
    if threads:
        torch.set_num_threads(threads)
    if ckpt not in _POLICY:  # a new round's checkpoint replaces the last one
        _POLICY.clear()
        _POLICY[ckpt] = load_policy(ckpt, task=task)[1]  # a multi-task policy: its entry for this task
    policy, expert, env = _POLICY[ckpt], make_expert(task, **(expert_kw or {})), make_env(task)
    rng = np.random.default_rng(rng_seed)
    obs, _ = env.reset(seed=seed)
    policy.reset()
    expert.reset()
    episodes, expert_steps, success, use_expert = [], 0, False, False
    copy_env = _branch_env(task) if branch else None
    for t in range(max_steps):
        frame = obs_to_frame(task, obs)
        if branch:  # the learner drives (use_expert stays False); the expert answers from copies of its states
            if t % segment == 0 and rng.random() < beta:
                episodes.append(_expert_branch(task, env, copy_env, expert_kw, branch))
        elif not segment or t % segment == 0:
            was_expert, use_expert = use_expert, rng.random() < beta
            if not segment and t == 0 or segment and use_expert and not was_expert:
                episodes.append(([], []))  # per-step labels: one episode; segments: one per expert takeover
            if segment and not use_expert and was_expert:
                policy.reset()  # the learner takes over: its queued chunk is from before the expert drove
        if not segment or use_expert:
            label = np.asarray(expert.get_action(env), np.float32)  # what the expert would do HERE
            episodes[-1][0].append(frame)
            episodes[-1][1].append(label)
        if not segment or not use_expert:
            learner = np.asarray(policy(frame), np.float32)  # the learner keeps its own chunk queue
        expert_steps += use_expert
        obs, reward, terminated, truncated, info = env.step(label if use_expert else learner)
        success = is_success(info)
        if success or terminated or truncated:
            break
    env.close()
    if copy_env is not None:
        copy_env.close()
    episodes = [(frames, np.stack(labels)) for frames, labels in episodes]
    return dict(seed=seed, success=success, steps=t + 1, expert_fraction=expert_steps / (t + 1),
                labels=sum(len(f) for f, _ in episodes), episodes=episodes)


def check_branches(task):
    """Expert branches copy the simulator: the task module must copy one env into another (copy_state)."""
    module = task_module(task)
    if not hasattr(module, "copy_state"):
        raise ValueError(f"expert branches copy the simulator, and {module.__name__}.py has no copy_state(src, dst): "
                         f"use expert segments (--expert_branch=0) for task {task!r}")


def _branch_env(task):
    """A second env for expert branches, to copy the learner's states into."""
    check_branches(task)
    return make_env(task)


def _expert_branch(task, env, copy_env, expert_kw, steps):
    """The expert's next `steps` actions from a copy of env's current state, with the frames it sees there; env
    itself does not move. A fresh expert plans from the copied state. -> (frame dicts, labels)."""
    copy_env.reset()  # the time limit's step count starts again; the state is then overwritten
    obs = task_module(task).copy_state(env, copy_env)
    expert = make_expert(task, **(expert_kw or {}))
    expert.reset()
    frames, labels = [], []
    for _ in range(steps):
        frames.append(obs_to_frame(task, obs))
        labels.append(np.asarray(expert.get_action(copy_env), np.float32))
        obs, _, terminated, truncated, info = copy_env.step(labels[-1])
        if is_success(info) or terminated or truncated:
            break
    return frames, labels


def label_rollouts(task, ckpt, seeds, beta, max_steps, rng_seed, num_workers=1, expert_kw=None, segment=0, branch=0):
    """DAgger's data: yield one expert-labelled rollout of the policy in `ckpt` per seed, in seed order, from
    num_workers processes (the expert re-plans at every state the learner drives it to: that is the cost).
    rng_seed: a list of ints; episode s draws its expert/learner choices from default_rng(rng_seed + [s]).
    expert_kw: options of the task's labelling expert (make_expert's keywords, e.g. PushT's max_step).
    segment: 0 = who drives is chosen per step, every state labelled; H = chosen every H steps, the expert's
    stretches recorded (see _dagger_worker); branch: B > 0 = the learner drives, and B-step expert branches from
    copies of its states (at every H-th step, with probability beta) are recorded."""
    jobs = [(task, ckpt, s, beta, max_steps, [*rng_seed, s], 1 if num_workers > 1 else 0, expert_kw, segment, branch)
            for s in seeds]
    return _imap("_dagger_worker", jobs, num_workers)


def record_demonstrations(task, num_episodes, out_dir, seed=0, num_workers=1, use_videos=False, max_attempts=None,
                          expert_kw=None):
    """Run the expert on seeds seed, seed+1, ... and write the successful episodes (only those) to a LeRobot
    dataset at out_dir until num_episodes are kept or max_attempts (default 2 * num_episodes + 10) seeds are
    used. Workers simulate and render; this process alone writes. Returns a summary dict."""
    from tqdm import tqdm

    import dataset_writer

    module, spec = task_module(task), TASKS[task]
    max_attempts = max_attempts or 2 * num_episodes + 10
    if seed < 0 or seed + max_attempts > VAL_SEED:
        raise ValueError(f"demo seeds {seed}..{seed + max_attempts - 1} must stay in [0, VAL_SEED={VAL_SEED}): "
                         f"seeds from VAL_SEED on are for evaluation; start lower or lower max_attempts")
    h = spec["image_size"]
    state_names, action_names, robot_type = module.feature_names(task)  # for meta/info.json
    features = {
        spec["image_keys"][0]: {"dtype": "video" if use_videos else "image", "shape": (h, h, 3),
                                "names": ["height", "width", "channels"]},
        spec["state_key"]: {"dtype": "float32", "shape": (spec["state_dim"],), "names": state_names},
        "action": {"dtype": "float32", "shape": (spec["action_dim"],), "names": action_names},
    }
    writer = dataset_writer.LeRobotDatasetWriter(out_dir, spec["fps"], features, robot_type=robot_type, use_videos=use_videos)
    t0, kept, attempts, steps, plan_s, decisions, max_delta = time.time(), 0, 0, [], 0.0, 0, None
    bar = tqdm(total=num_episodes, desc=f"recording {task} demos", unit="ep")
    episodes = _episodes(task, range(seed, seed + max_attempts), num_workers, expert_kw)
    for ep in episodes:
        attempts += 1
        plan_s, decisions = plan_s + ep["plan_seconds"], decisions + ep["decisions"]
        if ep["success"]:
            for img, st, act in zip(ep["images"], ep["states"], ep["actions"]):
                writer.add_frame({spec["image_keys"][0]: img, spec["state_key"]: st, "action": act},
                                 task=spec["instruction"])
            writer.save_episode()
            kept += 1
            steps.append(ep["steps"])
            if "max_delta" in ep:  # PushT: the largest per-step move of the expert's target
                max_delta = max(max_delta or 0.0, ep["max_delta"])
            bar.update(1)
        bar.set_postfix(success=f"{kept}/{attempts}")
        if kept == num_episodes:
            break
    episodes.close()  # stops the pool early once enough episodes are kept
    bar.close()
    if kept == 0:
        raise RuntimeError(f"the {task} expert failed all {attempts} episodes from seed {seed}; nothing recorded")
    writer.finalize()
    summary = dict(episodes=kept, attempts=attempts, expert_success_rate=kept / attempts,
                   median_steps=float(np.median(steps)), frames=int(np.sum(steps)),
                   seconds_per_decision=plan_s / max(decisions, 1), max_action_delta=max_delta,
                   seconds=time.time() - t0, out_dir=str(out_dir))
    print(f"recorded {kept} episodes ({summary['frames']} frames) to {out_dir} in {summary['seconds']:.0f}s: "
          f"expert success {kept}/{attempts}, median {summary['median_steps']:.0f} steps, "
          f"{summary['seconds_per_decision'] * 1e3:.1f} ms/decision"
          + (f", max target step {max_delta:.1f} px" if max_delta is not None else ""))
    if kept < num_episodes:
        print(f"WARNING: only {kept}/{num_episodes} episodes kept after {attempts} attempts; raise max_attempts")
    return summary


def evaluate_expert(task, num_episodes, seed=TEST_SEED, expert_kw=None, verbose=False):
    """Expert success rate etc. on seeded episodes without rendering or writing anything."""
    return task_module(task).evaluate_expert(task, num_episodes, seed, expert_kw, verbose)


if __name__ == "__main__":
    # the experts' own flags: flag -> (the tasks whose module lists it in EXPERT_FLAGS, what it does)
    expert_flags = {"max_step": ("--task=pusht", "bound on the per-step target change (px; default 20)"),
                    "ik": ("aloha_* tasks", "the closed-loop IK expert instead of plan + replay")}
    p = argparse.ArgumentParser(description="Evaluate the scripted expert, or record demos with --out.")
    p.add_argument("--task", default="pusht", choices=list(TASKS))
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=None, help=f"first seed (default: {TEST_SEED} to evaluate, 0 to record)")
    p.add_argument("--out", default=None, help="record a LeRobot dataset here instead of only evaluating")
    p.add_argument("--num_workers", type=int, default=1)
    p.add_argument("--use_videos", action="store_true", help="store camera frames as mp4 instead of PNG")
    p.add_argument("--max_step", type=float, help="%s only: %s" % expert_flags["max_step"])
    p.add_argument("--ik", action="store_true", default=None, help="%s only: %s" % expert_flags["ik"])
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    kw = {k: getattr(args, k) for k in expert_flags if getattr(args, k) is not None}  # the expert flags given
    for k in sorted(set(kw) - set(task_module(args.task).EXPERT_FLAGS)):
        p.error(f"--{k} applies only to {expert_flags[k][0]}, not to --task={args.task}: drop --{k}")
    if args.seed is None:
        args.seed = 0 if args.out else TEST_SEED
    if args.out and os.path.exists(os.path.join(args.out, "meta", "info.json")):
        raise SystemExit(f"{args.out} already holds a dataset and recording would APPEND to it (DAgger's use): "
                         f"delete it or pick another --out")
    if args.out:
        record_demonstrations(args.task, args.episodes, args.out, seed=args.seed, num_workers=args.num_workers,
                              use_videos=args.use_videos, expert_kw=kw)
    else:
        t0 = time.time()
        m = evaluate_expert(args.task, args.episodes, args.seed, kw, verbose=args.verbose)
        print(f"{args.task} expert{' ' + str(kw) if kw else ''} over seeds {args.seed}..{args.seed + args.episodes - 1}: "
              f"success {m['success_rate']:.1%}, median steps {m['median_steps']:.0f}, {time.time() - t0:.0f}s; {m}")
