"""
How well checkpoints fit their own training data: the L1 distance (normalized action units, per element)
between the chunk a policy executes and the demonstrated chunk, on random training frames without augmentation.
For a mixture head also the best of its K chunks and how its weights spread: a head whose best component fits
but whose heaviest does not has learned the modes without learning to tell them apart. Prints one table.

    python bench/fit_heads.py out/pusht_human_w64 out/pusht_human_mix --dataset=../shared/datasets/pusht_human_v30
"""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
from model import ManipulationVLA  # noqa: E402


def fit(model, dataset, idx, batch_size=64):
    """-> dict of mean L1 of the executed chunk (and, for the mixture head, of the best one and weight stats)."""
    sums = {}
    for b in np.array_split(idx, max(1, len(idx) // batch_size)):
        batch = dataset.get_batch(b)
        cache = model.encode_instruction(batch['instruction'])
        cond = model.features(batch['images'], batch['proprio'], cache['text_embeds'], cache['text_mask'])
        target = model.normalize_action(batch['action']) - model.action_origin(batch['proprio'])
        valid = (~batch['action_is_pad']).float().unsqueeze(-1).expand_as(target)  # (B, T, A)
        head = model.head_for()
        out = head(cond)
        rows = {'executed L1': ((out['action'] - target).abs() * valid).sum((1, 2)) / valid.sum((1, 2))}
        if 'weights' in out:  # the mixture head
            log_w, mean, _ = head.distribution(cond)
            per_k = ((mean - target.unsqueeze(1)).abs() * valid.unsqueeze(1)).sum((2, 3)) / valid.sum((1, 2)).unsqueeze(1)
            w = log_w.exp()
            rows.update({'best-of-K L1': per_k.min(1).values, 'heaviest weight': w.max(1).values,
                         'components > 0.1': (w > 0.1).sum(1).float()})
        for k, v in rows.items():
            sums[k] = sums.get(k, 0.0) + float(v.sum())
    return {k: v / len(idx) for k, v in sums.items()}


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('ckpts', nargs='+')
    p.add_argument('--dataset', required=True, help='the LeRobot dataset the checkpoints were trained on')
    p.add_argument('--frames', type=int, default=1024)
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    table = []
    for ck in args.ckpts:
        model = ManipulationVLA.from_pretrained(ck).eval()
        spec = model.policy_info['tasks'][0]  # image keys and state key of the (first) task, as eval.py reads them
        ds = data.ManipulationDataset(args.dataset, image_keys=spec['image_keys'], state_key=spec['state_key'],
                                      chunk_size=model.config.action_chunk_size, n_obs_steps=model.config.n_obs_steps)
        idx = np.random.default_rng(args.seed).choice(len(ds), min(args.frames, len(ds)), replace=False)
        with torch.no_grad():
            table.append((ck, model.config.action_head_type, fit(model, ds, idx)))
    keys = ['executed L1', 'best-of-K L1', 'heaviest weight', 'components > 0.1']
    print('| checkpoint | head | ' + ' | '.join(keys) + ' |')
    print('| --- | --- | ' + ' | '.join('---' for _ in keys) + ' |')
    for ck, head, r in table:
        print(f'| {ck} | {head} | ' + ' | '.join(f'{r[k]:.3f}' if k in r else '-' for k in keys) + ' |')
