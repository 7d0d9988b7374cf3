"""
The tasks, their simulators and scripted experts behind one set of functions, and the recorder that
turns expert episodes into LeRobot datasets. Each simulator and its expert live in their own file:
pusht.py (gym-pusht), aloha.py (gym-aloha bimanual), lift.py (robosuite single-arm Lift); the
functions here dispatch to them by task name.
"""
import argparse
import atexit
import contextlib
import multiprocessing as mp
import os
import sys
import time
import weakref

import numpy as np

import pusht  # registers gym_pusht/PushT-v0

# ALOHA joint limits (rad) of waist, shoulder, elbow, forearm roll, wrist angle, wrist rotate, then the gripper
# opening in [0, 1], per arm (left, right): gym-aloha's XML ranges (aloha.ARM_LOW / ARM_HIGH)
ALOHA_LOW = [-3.14158, -1.85005, -1.76278, -3.14158, -1.8675, -3.14158, 0.0] * 2
ALOHA_HIGH = [3.14158, 1.25664, 1.6057, 3.14158, 2.23402, 3.14158, 1.0] * 2
TASKS = {
    "pusht": dict(env_id=pusht.ENV_ID, fps=10, max_steps=300, image_size=96,
                  instruction="push the T-shaped block onto the T-shaped target",
                  image_keys=["observation.image"], state_key="observation.state", state_dim=2, action_dim=2,
                  action_low=0.0, action_high=512.0),
    # ALOHA (aloha.py): 50 Hz, 400 steps like ACT and LeRobot; state / action = 14 joint angles / joint targets
    "aloha_transfer_cube": dict(env_id="gym_aloha/AlohaTransferCube-v0", fps=50, max_steps=400, image_size=96,
                                instruction="pick up the cube with the right arm and transfer it to the left arm",
                                image_keys=["observation.images.top"], state_key="observation.state",
                                state_dim=14, action_dim=14, action_low=ALOHA_LOW, action_high=ALOHA_HIGH),
    "aloha_insertion": dict(env_id="gym_aloha/AlohaInsertion-v0", fps=50, max_steps=400, image_size=96,
                            instruction="pick up the peg and the socket and insert the peg into the socket",
                            image_keys=["observation.images.top"], state_key="observation.state",
                            state_dim=14, action_dim=14, action_low=ALOHA_LOW, action_high=ALOHA_HIGH),
    # robosuite Lift (lift.py; equals lift.SPEC, kept literal so importing envs does not load robosuite):
    # Panda lifts a cube; action = OSC position delta (3) + gripper in [-1, 1]; state = gripper xyz + 2 fingers
    "lift": dict(env_id="robosuite/Lift-Panda", fps=20, max_steps=150, image_size=96,
                 instruction="pick up the red cube and lift it",
                 image_keys=["observation.images.agentview"], state_key="observation.state",
                 state_dim=5, action_dim=4, action_low=[-1.0] * 4, action_high=[1.0] * 4,
                 action_mode=("delta", "delta", "delta", "absolute"), rest_action=[0.0, 0.0, 0.0, -1.0]),
}
# action_mode (default 'absolute'): an 'absolute' action is a target position (PushT's pusher, ALOHA's joints);
# a 'delta' one is a displacement per step (Lift's OSC deltas), held at 0. rest_action: the command of a robot at
# rest (Lift: no motion, gripper open), the safety shield's first reference where the state is not a command.
VAL_SEED = 100_000  # periodic eval during training uses seeds VAL_SEED.. ; demos use seeds [0, 100000)
TEST_SEED = 200_000  # final reported eval

# -----------------------------------------------------------------------------
# environment API


def _task_spec(task):
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)} (add an entry to envs.TASKS)")
    return TASKS[task]


_open_renderers = weakref.WeakSet()  # MuJoCo renderers of the MuJoCo tasks (aloha.py, lift.py)


def new_mujoco_renderer(model, height, width):
    """An offscreen mujoco.Renderer that is freed at exit while EGL is still up (one freed after mujoco's
    own exit hook has called eglTerminate prints errors). Our hook is registered after mujoco's, so it runs first."""
    import mujoco  # the MuJoCo tasks import it first, after setting MUJOCO_GL

    r = mujoco.Renderer(model, height, width)
    _open_renderers.add(r)
    if len(_open_renderers) == 1:
        atexit.register(_close_mujoco_renderers)
    return r


def _close_mujoco_renderers():
    for r in list(_open_renderers):
        r.close()


def make_env(task, render_mode="rgb_array", obs_type=None):
    """A gymnasium env with the task's time limit. obs_type=None -> images + agent xy (what the policy sees);
    obs_type="state" is ~10x faster (no rendering) and is what planning uses."""
    spec = _task_spec(task)
    if task.startswith("aloha"):
        import aloha  # MuJoCo + dm_control load only for the ALOHA tasks
        return aloha.make_env(task, spec["image_size"], obs_type, spec["max_steps"])
    if task == "lift":
        import lift  # robosuite loads only for this task
        return lift.make_env(spec, obs_type)
    return pusht.make_env(obs_type or "pixels_agent_pos", render_mode, spec["image_size"], spec["max_steps"])


