"""
Held-out success against expert labels, from the dagger_state.json of one or more train_dagger.py runs:
DAgger (the learner drives, the expert labels) next to its BC control at equal labels (the same script with
--beta=1 --beta_decay=1: the expert drives, so every new label is one more expert demonstration).

    python bench/plot_dagger.py out/dl/dagger out/dl/bc_more --names=DAgger,"BC (more expert demos)" \
        --out=results/dagger_vs_bc.png

Runs given the same name are seeds of one method: each is drawn thin, and their mean per round bold, with the
standard error over seeds in the table; with two methods of as many seeds, also their difference seed by seed
(paired in the order given: the same --seed for both). A round trained with --eval_episodes=0 (e.g. on another
machine) is read from the eval.json that `python eval.py --ckpt=<run>/iter<i> --episodes=100` writes beside it.

Prints one table (run, round, labels, beta, rollout success, held-out success, avg max reward) and writes the PNG.
"""
import argparse
import json
import os
import statistics

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def rounds(run):
    """-> the run's history: round -1 is the BC policy it started from (labels = its dataset's frames)."""
    path = os.path.join(run, 'dagger_state.json')
    if not os.path.exists(path):
        raise SystemExit(f"{path} not found: pass the --out_dir of a train_dagger.py run")
    hist = json.load(open(path))['history']
    for h in hist:
        if h['round'] >= 0 and h.get('test_success') is None:  # evaluated after the run, by eval.py
            ckpt = os.path.join(run, f"iter{h['round']}")
            if not os.path.exists(os.path.join(ckpt, 'eval.json')):
                raise SystemExit(f"round {h['round']} of {run} has no held-out evaluation (trained with "
                                 f"--eval_episodes=0): run python eval.py --ckpt={ckpt} --episodes=100")
            m = json.load(open(os.path.join(ckpt, 'eval.json')))
            h['test_success'], h['test_max_reward'] = m['success_rate'], m['avg_max_reward']
    return hist


def mean_se(xs):
    """Mean and standard error over seeds (0 for a single seed)."""
    return statistics.fmean(xs), statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else 0.0


def print_paired(first, second):
    """Two methods with as many seeds, paired in the order given (the same --seed for both): the mean difference
    seed by seed and its standard error, per round. Pairing removes what the seeds share (the start, the rollout
    seeds), so it is tighter than the difference of the two means."""
    (a, ha), (b, hb) = first, second
    if len(ha) != len(hb) or len(ha) < 2:
        return
    print(f"\npaired by seed, {a} - {b}:\n{'round':>5} {'pairs':>5} {'success':>14} {'max_rew':>14}")
    for i in range(min(max(len(h) for h in ha), max(len(h) for h in hb))):  # rounds that both methods reached
        pairs = [(x[i], y[i]) for x, y in zip(ha, hb) if len(x) > i and len(y) > i]
        (s, s_se), (r, r_se) = (mean_se([x[key] - y[key] for x, y in pairs]) for key in ('test_success', 'test_max_reward'))
        print(f"{pairs[0][0]['round']:>5} {len(pairs):>5} {s:>+7.3f} ±{s_se:.3f} {r:>+7.3f} ±{r_se:.3f}")


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
    groups = {}  # name -> histories of its seeds
    for run, name in zip(args.runs, names):
        hist = rounds(run)
        groups.setdefault(name, []).append(hist)
        for h in hist:
            beta = '-' if h['beta'] is None else f"{h['beta']:.3f}"
            roll = '-' if 'rollout_success' not in h else f"{h['rollout_success']:.2f}"
            print(f"{name:>24} {h['round']:>5} {h['labels']:>7} {beta:>6} {roll:>8} {h['test_success']:>8.2f} "
                  f"{h['test_max_reward']:>8.3f}")
    print(f"\n{'method':>24} {'round':>5} {'seeds':>5} {'labels':>7} {'success':>14} {'max_rew':>14}")
    for k, (name, hists) in enumerate(groups.items()):
        color = f"C{k}"
        mean = {key: [] for key in ('labels', 'test_success', 'test_max_reward')}
        for i in range(max(len(h) for h in hists)):
            reached = [h[i] for h in hists if len(h) > i]  # the seeds that ran this many rounds
            stats = {key: mean_se([h[key] for h in reached]) for key in mean}
            for key in mean:
                mean[key].append(stats[key][0])
            (s, s_se), (r, r_se) = stats['test_success'], stats['test_max_reward']
            print(f"{name:>24} {reached[0]['round']:>5} {len(reached):>5} {stats['labels'][0]:>7.0f} "
                  f"{s:>7.3f} ±{s_se:.3f} {r:>7.3f} ±{r_se:.3f}")
        single = len(hists) == 1
        for hist in hists:  # each seed thin (or the only one bold)
            labels = [h['labels'] for h in hist]
            for ax, key in ((ax1, 'test_success'), (ax2, 'test_max_reward')):
                ax.plot(labels, [h[key] for h in hist], 'o-' if single else '-', color=color, alpha=1 if single else 0.3,
                        label=name if single else None)
        if not single:
            for ax, key in ((ax1, 'test_success'), (ax2, 'test_max_reward')):
                ax.plot(mean['labels'], mean[key], 'o-', color=color, lw=2.5, label=f"{name} (mean of {len(hists)})")
    if len(groups) == 2:
        print_paired(*groups.items())
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
