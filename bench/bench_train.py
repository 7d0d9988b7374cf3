"""
Training throughput of the default PushT model per action head: samples/s of one optimizer
step (forward, backward, AdamW) on a synthetic batch, the way train_bc.py runs it.

    python bench/bench_train.py                          # prints one table
    python bench/bench_train.py --save=bench/train_baseline.json
    python bench/bench_train.py --compare=bench/train_baseline.json
    python bench/bench_train.py --heads=mlp --cnn_width=32 --vision_grid=4   # the wider vision encoder
    python bench/bench_train.py --heads=mlp --compile     # train_bc.py --compile=True (torch.compile, inductor)
    python bench/bench_train.py --heads=mlp --fused --bf16 --channels_last   # CPU speed-ups train_bc.py does not use
"""
import argparse
import contextlib
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_common  # noqa: E402
from model import ManipulationVLA, ManipulationVLAConfig  # noqa: E402

HEADS = ['mlp', 'gaussian', 'mixture', 'diffusion', 'flow', 'transformer']


def make_batch(cfg, batch_size):
    """A PushT-shaped batch in the model's batch convention (raw units, uint8 images)."""
    s = cfg.image_size
    return {
        'images': torch.randint(0, 256, (batch_size, cfg.num_cameras, 3, s, s), dtype=torch.uint8),
        'proprio': torch.rand(batch_size, cfg.proprioception_dim) * 512,
        'instruction': ['Push the T-shaped block onto the target'] * batch_size,
        'action': torch.rand(batch_size, cfg.action_chunk_size, cfg.action_dim) * 512,
        'action_is_pad': torch.zeros(batch_size, cfg.action_chunk_size, dtype=torch.bool),
    }


def bench_head(head, args):
    """Median seconds per optimizer step after warmup."""
    torch.manual_seed(0)
    cfg = ManipulationVLAConfig(action_head_type=head, proprioception_dim=2, action_dim=2,
                                action_chunk_size=args.chunk, image_size=96, num_cameras=1,
                                cnn_width=args.cnn_width, vision_grid=args.vision_grid)
    model = ManipulationVLA(cfg)
    stats = {'observation.state': {'mean': [256.0] * 2, 'std': [100.0] * 2, 'min': [0.0] * 2, 'max': [512.0] * 2},
             'action': {'mean': [256.0] * 2, 'std': [100.0] * 2, 'min': [0.0] * 2, 'max': [512.0] * 2}}
    model.set_normalization_stats(stats)
    if args.channels_last:  # NHWC activations for the CNN (oneDNN's preferred layout on some CPUs)
        model.vision.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=args.fused)
    autocast = torch.autocast('cpu', dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    batch = make_batch(cfg, args.batch_size)
    step_model = torch.compile(model) if args.compile else model  # compiled on the first (warmup) step
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        with autocast:
            loss = step_model(batch)['loss']
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    n_params = sum(p.numel() for p in model.parameters())
    return times[len(times) // 2], n_params


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--heads', default=','.join(HEADS))
    p.add_argument('--batch_size', type=int, default=64)
    p.add_argument('--chunk', type=int, default=16)
    p.add_argument('--cnn_width', type=int, default=16, help='the CNN\'s channels (w, w, 2w, 4w)')
    p.add_argument('--vision_grid', type=int, default=3, help='CNN features pooled to grid x grid tokens')
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--threads', type=int, default=torch.get_num_threads())
    p.add_argument('--compile', action='store_true', help='torch.compile the model, as train_bc.py --compile=True')
    p.add_argument('--fused', action='store_true', help='fused AdamW (one kernel for all parameters)')
    p.add_argument('--bf16', action='store_true', help='bf16 autocast of the forward pass on the CPU (AVX512-BF16)')
    p.add_argument('--channels_last', action='store_true', help='the CNN in channels-last memory format')
    p.add_argument('--glibc_default', action='store_true',
                   help="leave malloc as it is (train_bc.py on a CPU keeps freed memory: train_common.keep_freed_memory)")
    p.add_argument('--save', default='')
    p.add_argument('--compare', default='')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    kept = False if args.glibc_default else train_common.keep_freed_memory()  # as train_bc.py does on a CPU
    baseline = json.load(open(args.compare)) if args.compare else {}
    results = {}
    print(f"train step, batch {args.batch_size}, 96x96x1 camera, chunk {args.chunk}, cnn width {args.cnn_width}, "
          f"{args.vision_grid}x{args.vision_grid} token grid, {args.threads} threads"
          f"{', torch.compile' if args.compile else ''}{', fused AdamW' if args.fused else ''}"
          f"{', bf16 autocast' if args.bf16 else ''}{', channels-last CNN' if args.channels_last else ''}, "
          f"{'malloc keeps freed memory' if kept else 'default malloc'}")
    print(f"{'head':<12} {'params':>8} {'ms/step':>9} {'samples/s':>10}" + (f" {'baseline':>10} {'change':>8}" if baseline else ''))
    for head in args.heads.split(','):
        sec, n_params = bench_head(head, args)
        sps = args.batch_size / sec
        results[head] = sps
        line = f"{head:<12} {n_params / 1e6:>7.2f}M {sec * 1e3:>9.1f} {sps:>10.1f}"
        if head in baseline:
            line += f" {baseline[head]:>10.1f} {100 * (sps / baseline[head] - 1):>+7.1f}%"
        print(line)
    if args.save:
        json.dump(results, open(args.save, 'w'), indent=2)


if __name__ == '__main__':
    main()