def obs_to_frame(task, obs):
    """gym-pusht observation dict -> a frame with LeRobot keys: image uint8 (H, W, 3), state float32 (2,)."""
    spec = _task_spec(task)
    if task.startswith("aloha"):
        import aloha
        return aloha.obs_to_frame(obs, spec["image_keys"][0], spec["state_key"])
    if task == "lift":
        import lift
        return lift.obs_to_frame(obs, spec)
    if not isinstance(obs, dict) or "pixels" not in obs:
        raise ValueError("obs_to_frame needs the pixels_agent_pos observation; build the env with make_env(task) "
                         "(obs_type=None), not obs_type='state'")
    return {spec["image_keys"][0]: np.ascontiguousarray(obs["pixels"], dtype=np.uint8),
            spec["state_key"]: np.asarray(obs["agent_pos"], dtype=np.float32)}


def is_success(info):
    """PushT success: coverage of the goal by the block > 95%; ALOHA: reward 4 (both envs terminate then)."""
    return bool(info.get("is_success", False))


def coverage(info):
    """Fraction of the goal T covered by the block, in [0, 1]; reward = clip(coverage / 0.95, 0, 1)."""
    return float(info.get("coverage", 0.0))



def make_expert(task, **kw):
    """The scripted expert for a task: get_action(env) -> action, reset() between episodes."""
    _task_spec(task)
    if task.startswith("aloha"):
        import aloha
        return aloha.AlohaExpert(task, **kw)
    if task == "lift":
        import lift
        return lift.LiftExpert(**kw)
    return pusht.PushTExpert(**kw)


# -----------------------------------------------------------------------------
# recording demonstrations


def run_expert_episode(task, seed, expert_kw=None, render=True):
    """Roll out the expert on one seeded episode until success (the env terminates) or the time limit.
    -> dict(success, steps, coverage, actions (T, 2) float32, max_delta, plan_seconds, decisions, and when
    render: images uint8 (T, H, W, 3), states float32 (T, 2): the observation BEFORE each action)."""
    spec = _task_spec(task)
    if task.startswith("aloha"):
        import aloha
        return aloha.run_expert_episode(task, seed, spec, render=render)
    if task == "lift":
        import lift
        return lift.run_expert_episode(spec, seed, render=render, expert_kw=expert_kw)
    env = make_env(task, obs_type=None if render else "state")
    expert = make_expert(task, seed=seed, **(expert_kw or {}))
    obs, info = env.reset(seed=seed)
    frames, actions, success, start = [], [], False, pusht.get_state(env)[:2]
    for _ in range(spec["max_steps"]):
        if render:
            frames.append(obs_to_frame(task, obs))
        actions.append(expert.get_action(env))
        obs, _, success, truncated, info = env.step(actions[-1])
        if success or truncated:  # success = terminated: coverage > 0.95 ends the episode
            break
    env.close()
    moves = np.diff(np.vstack([start] + actions), axis=0)  # per-step target change, the first from the agent
    ep = dict(seed=seed, success=bool(success), steps=len(actions), coverage=coverage(info),
              actions=np.array(actions, dtype=np.float32), max_delta=float(np.linalg.norm(moves, axis=1).max()),
              plan_seconds=expert.plan_time, decisions=expert.n_decisions)
    if render:
        ep["images"] = np.stack([f[spec["image_keys"][0]] for f in frames])
        ep["states"] = np.stack([f[spec["state_key"]] for f in frames])
    return ep


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


def _episodes(task, seeds, num_workers, expert_kw):
    """Yield finished episodes in seed order, from this process or a pool of spawned processes."""
    jobs = [(task, s, expert_kw) for s in seeds]
    if num_workers <= 1:
        yield from map(_episode_worker, jobs)
        return
    with _main_script_hidden():  # spawn (not fork): no copied pygame / torch thread state in the workers
        pool = mp.get_context("spawn").Pool(num_workers)
    import envs  # the importable module even when this file runs as `python envs.py` (__main__ is hidden)
    with pool:
        yield from pool.imap(envs._episode_worker, jobs)


def _feature_names(task):
    """(state names, action names, robot type) of a task, written into the dataset's meta/info.json."""
    if task.startswith("aloha"):
        import aloha
        return aloha.JOINTS, aloha.ACTIONS, "aloha"
    if task == "lift":
        import lift
        return lift.STATE_NAMES, lift.ACTION_NAMES, "panda"
    return ["x", "y"], ["x", "y"], None


