"""
The tasks, their simulators and scripted experts behind one set of functions, and the recorder that
turns expert episodes into LeRobot datasets. Each simulator and its expert live in their own file:
pusht.py (gym-pusht), aloha.py (gym-aloha bimanual), lift.py (robosuite single-arm Lift). They all export
the same interface, and the functions here pass each call to the module the task's entry names. The
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

# TASKS[task]['module'] simulates the task and scripts its expert. Each module exports SPECS (its tasks' entries of
# TASKS), EXPERT_FLAGS (which expert flags of this file's command line apply to it) and the functions make_env,
# obs_to_frame, episode_metrics, make_expert, run_expert_episode, evaluate_expert and feature_names, each taking the
# task name first.

# -----------------------------------------------------------------------------
# environment API


def task_module(task):
    """The task's module, imported on first use: MuJoCo, dm_control and robosuite load only for their tasks."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)} "
                         f"(add an entry to tasks.TASKS naming its module)")
    return importlib.import_module(TASKS[task]["module"])


def make_env(task, render_mode="rgb_array", obs_type=None, image_size=None):
    """A gymnasium env with the task's time limit. obs_type=None -> images + state (what the policy sees);
    obs_type="state" is ~10x faster (no rendering) and is what planning uses. image_size: the camera's side in
    pixels (None = the task's, TASKS[task]['image_size']); a policy runs in the simulator at the size it was
    recorded at (camera_size)."""
    return task_module(task).make_env(task, render_mode, obs_type, image_size)


def obs_to_frame(task, obs):
    """Observation -> a frame with LeRobot keys: image uint8 (H, W, 3), state float32 (state_dim,)."""
    return task_module(task).obs_to_frame(task, obs)


def is_success(info):
    """PushT success: coverage of the goal by the block > 95%; ALOHA: reward 4 (both envs terminate then)."""
    return bool(info.get("is_success", False))


def coverage(info):
    """Fraction of the goal T covered by the block, in [0, 1]; reward = clip(coverage / 0.95, 0, 1)."""
    return float(info.get("coverage", 0.0))


def episode_metrics(task, env):
    """What the task measures at an episode's end beside success and reward (PushT: the block's pose error)."""
    return task_module(task).episode_metrics(task, env)


def make_expert(task, **kw):
    """The scripted expert for a task: get_action(env) -> action, reset() between episodes."""
    return task_module(task).make_expert(task, **kw)


class SimRobot:
    """A simulator behind deploy.py's robot interface (get_observation() -> frame dict with 'timestamp',
    send_action(a), close()), so the control loop runs end to end on a laptop.
    send_action steps the simulator; .success/.done report the episode's outcome. image_size: the camera's side
    (None = the task's; a policy's camera_size)."""

    def __init__(self, task, seed, max_steps=0, image_size=None):
        self.task, self.env = task, make_env(task, image_size=image_size)
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


def run_expert_episode(task, seed, expert_kw=None, render=True, image_size=None):
    """Roll out the expert on one seeded episode until success (the env terminates) or the time limit.
    -> dict(seed, success, steps, actions (T, action_dim) float32, plan_seconds, decisions, task-specific
    measures, and when render: images uint8 (T, S, S, 3) at image_size (None = the task's), states float32
    (T, state_dim): the observation BEFORE each action). expert_kw: options of the task's expert (PushT:
    max_step; ALOHA: ik)."""
    return task_module(task).run_expert_episode(task, seed, expert_kw, render, image_size)


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


def imap_workers(worker, jobs, num_workers, module="envs"):
    """Yield worker(job) for each job in order, from this process or a pool of spawned processes.
    worker: the NAME of a function of `module` (by name, so that a spawned process can import it even when the
    module is also the running script, e.g. `python envs.py` or `python eval.py`, whose __main__ is hidden)."""
    fn = getattr(importlib.import_module(module), worker)
    if num_workers <= 1:
        yield from map(fn, jobs)
        return
    with _main_script_hidden():  # spawn (not fork): no copied pygame / torch thread state in the workers
        pool = mp.get_context("spawn").Pool(num_workers)
    with pool:
        yield from pool.imap(fn, jobs)


def _episodes(task, seeds, num_workers, expert_kw, image_size=None):
    """Yield finished expert episodes in seed order."""
    return imap_workers("_episode_worker", [(task, s, expert_kw, True, image_size) for s in seeds], num_workers)


def record_demonstrations(task, num_episodes, out_dir, seed=0, num_workers=1, use_videos=False, max_attempts=None,
                          expert_kw=None, image_size=None):
    """Run the expert on seeds seed, seed+1, ... and write the successful episodes (only those) to a LeRobot
    dataset at out_dir until num_episodes are kept or max_attempts (default 2 * num_episodes + 10) seeds are
    used. Workers simulate and render (the camera at image_size, None = the task's); this process alone writes.
    Returns a summary dict."""
    from tqdm import tqdm

    import dataset_writer

    module, spec = task_module(task), TASKS[task]
    max_attempts = max_attempts or 2 * num_episodes + 10
    if seed < 0 or seed + max_attempts > VAL_SEED:
        raise ValueError(f"demo seeds {seed}..{seed + max_attempts - 1} must stay in [0, VAL_SEED={VAL_SEED}): "
                         f"seeds from VAL_SEED on are for evaluation; start lower or lower max_attempts")
    h = image_size or spec["image_size"]
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
    episodes = _episodes(task, range(seed, seed + max_attempts), num_workers, expert_kw, image_size)
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
    p.add_argument("--image_size", type=int, default=None, help="the camera's side in pixels (default: the task's)")
    p.add_argument("--max_step", type=float, help="%s only: %s" % expert_flags["max_step"])
    p.add_argument("--ik", action="store_true", default=None, help="%s only: %s" % expert_flags["ik"])
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    kw = {k: getattr(args, k) for k in expert_flags if getattr(args, k) is not None}  # the expert flags given
    for k in sorted(set(kw) - set(task_module(args.task).EXPERT_FLAGS)):
        p.error(f"--{k} applies only to {expert_flags[k][0]}, not to --task={args.task}: drop --{k}")
    if args.image_size is not None and (args.image_size < 1 or not args.out):
        p.error("--image_size is the recorded camera's side: a positive number of pixels, with --out")
    if args.seed is None:
        args.seed = 0 if args.out else TEST_SEED
    if args.out and os.path.exists(os.path.join(args.out, "meta", "info.json")):
        raise SystemExit(f"{args.out} already holds a dataset and recording would APPEND to it (DAgger's use): "
                         f"delete it or pick another --out")
    if args.out:
        record_demonstrations(args.task, args.episodes, args.out, seed=args.seed, num_workers=args.num_workers,
                              use_videos=args.use_videos, expert_kw=kw, image_size=args.image_size)
    else:
        t0 = time.time()
        m = evaluate_expert(args.task, args.episodes, args.seed, kw, verbose=args.verbose)
        print(f"{args.task} expert{' ' + str(kw) if kw else ''} over seeds {args.seed}..{args.seed + args.episodes - 1}: "
              f"success {m['success_rate']:.1%}, median steps {m['median_steps']:.0f}, {time.time() - t0:.0f}s; {m}")
