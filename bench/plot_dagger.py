"""
Held-out success against expert labels, from the dagger_state.json of one or more train_dagger.py runs:
DAgger (the learner drives, the expert labels) next to its BC control at equal labels (the same script with
--beta=1 --beta_decay=1: the expert drives, so every new label is one more expert demonstration).

    python bench/plot_dagger.py out/dl/dagger out/dl/bc_more --names=DAgger,"BC (more expert demos)" \
        --out=results/dagger_vs_bc.png

Prints one table (run, round, labels, beta, rollout success, held-out success, avg max reward) and writes the PNG.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def rounds(run):
    """-> the run's history: round -1 is the BC policy it started from (labels = its dataset's frames)."""
    path = os.path.join(run, 'dagger_state.json')
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: pass the --out_dir of a train_dagger.py run")
    return json.load(open(path))['history']


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('runs', nargs='+', help='train_dagger.py out_dir folders')
    p.add_argument('--names', default='', help='comma-separated legend names (default: the folder names)')
    p.add_argument('--out', default='results/dagger_vs_bc.png')
    args = p.parse_args()
    names = args.names.split(',') if args.names else [os.path.basename(r.rstrip('/')) for r in args.runs]
    if len(names) != len(args.runs):
        raise SystemExit(f"{len(names)} names for {len(args.runs)} runs")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    print(f"{'run':>24} {'round':>5} {'labels':>7} {'beta':>6} {'rollout':>8} {'success':>8} {'max_rew':>8}")
    for run, name in zip(args.runs, names):
        hist = rounds(run)
        for h in hist:
            beta = '-' if h['beta'] is None else f"{h['beta']:.3f}"
            roll = '-' if 'rollout_success' not in h else f"{h['rollout_success']:.2f}"
            print(f"{name:>24} {h['round']:>5} {h['labels']:>7} {beta:>6} {roll:>8} {h['test_success']:>8.2f} "
                  f"{h['test_max_reward']:>8.3f}")
        labels = [h['labels'] for h in hist]
        ax1.plot(labels, [h['test_success'] for h in hist], 'o-', label=name)
        ax2.plot(labels, [h['test_max_reward'] for h in hist], 'o-', label=name)
    for ax, what in ((ax1, 'held-out success'), (ax2, 'avg max goal coverage')):
        ax.set_xlabel('expert labels (frames in the training set)')
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    ax1.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == '__main__':
    main()
