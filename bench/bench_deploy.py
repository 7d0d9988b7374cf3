"""
Per-step latency of the exported policy at batch 1 on CPU, per action head: what one control step
of `deploy.py run` costs (the default PushT model: 96x96 camera + agent position, chunk 16).
Targets on a 2-core CPU: p99 <= 5 ms for MLP/Gaussian, <= 20 ms for 10-step diffusion/flow.

    python bench/bench_deploy.py                          # prints one table
    python bench/bench_deploy.py --save=bench/deploy_baseline.json
    python bench/bench_deploy.py --compare=bench/deploy_baseline.json
    python bench/bench_deploy.py --heads=mlp --text_encoder=smollm2     # a pretrained LM: its features are computed
    python bench/bench_deploy.py --heads=mlp --vision_encoder=efficientnet-lite0   # at export, once
"""
import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from deploy import StepPolicy, example_inputs, export_policy, load_exported  # noqa: E402
from model import ManipulationVLA, ManipulationVLAConfig  # noqa: E402

HEADS = ['mlp', 'gaussian', 'mixture', 'diffusion', 'flow', 'transformer']
TARGET_P99_MS = {'mlp': 5, 'gaussian': 5, 'mixture': 5, 'diffusion': 20, 'flow': 20, 'transformer': None}
STATS = {'observation.state': {'mean': [256.0] * 2, 'std': [100.0] * 2},
         'action': {'min': [0.0] * 2, 'max': [512.0] * 2}}


def latencies_ms(fn, inputs, steps, warmup):
    out = []
    with torch.no_grad():
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            fn(*inputs)
            if i >= warmup:
                out.append((time.perf_counter() - t0) * 1e3)
    return np.array(out)


def bench_head(head, args, tmp):
    """-> (eager p50, eager p99, exported p50, exported p99) in ms."""
    torch.manual_seed(0)
    cfg = ManipulationVLAConfig(action_head_type=head, proprioception_dim=2, action_dim=2,
                                action_chunk_size=args.chunk, diffusion_inference_steps=10, flow_steps=10,
                                text_encoder=args.text_encoder, vision_encoder=args.vision_encoder)
    model = ManipulationVLA(cfg)
    model.set_normalization_stats(STATS)
    model.eval()
    path = export_policy(model, 'push the T-shaped block onto the T-shaped target', os.path.join(tmp, f'{head}.pt'),
                         {'task': 'pusht'})
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)  # torch.jit.load's deprecation notice, once per head
        module, _ = load_exported(path)
    inputs = example_inputs(model)
    eager = latencies_ms(StepPolicy(model, 'push the T-shaped block onto the T-shaped target'), inputs, args.steps,
                         args.warmup)
    exported = latencies_ms(module, inputs, args.steps, args.warmup)
    return [float(np.percentile(x, q)) for x in (eager, exported) for q in (50, 99)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--heads', default=','.join(HEADS))
    p.add_argument('--chunk', type=int, default=16)
    p.add_argument('--steps', type=int, default=200)
    p.add_argument('--warmup', type=int, default=10)
    p.add_argument('--text_encoder', default='', help="a frozen pretrained text encoder, e.g. 'smollm2'")
    p.add_argument('--vision_encoder', default='cnn', help="e.g. 'efficientnet-lite0'")
    p.add_argument('--threads', type=int, default=1)  # deploy.py's default: batch 1 gains little from more
    p.add_argument('--save', default='')
    p.add_argument('--compare', default='')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    baseline = json.load(open(args.compare)) if args.compare else {}
    results = {}
    print(f"policy step at batch 1, 96x96x1 camera, chunk {args.chunk}, {args.threads} threads, {args.steps} steps, "
          f"vision {args.vision_encoder}, text encoder {args.text_encoder or 'none (byte-level LM)'}")
    print(f"{'head':<12} {'eager p50':>10} {'eager p99':>10} {'export p50':>11} {'export p99':>11} {'target p99':>11}"
          + (f" {'base p99':>9} {'change':>8}" if baseline else ''))
    with tempfile.TemporaryDirectory() as tmp:
        for head in args.heads.split(','):
            e50, e99, x50, x99 = bench_head(head, args, tmp)
            results[head] = x99
            target = TARGET_P99_MS[head]
            line = (f"{head:<12} {e50:>9.2f}ms {e99:>9.2f}ms {x50:>10.2f}ms {x99:>10.2f}ms "
                    f"{(f'<= {target} ms' if target else '-'):>11}")
            if head in baseline:
                line += f" {baseline[head]:>7.2f}ms {100 * (x99 / baseline[head] - 1):>+7.1f}%"
            print(line)
    if args.save:
        json.dump(results, open(args.save, 'w'), indent=2)


if __name__ == '__main__':
    main()
