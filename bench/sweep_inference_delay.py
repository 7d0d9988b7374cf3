"""
Success under inference latency (issue 39): one checkpoint evaluated in the simulator with a new chunk available only
K control steps after its observation (eval.py --inference_delay=K: the robot keeps executing the previous chunk
meanwhile), for each way of joining the new chunk to the executing one (--chunk_join).

    python bench/sweep_inference_delay.py --ckpt=out/pusht_flow --delays=0,1,2,4,8 --joins=switch,ensemble,rtc \
        --episodes=200 --num_workers=2 --out=results/runs/pusht_flow_delay

Prints one table (join, K, success, avg max reward, jerk, rate-limited steps, chunk delay), writes each
evaluation's JSON to --out/<join>_K<k>.json (kept: a re-run skips what is there) and the plot --out/delay.png.
"""
import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import envs  # noqa: E402
from eval import ManipulationEvaluator  # noqa: E402
from train_common import write_json  # noqa: E402


def row(join, k, m):
    eps = m['episodes']
    return dict(join=join, delay=k, success=m['success_rate'], avg_max_reward=m['avg_max_reward'],
                jerk=m['avg_jerk'], rate_limited_steps=m['avg_rate_limited_steps'],
                chunk_delay=sum(e['mean_chunk_delay'] for e in eps) / len(eps), n=m['n_episodes'])


def plot(rows, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for join in dict.fromkeys(r['join'] for r in rows):
        rs = sorted((r for r in rows if r['join'] == join), key=lambda r: r['delay'])
        axes[0].plot([r['delay'] for r in rs], [r['success'] for r in rs], 'o-', label=join)
        axes[1].plot([r['delay'] for r in rs], [r['jerk'] for r in rs], 'o-', label=join)
    axes[0].set(xlabel='inference delay K (control steps)', ylabel='success', title='success against latency')
    axes[1].set(xlabel='inference delay K (control steps)', ylabel='mean |3rd difference| of the command',
                title='jerk of the command')
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--ckpt', required=True)
    p.add_argument('--delays', default='0,1,2,4,8')
    p.add_argument('--joins', default='switch,ensemble,rtc')
    p.add_argument('--episodes', type=int, default=200)
    p.add_argument('--start_seed', type=int, default=envs.TEST_SEED)
    p.add_argument('--n_action_steps', type=int, default=0, help="0 = the checkpoint's")
    p.add_argument('--rtc_max_weight', type=float, default=5.0, help="real-time chunking's guidance clip")
    p.add_argument('--num_workers', type=int, default=2)
    p.add_argument('--out', required=True)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    task = json.load(open(os.path.join(args.ckpt, 'config.json')))['policy']['tasks'][0]['task']
    rows = []
    for join in args.joins.split(','):
        for k in [int(x) for x in args.delays.split(',')]:
            path = os.path.join(args.out, f'{join}_K{k}.json')
            if not os.path.exists(path):
                policy = dict(ckpt_dir=args.ckpt, n_action_steps=args.n_action_steps, chunk_join=join,
                              inference_delay=k, rtc_max_weight=args.rtc_max_weight)
                evaluator = ManipulationEvaluator(task, args.episodes, args.start_seed)
                write_json(path, evaluator.evaluate(policy, args.num_workers))
            rows.append(row(join, k, json.load(open(path))))
            r = rows[-1]
            print(f"{join:9s} K={k}: success {r['success']:.3f} avg max reward {r['avg_max_reward']:.3f} "
                  f"jerk {r['jerk']:.2f}", flush=True)
    write_json(os.path.join(args.out, 'summary.json'), rows)
    plot(rows, os.path.join(args.out, 'delay.png'))
    print("\n| join | K | success | avg max reward | jerk | rate-limited steps / episode | chunk delay | episodes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['join']} | {r['delay']} | {r['success']:.3f} | {r['avg_max_reward']:.3f} | {r['jerk']:.2f} | "
              f"{r['rate_limited_steps']:.2f} | {r['chunk_delay']:.2f} | {r['n']} |")


if __name__ == '__main__':
    main()
