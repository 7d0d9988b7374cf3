"""
Success against training time, from the log.jsonl of one or more train_bc.py runs (validation
evaluations during training, the final test evaluation at the end), with a public reference line.

    python bench/plot_success_vs_time.py out/pusht_human out/heads_flow --out=docs/pusht_human_success.png \
        --reference=0.638 --reference_label="LeRobot diffusion_pusht (200k steps, ~7 h on an RTX 3090)"

Prints one table (run, iteration, minutes, success, split) and writes the PNG.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def points(run, pauses=()):
    """-> [(iteration, minutes of training (train_time: evaluations left out), success, 'val' | 'test')] from
    run/log.jsonl; a test result only in run/eval.json (evaluated by eval.py) counts at the last iteration.
    pauses = [(iteration, seconds)]: the run was stopped that long up to that iteration; the stop is left out of
    the training time of every later point.
    A resumed run (--resume=True) appends to the same log with its clock from 0: its time adds to what came before."""
    out, last, eval_seconds, offset, prev = [], None, 0.0, 0.0, (0.0, 0.0)
    for line in open(os.path.join(run, 'log.jsonl')):
        r = json.loads(line)
        if r['time'] < prev[0]:  # a --resume'd process: its clock starts at 0 again, after the training so far
            offset, eval_seconds = offset + prev[1], 0.0
        eval_seconds = r['time'] - r['train_time'] if 'train_time' in r else eval_seconds  # so far
        prev = (r['time'], r['time'] - eval_seconds)
        t = offset + prev[1] - sum(sec for it, sec in pauses if r['iter'] > it)
        last = (r['iter'], t / 60)
        for key, split in (('eval_success', 'val'), ('test_success', 'test')):
            if key in r:
                out.append((r['iter'], t / 60, r[key], split))
    if not any(p[3] == 'test' for p in out) and os.path.exists(os.path.join(run, 'eval.json')):
        out.append((*last, json.load(open(os.path.join(run, 'eval.json')))['success_rate'], 'test'))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('runs', nargs='+')
    p.add_argument('--out', default='success_vs_time.png')
    p.add_argument('--reference', type=float, default=None)
    p.add_argument('--reference_label', default='reference')
    p.add_argument('--pause', default='', help="ITER:SECONDS[,ITER:SECONDS...][;...]: SECONDS of stops up to "
                   "iteration ITER (not training time), per run in order, the runs separated by ';'")
    args = p.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    print(f"{'run':<28} {'iter':>7} {'minutes':>8} {'success':>8}  split")
    groups = args.pause.split(';') if args.pause else []
    for i, run in enumerate(args.runs):
        pauses = [tuple(float(x) for x in p.split(':')) for p in groups[i].split(',') if p] if i < len(groups) else []
        pts = points(run, pauses)
        for it, minutes, success, split in pts:
            print(f"{os.path.basename(run.rstrip('/')):<28} {it:>7} {minutes:>8.1f} {success:>8.3f}  {split}")
        ax.plot([m for _, m, _, _ in pts], [s for _, _, s, _ in pts], 'o-', label=os.path.basename(run.rstrip('/')))
    if args.reference is not None:
        ax.axhline(args.reference, color='gray', ls='--', label=args.reference_label)
    ax.set(xlabel='training time (min, evaluations left out)', ylabel='success rate', ylim=(0, 1),
           title='success vs training time')
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == '__main__':
    main()
