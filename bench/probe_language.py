"""
Is the side in a frozen text encoder's sentence vector, linearly? A logistic-regression probe trained on the 24
training instructions of bench_language.py (their side as the label), read on its validation and test paraphrases:
an upper bound on what a linear map from that vector (the policy's text_proj) can carry to new words, without
the policy's other inputs. Vectors raw (unit length, as the policy reads them) or standardized per dimension over
the 24 (std floored at a tenth of its mean). Also the nearest trained instruction's side (cosine), the map that
needs no fitting. For a causal LM, --prompts tries other sentence prompts than PromptEOL (model.SentenceEncoder),
and the LM's own next word among the four side words is read too (meaningful for prompts that ask for the side).

    python bench/probe_language.py --encoder=smollm2
    python bench/probe_language.py --encoder=smollm2 --prompts=eol,openvla,where,side
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench_language as B  # noqa: E402
from model import SentenceEncoder, sentence_encoder  # noqa: E402


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


def nearest_accuracy(x, y, sets):
    """The side of the nearest of the 24 by cosine -> accuracy on each (x, y) of sets."""
    x = F.normalize(x, dim=-1)
    return [float((y[(F.normalize(xs, dim=-1) @ x.T).argmax(1)] == ys).float().mean()) for xs, ys in sets]


def answer_accuracy(enc, sets, sides):
    """A causal LM's own answer: its next word after the prompt, among the four side words (its output embeddings
    are its input embeddings, tied), read from the last state: what the LM knows under that prompt, with no
    fitting -> accuracy on each (x, y) of sets."""
    words = enc.model.get_input_embeddings().weight[[enc.tokenizer(' ' + s)['input_ids'][0] for s in sides]]
    return [float(((xs @ words.T).argmax(1) == ys).float().mean()) for xs, ys in sets]


# sentence prompts for a causal LM: its last state after the prompt is the vector. eol = PromptEOL (Jiang et al.
# 2023), the encoder's own; openvla = OpenVLA's policy prompt (Kim et al. 2024); where = a question about the goal
PROMPTS = {'eol': SentenceEncoder.prompt,
           'openvla': 'In: What action should the robot take to {}?\nOut:',
           'where': 'A robot is told: "{}". In one word, where should it move? Answer: "',
           'side': B.SIDE_PROMPT}  # few-shot: four training instructions with their side (bench_language.py)


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--encoder', default='smollm2', help="'smollm2' | 'minilm' | a hub id (model.sentence_encoder)")
    p.add_argument('--prompts', default='eol', help=f"causal LMs only: comma-separated names of {list(PROMPTS)}")
    args = p.parse_args()
    enc, sides = sentence_encoder(args.encoder), list(B.SIDES)
    prompts = args.prompts.split(',')
    if unknown := [n for n in prompts if n not in PROMPTS]:
        p.error(f"--prompts: unknown {unknown}; choose from {list(PROMPTS)}")
    if not enc.causal and prompts != ['eol']:
        p.error(f"--prompts applies to causal LMs; {args.encoder} is an encoder (mean of its token states, no prompt)")
    print(f"{'prompt':>8} {'vectors':>13} {'map':>22} {'val':>5} {'test':>5}")
    for prompt in prompts:
        text = PROMPTS[prompt] if enc.causal else ''
        train = B.training_instructions()
        x, y = enc([t for t, _ in train], text), torch.tensor([sides.index(s) for _, s in train])
        sets = [(enc(list(d), text), torch.tensor([sides.index(s) for s in d.values()]))
                for d in (B.VAL_PARAPHRASES, B.TEST_PARAPHRASES)]
        std = x.std(0)
        std = std.clamp(min=0.1 * float(std.mean()))
        for name, f in [('raw', lambda v: v), ('standardized', lambda v: (v - x.mean(0)) / std)]:
            fx, fsets = f(x), [(f(v), t) for v, t in sets]
            rows = [('nearest (cosine)', nearest_accuracy(fx, y, fsets))]
            rows += [(f'probe, decay {wd:g}', probe_accuracy(fx, y, fsets, wd)) for wd in (1e-3, 1e-2)]
            if enc.causal and name == 'raw':
                rows.append(('the LM\'s next word', answer_accuracy(enc, sets, sides)))
            for map_name, (val, test) in rows:
                print(f"{prompt if enc.causal else '-':>8} {name:>13} {map_name:>22} {val:>5.2f} {test:>5.2f}")


if __name__ == '__main__':
    main()