def record_demonstrations(task, num_episodes, out_dir, seed=0, num_workers=1, use_videos=False, max_attempts=None,
                          expert_kw=None):
    """Run the expert on seeds seed, seed+1, ... and write the successful episodes (only those) to a LeRobot
    dataset at out_dir until num_episodes are kept or max_attempts (default 2 * num_episodes + 10) seeds are
    used. Workers simulate and render; this process alone writes. Returns a summary dict."""
    from tqdm import tqdm

    import data

    spec = _task_spec(task)
    max_attempts = max_attempts or 2 * num_episodes + 10
    if seed < 0 or seed + max_attempts > VAL_SEED:
        raise ValueError(f"demo seeds {seed}..{seed + max_attempts - 1} must stay in [0, VAL_SEED={VAL_SEED}): "
                         f"seeds from VAL_SEED on are for evaluation; start lower or lower max_attempts")
    h = spec["image_size"]
    state_names, action_names, robot_type = _feature_names(task)
    features = {
        spec["image_keys"][0]: {"dtype": "video" if use_videos else "image", "shape": (h, h, 3),
                                "names": ["height", "width", "channels"]},
        spec["state_key"]: {"dtype": "float32", "shape": (spec["state_dim"],), "names": state_names},
        "action": {"dtype": "float32", "shape": (spec["action_dim"],), "names": action_names},
    }
    writer = data.LeRobotDatasetWriter(out_dir, spec["fps"], features, robot_type=robot_type, use_videos=use_videos)
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
    if task.startswith("aloha"):
        import aloha
        return aloha.evaluate_expert(task, _task_spec(task), num_episodes, seed, verbose=verbose, **(expert_kw or {}))
    if task == "lift":  # expert_kw not passed on: the CLI fills it with PushT's max_step (px)
        import lift
        return lift.evaluate_expert(_task_spec(task), num_episodes, seed, verbose=verbose)
    eps = []
    for s in range(seed, seed + num_episodes):
        eps.append(run_expert_episode(task, s, expert_kw, render=False))
        if verbose:
            e = eps[-1]
            print(f"seed {s}: success={e['success']} steps={e['steps']} coverage={e['coverage']:.3f}")
    ok = [e for e in eps if e["success"]]
    return dict(episodes=num_episodes, success_rate=len(ok) / num_episodes,
                median_steps=float(np.median([e["steps"] for e in ok])) if ok else float("nan"),
                seconds_per_decision=sum(e["plan_seconds"] for e in eps) / sum(e["decisions"] for e in eps),
                max_action_delta=max(e["max_delta"] for e in eps),
                failed_seeds=[e["seed"] for e in eps if not e["success"]])


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="Evaluate the scripted expert, or record demos with --out.")
    p.add_argument("--task", default="pusht", help=f"one of {list(TASKS)}")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=None, help=f"first seed (default: {TEST_SEED} to evaluate, 0 to record)")
    p.add_argument("--out", default=None, help="record a LeRobot dataset here instead of only evaluating")
    p.add_argument("--num_workers", type=int, default=1)
    p.add_argument("--use_videos", action="store_true", help="store camera frames as mp4 instead of PNG")
    p.add_argument("--max_step", type=float, default=20.0, help="bound on the per-step target change (px)")
    p.add_argument("--ik", action="store_true", help="ALOHA: the closed-loop IK expert instead of plan + replay")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args()
    kw = dict(ik=args.ik) if args.task.startswith("aloha") else {} if args.task == "lift" else dict(max_step=args.max_step)
    if args.seed is None:
        args.seed = 0 if args.out else TEST_SEED
    if args.out and os.path.exists(os.path.join(args.out, "meta", "info.json")):
        raise SystemExit(f"{args.out} already holds a dataset and recording would APPEND to it (DAgger's use): "
                         f"delete it or pick another --out")
    if args.out:
        record_demonstrations(args.task, args.episodes, args.out, seed=args.seed, num_workers=args.num_workers,
                              use_videos=args.use_videos, expert_kw=kw)
    elif args.task == "lift":
        import lift
        print(lift.evaluate_expert(lift.SPEC, args.episodes, args.seed, verbose=args.verbose))
    elif args.task.startswith("aloha"):
        t0 = time.time()
        m = evaluate_expert(args.task, args.episodes, args.seed, kw, verbose=args.verbose)
        print(f"{args.task} {'IK' if args.ik else 'plan + replay'} expert over seeds {args.seed}.."
              f"{args.seed + args.episodes - 1}: {m}, {time.time() - t0:.0f}s")
    else:
        t0 = time.time()
        m = evaluate_expert(args.task, args.episodes, args.seed, kw, verbose=args.verbose)
        print(f"{args.task} expert over seeds {args.seed}..{args.seed + args.episodes - 1} "
              f"(max_step={args.max_step:g} px/step): success {m['success_rate']:.1%}, "
              f"median steps {m['median_steps']:.0f}, {m['seconds_per_decision'] * 1e3:.1f} ms/decision, "
              f"max per-step target change {m['max_action_delta']:.2f} px, failed seeds {m['failed_seeds']}, "
              f"{time.time() - t0:.0f}s")
