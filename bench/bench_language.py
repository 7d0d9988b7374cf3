"""
Does the policy follow language it was not trained on? One PushT scene, two instructions that ask for different
motions ("move the pusher to the LEFT / RIGHT of the block"), so the image alone cannot say what to do. A
scripted controller drives the pusher straight to the asked side of the block (the action is that target point);
train_bc.py learns both from ONE dataset (each episode conditioned on its own text, one set of statistics, so
only the words tell the instructions apart). Then the policy is driven in the simulator, on held-out seeds, by:
  - the two training instructions,
  - paraphrases never seen in training (some keep the key word 'left'/'right', some do not),
  - instructions of no side (another task's instruction, an empty string).
Each episode ends nearest one goal: 'left', 'right', or 'neither' (> 60 px from both goals).

    python bench/bench_language.py --out=out/lang                                   # from scratch
    python bench/bench_language.py --out=out/lang_vlm --init_from=out/vlm_pusht     # from stage 1 (train_vlm.py)

Prints one table (instruction, kind, left / right / neither over the seeds) and writes out/.../language.json.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import envs  # noqa: E402
import pusht  # noqa: E402

TRAIN = {'left': 'move the pusher to the left of the block', 'right': 'move the pusher to the right of the block'}
PARAPHRASES = {  # never in the training data
    'go to the left side of the T': 'left', 'put the pusher on the block\'s left': 'left',
    'head west of the block': 'left', 'go to the right side of the T': 'right',
    'put the pusher on the block\'s right': 'right', 'head east of the block': 'right'}
NO_SIDE = ['pick up the red cube and lift it', '']
OFFSET, STEPS, NEAR = 110.0, 20, 60.0  # goal = block origin +- 110 px in x; 20 steps; 'at a goal' = within 60 px


def goals(env):
    """-> {'left': xy, 'right': xy}: beside the block's origin, inside the 512 x 512 table."""
    block = pusht.get_state(env)[4:6]
    return {side: np.clip(block + [sign * OFFSET, 0.0], 20, 492).astype(np.float32)
            for side, sign in (('left', -1), ('right', 1))}


def record(root, episodes):
    """Alternating left/right episodes on training seeds 0..: the action is the goal (a position target)."""
    import dataset_writer
    features = {'observation.image': {'dtype': 'image', 'shape': [96, 96, 3], 'names': ['height', 'width', 'channels']},
                'observation.state': {'dtype': 'float32', 'shape': [2], 'names': ['x', 'y']},
                'action': {'dtype': 'float32', 'shape': [2], 'names': ['x', 'y']}}
    writer = dataset_writer.LeRobotDatasetWriter(root + '.tmp', fps=10, features=features)
    env = envs.make_env('pusht')
    for seed in range(episodes):
        side = ('left', 'right')[seed % 2]
        obs, _ = env.reset(seed=seed)
        goal = goals(env)[side]
        for _ in range(STEPS):
            writer.add_frame({**envs.obs_to_frame('pusht', obs), 'action': goal}, task=TRAIN[side])
            obs, *_ = env.step(goal)
        writer.save_episode()
    env.close()
    writer.finalize()
    os.replace(root + '.tmp', root)


def outcome(policy, seed):
    """Drive the simulator with the policy for STEPS steps -> 'left' | 'right' | 'neither'."""
    env = envs.make_env('pusht')
    obs, _ = env.reset(seed=seed)
    g = goals(env)
    policy.reset()
    for _ in range(STEPS):
        obs, *_ = env.step(np.asarray(policy(envs.obs_to_frame('pusht', obs)), np.float32))
    env.close()
    dist = {side: float(np.hypot(*(obs['agent_pos'] - xy))) for side, xy in g.items()}
    side = min(dist, key=dist.get)
    return side if dist[side] < NEAR else 'neither'


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--out', default='out/lang')
    p.add_argument('--episodes', type=int, default=100, help='training episodes (half left, half right)')
    p.add_argument('--iters', type=int, default=1500)
    p.add_argument('--init_from', default='', help='a checkpoint to start from (e.g. train_vlm.py\'s)')
    p.add_argument('--seeds', type=int, default=20, help='held-out test seeds per instruction')
    args = p.parse_args()
    data_dir = os.path.join(args.out, 'data')
    if not os.path.exists(data_dir):
        os.makedirs(args.out, exist_ok=True)
        record(data_dir, args.episodes)
    ckpt = os.path.join(args.out, 'policy')
    if not os.path.exists(os.path.join(ckpt, 'model.safetensors')):
        subprocess.run([sys.executable, os.path.join(REPO, 'train_bc.py'), '--task=pusht', f'--dataset={data_dir}',
                        f'--out_dir={ckpt}', f'--max_iters={args.iters}', '--eval_interval=0',
                        '--final_eval_episodes=0', f'--init_from={args.init_from}'], check=True, cwd=REPO)
    from deploy import VLAPolicy
    from model import ManipulationVLA
    model = ManipulationVLA.from_pretrained(ckpt).eval()
    rows = [(t, 'trained', side) for side, t in TRAIN.items()] + [(t, 'paraphrase', side) for t, side in PARAPHRASES.items()]
    rows += [(t, 'no side', None) for t in NO_SIDE]
    seeds = range(envs.TEST_SEED, envs.TEST_SEED + args.seeds)
    results = []
    print(f"{'instruction':>45} {'kind':>10} {'asks':>6} {'left':>5} {'right':>6} {'neither':>8}")
    for text, kind, asks in rows:
        ends = [outcome(VLAPolicy(model, text, n_action_steps=8), s) for s in seeds]
        counts = {k: ends.count(k) / len(ends) for k in ('left', 'right', 'neither')}
        results.append(dict(instruction=text, kind=kind, asks=asks, **counts))
        print(f"{text!r:>45} {kind:>10} {asks or '-':>6} {counts['left']:>5.2f} {counts['right']:>6.2f} "
              f"{counts['neither']:>8.2f}", flush=True)
    for kind in ('trained', 'paraphrase'):
        hit = np.mean([r[r['asks']] for r in results if r['kind'] == kind])
        print(f"{kind}: ends at the asked side in {hit:.2f} of episodes")
    json.dump(dict(args=vars(args), rows=results), open(os.path.join(args.out, 'language.json'), 'w'), indent=1)


if __name__ == '__main__':
    main()
