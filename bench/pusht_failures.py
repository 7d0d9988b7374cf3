"""
How a PushT policy's failed episodes end: replays the failures of an eval.json (same checkpoint, same seeds)
and measures whether the block was still pushed at the end, or sat still while the pusher moved elsewhere
(a policy that takes a near miss for done). Prints one table and a summary line.

    python bench/pusht_failures.py --ckpt=out/pusht_human --eval_json=out/pusht_human/eval.json --min_reward=0.95
"""
import json
import os
import sys

import numpy as np
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs  # noqa: E402
import pusht  # noqa: E402
from policy import load_policy  # noqa: E402

# -----------------------------------------------------------------------------
ckpt = ''
eval_json = ''  # '' = <ckpt>/eval.json
min_reward = 0.95  # failures whose max reward (coverage / 0.95) reached this: the near misses
still_px = 0.5  # the block moved less than this per step (arena px) = it was not being pushed
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
    settings, policy = load_policy(ckpt, 'cpu', 0, -1.0, '')
    env = envs.make_env('pusht')
    rows = []
    for seed in tqdm(seeds, desc='replay failures', dynamic_ncols=True):
        blocks, agents, rewards = replay(policy, env, seed, envs.TASKS['pusht']['max_steps'])
        moved = np.linalg.norm(np.diff(blocks[:, :2], axis=0), axis=1) + 250 * np.abs(np.diff(blocks[:, 2]))  # ~T's arm
        last_push = int(np.nonzero(moved > still_px)[0].max()) + 1 if (moved > still_px).any() else 0
        still = len(blocks) - last_push  # steps at the end with the block at rest
        rows.append(dict(seed=seed, max_reward=float(rewards.max()), final_reward=float(rewards[-1]), still_steps=still,
                         pusher_to_block=float(np.linalg.norm(agents[last_push:] - blocks[last_push:, :2], axis=1).mean())))
    env.close()
    print("| seed | max reward | final reward | steps at rest at the end | pusher-block distance then (px) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['seed']} | {r['max_reward']:.3f} | {r['final_reward']:.3f} | {r['still_steps']} | {r['pusher_to_block']:.0f} |")
    idle = [r for r in rows if r['still_steps'] >= 100]
    away = [r for r in rows if r['final_reward'] < r['max_reward'] - 0.05]
    print(f"{len(rows)} failures with max reward >= {min_reward} (of {metrics['n_episodes']} episodes): {len(idle)} ended "
          f"with the block at rest for >= 100 of the 300 steps (median {np.median([r['still_steps'] for r in rows]):.0f} "
          f"steps at rest; the pusher {np.median([r['pusher_to_block'] for r in rows]):.0f} px from the block meanwhile); "
          f"{len(away)} pushed it away again (final reward more than 0.05 below the max)")
