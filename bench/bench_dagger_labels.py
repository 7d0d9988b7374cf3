"""
What a DAgger label costs: roll out a PushT policy and let the expert label every state it visits
(eval.label_rollouts, what train_dagger.py runs each round), with 1 and with N worker processes.
The expert re-plans at every state the learner drives it to, so labels cost far more than recording
the expert's own demonstrations (where it follows its plan). --segment=8 --beta=0.5 measures train_dagger.py's
default, where the expert drives (and labels) whole segments.

    python bench/bench_dagger_labels.py --ckpt=out/pusht --rollouts=8 --workers=1,2
    python bench/bench_dagger_labels.py --ckpt=out/pusht --save=bench/dagger_labels_baseline.json
    python bench/bench_dagger_labels.py --ckpt=out/pusht --compare=bench/dagger_labels_baseline.json

Prints one table: workers, rollouts, labels, seconds, labels/s, and the minutes 200 rollouts would take.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import eval  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--ckpt', required=True, help='a PushT checkpoint folder (train_bc.py out_dir)')
    p.add_argument('--rollouts', type=int, default=8)
    p.add_argument('--workers', default='1,2', help='comma-separated worker counts')
    p.add_argument('--max_steps', type=int, default=300)
    p.add_argument('--beta', type=float, default=0.0, help='probability that the expert drives a step (segment)')
    p.add_argument('--segment', type=int, default=0, help='0 = per-step labels of every state; H = the expert '
                   'drives whole H-step segments, only those recorded (train_dagger.py --expert_segment)')
    p.add_argument('--save', default='', help='write the results as JSON (a baseline)')
    p.add_argument('--compare', default='', help='a saved baseline: add its labels/s and the speed-up')
    args = p.parse_args()
    base = {r['workers']: r for r in json.load(open(args.compare))['rows']} if args.compare else {}
    seeds = range(50_000, 50_000 + args.rollouts)  # DAgger's rollout seeds (training seeds)
    rows = []
    for w in [int(x) for x in args.workers.split(',')]:
        t0 = time.perf_counter()
        eps = list(eval.label_rollouts('pusht', args.ckpt, seeds, args.beta, args.max_steps, [0], num_workers=w,
                                       segment=args.segment))
        sec = time.perf_counter() - t0
        labels = sum(e['labels'] for e in eps)
        rows.append(dict(workers=w, rollouts=len(eps), labels=labels, seconds=sec, labels_per_s=labels / sec,
                         min_per_200=sec / len(eps) * 200 / 60))
    print(f"DAgger labelling, {args.ckpt}, beta={args.beta}, segment={args.segment}, {os.cpu_count()} CPUs (process start included)")
    print(f"{'workers':>7} {'rollouts':>8} {'labels':>7} {'seconds':>8} {'labels/s':>9} {'min/200':>8}"
          + (f" {'base/s':>8} {'speed-up':>8}" if base else ''))
    for r in rows:
        line = (f"{r['workers']:>7} {r['rollouts']:>8} {r['labels']:>7} {r['seconds']:>8.1f} {r['labels_per_s']:>9.1f} "
                f"{r['min_per_200']:>8.1f}")
        if r['workers'] in base:
            b = base[r['workers']]['labels_per_s']
            line += f" {b:>8.1f} {r['labels_per_s'] / b:>7.2f}x"
        print(line)
    if args.save:
        with open(args.save, 'w') as f:
            json.dump(dict(ckpt=args.ckpt, rows=rows), f, indent=2)


if __name__ == '__main__':
    main()
