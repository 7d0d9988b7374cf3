"""
Is the side in a frozen text encoder's sentence vector, linearly? A logistic-regression probe trained on the 24
training instructions of bench_language.py (their side as the label), read on its validation and test paraphrases:
an upper bound on what a linear map from that vector (the policy's text_proj) can carry to new words, without
the policy's other inputs. Vectors raw (unit length, as the policy reads them) or standardized per dimension over
the 24 (std floored at a tenth of its mean).

    python bench/probe_language.py --encoder=smollm2
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench_language as B  # noqa: E402
from model import sentence_encoder  # noqa: E402


def probe_accuracy(x, y, sets, weight_decay, steps=300):
    """Fit softmax regression on (x, y) with Adam + L2 -> accuracy on each (x, y) of sets."""
    torch.manual_seed(0)
    w = (0.01 * torch.randn(x.shape[1], 4)).requires_grad_()
    b = torch.zeros(4, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(x @ w + b, y) + weight_decay * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [float(((xs @ w + b).argmax(1) == ys).float().mean()) for xs, ys in sets]


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--encoder', default='smollm2', help="'smollm2' | 'minilm' | a hub id (model.sentence_encoder)")
    args = p.parse_args()
    enc, sides = sentence_encoder(args.encoder), list(B.SIDES)
    train = B.training_instructions()
    x, y = enc([t for t, _ in train]), torch.tensor([sides.index(s) for _, s in train])
    sets = [(enc(list(d)), torch.tensor([sides.index(s) for s in d.values()]))
            for d in (B.VAL_PARAPHRASES, B.TEST_PARAPHRASES)]
    std = x.std(0)
    std = std.clamp(min=0.1 * float(std.mean()))
    print(f"{'vectors':>13} {'weight decay':>12} {'val':>5} {'test':>5}")
    for name, f in [('raw', lambda v: v), ('standardized', lambda v: (v - x.mean(0)) / std)]:
        for wd in (1e-3, 1e-2):
            val, test = probe_accuracy(f(x), y, [(f(v), t) for v, t in sets], wd)
            print(f"{name:>13} {wd:>12g} {val:>5.2f} {test:>5.2f}")


if __name__ == '__main__':
    main()
