"""
Closed-loop evaluation: run a policy in the real simulator and measure how often it succeeds.

    python eval.py --ckpt=out/pusht                         # 100 held-out episodes, writes out/pusht/eval.json
    python eval.py --ckpt=out/pusht --episodes=20 --videos=4
    python eval.py --ckpt=out/aloha_transfer_cube --episodes=200 --num_workers=2   # episodes in 2 processes
    python eval.py --policy=expert --task=pusht --episodes=100
    python eval.py --ckpt=out/lang/minilm/policy --instruction="head west of the block"   # words it was not trained on
    python eval.py --ckpt=out/pusht_flow --inference_delay=4 --chunk_join=rtc   # a 4-step inference latency, RTC

Offline metrics (action MSE on held-out demos) say little about control: small errors compound
as the policy drifts into states the demonstrations never visited (Ross et al. 2011). So the
number that matters is the success rate from rolling the policy out, on seeds that no
demonstration used (demos: seeds [0, 100000); validation: envs.VAL_SEED..; test: envs.TEST_SEED..).
The same rollouts, with the expert labelling the states the policy visits, are DAgger's data
(label_rollouts, for train_dagger.py). Episodes run in worker processes with --num_workers.
"""
import contextlib
import json
import os
import time

import numpy as np
import torch
from tqdm import tqdm

import envs
import tasks
from policy import VLAPolicy, describe_instruction, load_policy  # noqa: F401  (the execution logic a robot runs; re-exported)

# -----------------------------------------------------------------------------
# command-line config (python eval.py --key=value); unused when eval.py is imported
ckpt = ''  # checkpoint folder written by a train_*.py script (model.safetensors + config.json), or its best/
policy = 'vla'  # 'vla' (the checkpoint) | 'expert' (the task's scripted/planning expert)
task = ''  # '' = the checkpoint's task
instruction = ''  # '' = the checkpoint's; other words are evaluated too, reported with the nearest trained instruction
min_instruction_cosine = 0.4  # below this cosine to every trained instruction, an instruction is reported as far
episodes = 100
start_seed = envs.TEST_SEED  # held-out seeds
max_steps = 0  # 0 = the task's step limit
n_action_steps = 0  # 0 = the checkpoint's value
temporal_ensemble_coeff = -1.0  # < 0 = the checkpoint's value; >= 0 = ensembling (ACT's with n_action_steps=1)
chunk_join = ''  # how a new chunk joins the executing one: 'switch' | 'ensemble' | 'blend' | 'rtc' ('' = as trained)
inference_delay = 0  # simulated latency: a chunk is used from this many steps after its observation (policy.VLAPolicy)
rtc_max_weight = 5.0  # real-time chunking's guidance clip beta (Black et al. 2025 use 5)
flow_noise_scale = -1.0  # a flow head's sampling temperature (its starting noise times this); < 0 = the checkpoint's
videos = 2  # episodes to save as mp4 in <ckpt>/videos
num_workers = 1  # processes that run episodes in parallel (one torch thread each; a checkpoint's policy only)
out = ''  # metrics JSON path ('' = <ckpt>/eval.json, or out/eval_expert_<task>.json)
device = 'cpu'
_task_presets = False  # --task names the simulator here, it does not load config/<task>.py
# -----------------------------------------------------------------------------


class ExpertPolicy:
    """The task's expert (envs.py) behind the policy interface; it reads the simulator state."""

    def __init__(self, task):
        self.expert = envs.make_expert(task)

    def reset(self):
        self.expert.reset()

    def __call__(self, frame, env=None):
        return self.expert.get_action(env)


def command_smoothness(actions, spec):
    """How the command moves (raw units): smoothness = mean |a_t+1 - a_t| (a step's change), jerk = mean
    |a_t+3 - 3 a_t+2 + 3 a_t+1 - a_t| (the third difference: a switch between disagreeing chunks is a spike of it),
    and the steps the deploy shield would rate-limit: an absolute dim's change, a delta dim's value, over the task's
    max_step_change (tasks.py)."""
    def mean_norm(x):
        return float(np.linalg.norm(x, axis=-1).mean()) if len(x) else 0.0
    delta = tasks.delta_dims(spec.get('action_mode', 'absolute'), actions.shape[1])
    step = np.where(delta, actions[1:], np.diff(actions, axis=0))
    limited = int((np.abs(step) > spec['max_step_change']).any(-1).sum())
    return dict(smoothness=mean_norm(np.diff(actions, axis=0)), jerk=mean_norm(np.diff(actions, n=3, axis=0)),
                rate_limited_steps=limited)


