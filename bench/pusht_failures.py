"""
How a PushT policy's failed episodes end: replays the failures of an eval.json (same checkpoint, same seeds)
and measures whether the block was still pushed at the end, or sat still while the pusher moved elsewhere
(a policy that takes a near miss for done), or while the pusher shuttled back and forth in one small box (a
regression head averaging two ways to push: the average is a place between them, and from there the same two
again). Prints one table and a summary line.

    python bench/pusht_failures.py --ckpt=out/pusht_human --eval_json=out/pusht_human/eval.json --min_reward=0.95
    python bench/pusht_failures.py --ckpt=out/pusht --eval_json=out/pusht/val100.json --min_reward=0   # every failure
"""
import json
import os
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs  # noqa: E402
import pusht  # noqa: E402
from eval import episode_rng  # noqa: E402
from policy import load_policy  # noqa: E402

# -----------------------------------------------------------------------------
ckpt = ''
eval_json = ''  # '' = <ckpt>/eval.json
min_reward = 0.95  # failures whose max reward (coverage / 0.95) reached this: the near misses
still_px = 0.5  # the block moved less than this per step (arena px) = it was not being pushed
box_px = 40.0  # the pusher's last 100 steps inside a box this wide (arena px) = it dithered in place
flow_noise_scale = -1.0  # a flow head's sampling temperature, as the eval that wrote eval_json used (< 0 = stored)
_task_presets = False
exec(open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configurator.py')).read())
# -----------------------------------------------------------------------------


def replay(policy, env, seed, max_steps):
    """-> per-step block poses (T, 3), pusher positions (T, 2) and rewards (T,) of one seeded episode."""
    obs, _ = env.reset(seed=seed)
    policy.reset()
    blocks, agents, rewards = [], [], []
    for _ in range(max_steps):
        obs, reward, terminated, truncated, info = env.step(np.asarray(policy(envs.obs_to_frame('pusht', obs), env)))
        s = pusht.get_state(env)
        blocks.append(s[4:7])
        agents.append(s[:2])
        rewards.append(reward)
        if envs.is_success(info) or terminated or truncated:
            break
    return np.array(blocks), np.array(agents), np.array(rewards)


if __name__ == '__main__':
    metrics = json.load(open(eval_json or os.path.join(ckpt, 'eval.json')))
    seeds = [e['seed'] for e in metrics['episodes'] if not e['success'] and e['max_reward'] >= min_reward]
    settings, policy = load_policy(ckpt, 'cpu', 0, -1.0, '', flow_noise_scale=flow_noise_scale)
    env = envs.make_env('pusht')
    rows = []
    for seed in tqdm(seeds, desc='replay failures', dynamic_ncols=True):
        with episode_rng(seed):  # the eval's draws for this seed: the same episode
            blocks, agents, rewards = replay(policy, env, seed, envs.TASKS['pusht']['max_steps'])
        moved = np.linalg.norm(np.diff(blocks[:, :2], axis=0), axis=1) + 250 * np.abs(np.diff(blocks[:, 2]))  # ~T's arm
        last_push = int(np.nonzero(moved > still_px)[0].max()) + 1 if (moved > still_px).any() else 0
        still = len(blocks) - last_push  # steps at the end with the block at rest
        rows.append(dict(seed=seed, max_reward=float(rewards.max()), final_reward=float(rewards[-1]), still_steps=still,
                         pusher_to_block=float(np.linalg.norm(agents[last_push:] - blocks[last_push:, :2], axis=1).mean()),
                         pusher_box=float(np.ptp(agents[-100:], axis=0).max())))
    env.close()
    print("| seed | max reward | final reward | steps at rest at the end | pusher-block distance then (px) | "
          "pusher's box, last 100 steps (px) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['seed']} | {r['max_reward']:.3f} | {r['final_reward']:.3f} | {r['still_steps']} | "
              f"{r['pusher_to_block']:.0f} | {r['pusher_box']:.0f} |")
    idle = [r for r in rows if r['still_steps'] >= 100]
    dither = [r for r in idle if r['pusher_box'] < box_px]
    away = [r for r in rows if r['final_reward'] < r['max_reward'] - 0.05]
    print(f"{len(rows)} failures with max reward >= {min_reward} (of {metrics['n_episodes']} episodes): {len(idle)} ended "
          f"with the block at rest for >= 100 of the 300 steps (median {np.median([r['still_steps'] for r in rows]):.0f} "
          f"steps at rest; the pusher {np.median([r['pusher_to_block'] for r in rows]):.0f} px from the block meanwhile; "
          f"{len(dither)} of them with the pusher inside a {box_px:.0f} px box for its last 100 steps); "
          f"{len(away)} pushed it away again (final reward more than 0.05 below the max)")
