"""
Closed-loop evaluation: run a policy in the real simulator and measure how often it succeeds.

    python eval.py --ckpt=out/pusht                         # 100 held-out episodes, writes out/pusht/eval.json
    python eval.py --ckpt=out/pusht --episodes=20 --videos=4
    python eval.py --policy=expert --task=pusht --episodes=100
    python eval.py --ckpt=out/lang/minilm/policy --instruction="head west of the block"   # words it was not trained on

Offline metrics (action MSE on held-out demos) say little about control: small errors compound
as the policy drifts into states the demonstrations never visited (Ross et al. 2011). So the
number that matters is the success rate from rolling the policy out, on seeds that no
demonstration used (demos: seeds [0, 100000); validation: envs.VAL_SEED..; test: envs.TEST_SEED..).
"""
import json
import math
import os
import time

import numpy as np
from tqdm import tqdm

import envs
import pusht
from deploy import VLAPolicy, describe_instruction, load_policy  # noqa: F401  (the execution logic a robot runs; re-exported)

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
temporal_ensemble_coeff = -1.0  # < 0 = the checkpoint's value; set >= 0 with n_action_steps=1 for ACT ensembling
videos = 2  # episodes to save as mp4 in <ckpt>/videos
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


def pose_errors(task, env):
    """PushT: block position error (px of the 512 px arena) and orientation error (deg) to the goal pose."""
    if task != 'pusht':
        return {}
    s = pusht.get_state(env)
    goal = env.unwrapped.goal_pose
    dang = (s[6] - goal[2] + math.pi) % (2 * math.pi) - math.pi  # state: agent xy, agent v, block xy, angle, ...
    return dict(position_error=float(np.hypot(s[4] - goal[0], s[5] - goal[1])), orientation_error=abs(math.degrees(dang)))


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
        obs, info = env.reset(seed=seed)
        policy.reset()
        frames, actions, max_reward, success_step = [], [], 0.0, None
        for t in range(self.max_steps):
            if record:
                frames.append(env.render())
            action = np.asarray(policy(envs.obs_to_frame(self.task, obs), env), dtype=np.float32)
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
                  # smoothness: mean change of the commanded action per step (raw units), lower is smoother
                  smoothness=float(np.linalg.norm(np.diff(actions, axis=0), axis=-1).mean()) if len(actions) > 1 else 0.0,
                  **pose_errors(self.task, env))
        return ep, frames

    def evaluate(self, policy):
        """-> dict of aggregate metrics plus the per-episode list under 'episodes'."""
        env = envs.make_env(self.task)
        results, t0 = [], time.time()
        seeds = range(self.start_seed, self.start_seed + self.n_episodes)
        bar = tqdm(seeds, desc=f'eval {self.task}', leave=False, disable=not self.progress, dynamic_ncols=True)
        for i, seed in enumerate(bar):
            ep, frames = self.run_episode(policy, env, seed, record=bool(self.video_dir) and i < self.n_videos)
            results.append(ep)
            if frames:
                save_video(frames, os.path.join(self.video_dir, f'seed{seed}_{"success" if ep["success"] else "fail"}.mp4'),
                           fps=envs.TASKS[self.task]['fps'])
            bar.set_postfix(success=f"{np.mean([r['success'] for r in results]):.2f}")
        env.close()
        ok = [r for r in results if r['success']]
        m = dict(task=self.task, n_episodes=len(results), start_seed=self.start_seed,
                 success_rate=float(np.mean([r['success'] for r in results])),
                 avg_max_reward=float(np.mean([r['max_reward'] for r in results])),
                 avg_completion_steps=float(np.mean([r['steps'] for r in ok])) if ok else None,
                 avg_smoothness=float(np.mean([r['smoothness'] for r in results])),
                 seconds=time.time() - t0)
        for key in ('position_error', 'orientation_error'):
            if key in results[0]:
                m[f'avg_{key}'] = float(np.mean([r[key] for r in results]))
        m['episodes'] = results
        return m


def save_video(frames, path, fps):
    import imageio.v3 as iio
    os.makedirs(os.path.dirname(path), exist_ok=True)
    iio.imwrite(path, np.stack(frames), fps=fps, codec='libx264', plugin='pyav')


if __name__ == '__main__':
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    if policy == 'vla':
        if not ckpt:
            raise SystemExit("pass --ckpt=<folder written by train_bc.py> (or --policy=expert --task=pusht)")
        try:  # --task picks one task of a multi-task checkpoint
            settings, pol = load_policy(ckpt, device, n_action_steps, temporal_ensemble_coeff, task, instruction,
                                        min_instruction_cosine)
        except ValueError as e:
            raise SystemExit(str(e)) from e
        task, check = settings['task'], settings['instruction_check']
        print(describe_instruction(check))
        out = out or os.path.join(ckpt, 'eval.json')
        video_dir = os.path.join(ckpt, 'videos')
    elif policy == 'expert':
        if not task:
            raise SystemExit(f"--policy=expert needs --task (one of {sorted(envs.TASKS)})")
        pol = ExpertPolicy(task)
        out = out or os.path.join('out', f'eval_expert_{task}.json')
        video_dir = os.path.join('out', f'videos_expert_{task}')
    else:
        raise SystemExit(f"--policy must be 'vla' or 'expert', got {policy!r}")
    evaluator = ManipulationEvaluator(task, episodes, start_seed, max_steps or None, video_dir, videos)
    metrics = evaluator.evaluate(pol)
    if policy == 'vla':
        metrics['instruction_check'] = check
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + '.tmp', 'w') as f:
        json.dump(metrics, f, indent=2)
    os.replace(out + '.tmp', out)
    print({k: v for k, v in metrics.items() if k != 'episodes'})
    print(f"success {metrics['success_rate']:.2f} over {episodes} episodes (seeds {start_seed}..); wrote {out}")