@contextlib.contextmanager
def episode_rng(seed):
    """torch's generator seeded by an episode's seed for the episode's length, and restored after: a sampling head's
    draws (flow, diffusion, Gaussian) then depend on the seed alone, so an episode gives the same result in this
    process or in any worker, two runs of one row agree, and a training run's batches do not depend on its evals."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class ManipulationEvaluator:
    """Roll a policy out for n_episodes on seeds start_seed, start_seed+1, ... and aggregate metrics."""

    def __init__(self, task, n_episodes=100, start_seed=envs.TEST_SEED, max_steps=None, video_dir=None, n_videos=0,
                 progress=True):
        if task not in envs.TASKS:
            raise ValueError(f"unknown task {task!r}; known: {sorted(envs.TASKS)}")
        self.task, self.n_episodes, self.start_seed = task, n_episodes, start_seed
        self.max_steps = max_steps or envs.TASKS[task]['max_steps']
        self.video_dir, self.n_videos, self.progress = video_dir, n_videos, progress

    def run_episode(self, policy, env, seed, record):
        with episode_rng(seed):
            return self._rollout(policy, env, seed, record)

    def _rollout(self, policy, env, seed, record):
        obs, info = env.reset(seed=seed)
        policy.reset()
        frames, actions, max_reward, success_step = [], [], 0.0, None
        for t in range(self.max_steps):
            if record:
                frames.append(env.render())
            action = policy(envs.obs_to_frame(self.task, obs), env)
            if action is None:
                raise RuntimeError("the policy returned no action: its chunks ran out before the next one arrived")
            action = np.asarray(action, dtype=np.float32)
            actions.append(action)
            obs, reward, terminated, truncated, info = env.step(action)
            max_reward = max(max_reward, float(reward))
            if envs.is_success(info):
                success_step = t + 1
                break
            if terminated or truncated:
                break
        if record:
            frames.append(env.render())
        actions = np.stack(actions)
        ep = dict(seed=seed, success=success_step is not None, steps=len(actions), max_reward=max_reward,
                  **command_smoothness(actions, envs.TASKS[self.task]),
                  **(policy.execution_stats() if hasattr(policy, 'execution_stats') else {}),
                  **envs.episode_metrics(self.task, env))  # PushT: the block's pose error
        return ep, frames

    def evaluate(self, policy, num_workers=1):
        """-> dict of aggregate metrics plus the per-episode list under 'episodes'.
        policy: a policy object, run in this process, or a checkpoint, dict(ckpt_dir=folder, **load_policy's keywords),
        which each of num_workers spawned processes loads (one torch thread each): an ALOHA episode is 400 rendered
        steps, and one process leaves the second core idle."""
        seeds = list(range(self.start_seed, self.start_seed + self.n_episodes))
        if num_workers > 1 and not isinstance(policy, dict):
            raise ValueError("num_workers > 1 needs the policy as a checkpoint, dict(ckpt_dir=folder, ...), that each "
                             "worker process can load; a policy object runs in this process only")
        if isinstance(policy, dict) and num_workers <= 1:
            policy = load_policy(**policy)[1]
        if num_workers > 1:
            jobs = [(self.task, self.max_steps, policy, seed, bool(self.video_dir) and i < self.n_videos)
                    for i, seed in enumerate(seeds)]
            episodes = envs.imap_workers('_episode_worker', jobs, num_workers, module='eval')
        else:
            # the camera its data was recorded at (a VLAPolicy's camera_size; other policy objects: the task's)
            env = envs.make_env(self.task, image_size=getattr(policy, 'camera_size', None))
            episodes = (self.run_episode(policy, env, seed, bool(self.video_dir) and i < self.n_videos)
                        for i, seed in enumerate(seeds))
        results, t0 = [], time.time()
        bar = tqdm(episodes, total=len(seeds), desc=f'eval {self.task}', leave=False, disable=not self.progress,
                   dynamic_ncols=True)
        for ep, frames in bar:
            results.append(ep)
            if frames:
                name = f'seed{ep["seed"]}_{"success" if ep["success"] else "fail"}.mp4'
                save_video(frames, os.path.join(self.video_dir, name), fps=envs.TASKS[self.task]['fps'])
            bar.set_postfix(success=f"{np.mean([r['success'] for r in results]):.2f}")
        if num_workers <= 1:
            env.close()
        return self.aggregate(results, time.time() - t0)

    def aggregate(self, results, seconds):
        """Success rate, avg max reward, and for tasks with reward stages (ALOHA) how many episodes ended at each:
        where the failures stop is what to fix next."""
        ok = [r for r in results if r['success']]
        m = dict(task=self.task, n_episodes=len(results), start_seed=self.start_seed,
                 success_rate=float(np.mean([r['success'] for r in results])),
                 avg_max_reward=float(np.mean([r['max_reward'] for r in results])),
                 avg_completion_steps=float(np.mean([r['steps'] for r in ok])) if ok else None,
                 avg_smoothness=float(np.mean([r['smoothness'] for r in results])),
                 avg_jerk=float(np.mean([r['jerk'] for r in results])),
                 avg_rate_limited_steps=float(np.mean([r['rate_limited_steps'] for r in results])),
                 seconds=seconds)
        stages = envs.TASKS[self.task].get('reward_stages')
        if stages:  # stage k = the episode's best reward was k
            m['max_reward_stages'] = {f'{k} {name}': sum(int(r['max_reward']) == k for r in results)
                                      for k, name in enumerate(stages)}
        for key in ('position_error', 'orientation_error'):
            if key in results[0]:
                m[f'avg_{key}'] = float(np.mean([r[key] for r in results]))
        m['episodes'] = results
        return m


_WORKER = {}  # a worker process's policy (and evaluation env), loaded at its first episode, replaced by the next


def worker_policy(spec):
    """The policy that load_policy(**spec) builds, loaded once per process: a worker runs many episodes of one
    checkpoint (a DAgger round's, or the one being evaluated), and a new checkpoint replaces the last one."""
    key = repr(sorted(spec.items()))
    if _WORKER.get('key') != key:
        if 'env' in _WORKER:
            _WORKER.pop('env').close()
        _WORKER.update(key=key, policy=load_policy(**spec)[1])
    return _WORKER['policy']


def _episode_worker(args):
    """One evaluation episode in a spawned worker (ManipulationEvaluator.evaluate with num_workers > 1).
    -> (episode dict, frames): frames only for the episodes that are recorded as videos."""
    task, max_steps, spec, seed, record = args
    torch.set_num_threads(1)  # the workers share the cores: one thread each, no OpenMP spinning
    policy = worker_policy(dict(spec, task=task))
    if 'env' not in _WORKER:
        _WORKER['env'] = envs.make_env(task, image_size=policy.camera_size)
    evaluator = ManipulationEvaluator(task, n_episodes=1, start_seed=seed, max_steps=max_steps, progress=False)
    return evaluator.run_episode(policy, _WORKER['env'], seed, record)


# -----------------------------------------------------------------------------
# DAgger's data (train_dagger.py): rollouts of a checkpoint's policy whose states the task's expert labels


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
    The rngs (numpy's for the choices, torch's for a sampling learner) are seeded per episode, so the labels do not
    depend on how many workers share the rollouts."""
    task, ckpt, seed, beta, max_steps, rng_seed, threads, expert_kw, segment, branch = args
    if threads:
        torch.set_num_threads(threads)
    with episode_rng(int(np.random.SeedSequence(rng_seed).generate_state(1)[0])):
        return _dagger_rollout(task, ckpt, seed, beta, max_steps, rng_seed, expert_kw, segment, branch)


def _dagger_rollout(task, ckpt, seed, beta, max_steps, rng_seed, expert_kw, segment, branch):
    """The body of _dagger_worker, under its seeded torch generator."""
    policy = worker_policy(dict(ckpt_dir=ckpt, task=task))  # a multi-task policy: its entry for this task
    expert, env = envs.make_expert(task, **(expert_kw or {})), envs.make_env(task, image_size=policy.camera_size)
    rng = np.random.default_rng(rng_seed)
    obs, _ = env.reset(seed=seed)
    policy.reset()
    expert.reset()
    episodes, expert_steps, success, use_expert = [], 0, False, False
    copy_env = _branch_env(task, policy.camera_size) if branch else None
    for t in range(max_steps):
        frame = envs.obs_to_frame(task, obs)
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
        success = envs.is_success(info)
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
    module = envs.task_module(task)
    if not hasattr(module, "copy_state"):
        raise ValueError(f"expert branches copy the simulator, and {module.__name__}.py has no copy_state(src, dst): "
                         f"use expert segments (--expert_branch=0) for task {task!r}")


def _branch_env(task, image_size=None):
    """A second env for expert branches, to copy the learner's states into (its camera the learner's)."""
    check_branches(task)
    return envs.make_env(task, image_size=image_size)


def _expert_branch(task, env, copy_env, expert_kw, steps):
    """The expert's next `steps` actions from a copy of env's current state, with the frames it sees there; env
    itself does not move. A fresh expert plans from the copied state. -> (frame dicts, labels)."""
    copy_env.reset()  # the time limit's step count starts again; the state is then overwritten
    obs = envs.task_module(task).copy_state(env, copy_env)
    expert = envs.make_expert(task, **(expert_kw or {}))
    expert.reset()
    frames, labels = [], []
    for _ in range(steps):
        frames.append(envs.obs_to_frame(task, obs))
        labels.append(np.asarray(expert.get_action(copy_env), np.float32))
        obs, _, terminated, truncated, info = copy_env.step(labels[-1])
        if envs.is_success(info) or terminated or truncated:
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
    return envs.imap_workers('_dagger_worker', jobs, num_workers, module='eval')


def save_video(frames, path, fps):
    import imageio.v3 as iio
    os.makedirs(os.path.dirname(path), exist_ok=True)
    iio.imwrite(path, np.stack(frames), fps=fps, codec='libx264', plugin='pyav')


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    if policy == 'vla':
        if not ckpt:
            raise SystemExit("pass --ckpt=<folder written by train_bc.py> (or --policy=expert --task=pusht)")
        kw = dict(device=device, n_action_steps=n_action_steps, temporal_ensemble_coeff=temporal_ensemble_coeff,
                  task=task, instruction=instruction, min_instruction_cosine=min_instruction_cosine,
                  chunk_join=chunk_join, inference_delay=inference_delay, rtc_max_weight=rtc_max_weight,
                  flow_noise_scale=flow_noise_scale)
        try:  # --task picks one task of a multi-task checkpoint
            settings, pol = load_policy(ckpt, **kw)
        except ValueError as e:
            raise SystemExit(str(e)) from e
        task, check = settings['task'], settings['instruction_check']
        if 'limits' in settings:  # train_bc.py --dataset without --task
            raise SystemExit(f"{ckpt} was trained on the dataset {task}, which has no simulator: eval.py runs policies "
                             f"in simulators. What it can report instead is the open-loop action error on the "
                             f"dataset's held-out episodes, which train_bc.py wrote to {os.path.join(ckpt, 'eval.json')}")
        if num_workers > 1:  # each worker loads the checkpoint itself
            pol = dict(ckpt_dir=ckpt, **dict(kw, task=task))
        print(describe_instruction(check))
        out = out or os.path.join(ckpt, 'eval.json')
        video_dir = os.path.join(ckpt, 'videos')
    elif policy == 'expert':
        if not task:
            raise SystemExit(f"--policy=expert needs --task (one of {sorted(envs.TASKS)})")
        if num_workers > 1:
            raise SystemExit("--num_workers > 1 runs a checkpoint's policy; the expert runs in one process")
        pol = ExpertPolicy(task)
        out = out or os.path.join('out', f'eval_expert_{task}.json')
        video_dir = os.path.join('out', f'videos_expert_{task}')
    else:
        raise SystemExit(f"--policy must be 'vla' or 'expert', got {policy!r}")
    evaluator = ManipulationEvaluator(task, episodes, start_seed, max_steps or None, video_dir, videos)
    metrics = evaluator.evaluate(pol, num_workers)
    if policy == 'vla':
        metrics['instruction_check'] = check
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + '.tmp', 'w') as f:
        json.dump(metrics, f, indent=2)
    os.replace(out + '.tmp', out)
    print({k: v for k, v in metrics.items() if k != 'episodes'})
    print(f"success {metrics['success_rate']:.2f} over {episodes} episodes (seeds {start_seed}..); wrote {out}")
