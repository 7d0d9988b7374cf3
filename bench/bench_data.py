"""
Dataloader throughput on a PushT-sized dataset (25k frames, 96x96 RGB, state 2, action 2, chunk 16),
written with dataset_writer.LeRobotDatasetWriter into a temp dir (images-in-parquet and mp4 variants), versus
what a training step consumes. Target: the loader is >= 5x faster than training, so training never waits.
The first open decodes every frame into the frame cache (data.FRAME_CACHE, here a temp folder); the second maps it in.

    python bench/bench_data.py                              # prints one table
    python bench/bench_data.py --frames=5000                # smaller/faster
    python bench/bench_data.py --save=bench/data_baseline.json
    python bench/bench_data.py --compare=bench/data_baseline.json
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import dataset_writer  # noqa: E402


def write_synthetic(root, frames, use_videos, episode_len=125, seed=0):
    """PushT-like episodes: a moving block on a smooth background (realistic PNG/h264 sizes)."""
    rng = np.random.default_rng(seed)
    feats = {"observation.image": {"dtype": "image", "shape": (96, 96, 3)},
             "observation.state": {"dtype": "float32", "shape": (2,), "names": None},
             "action": {"dtype": "float32", "shape": (2,), "names": None}}
    yy, xx = np.mgrid[0:96, 0:96]
    bg = np.stack([200 + 0 * xx, 200 + yy // 4, 210 - xx // 4], -1).astype(np.uint8)
    w = dataset_writer.LeRobotDatasetWriter(root, 10, feats, use_videos=use_videos)
    t0, done = time.perf_counter(), 0
    while done < frames:
        n = min(episode_len, frames - done)
        pos = np.cumsum(rng.normal(size=(n, 2)), 0) + 48
        for t in range(n):
            img = bg.copy()
            x, y = np.clip(pos[t].astype(int), 8, 88)
            img[y - 8:y + 8, x - 8:x + 8] = (90, 90, 200)
            w.add_frame({"observation.image": img, "observation.state": (pos[t] * 5).astype(np.float32),
                         "action": (pos[min(t + 1, n - 1)] * 5).astype(np.float32)}, "Push the T-shaped block onto the target")
        w.save_episode()
        done += n
    w.finalize()
    return time.perf_counter() - t0


def open_seconds(root):
    t0 = time.perf_counter()
    data.LeRobotDataset(root, camera_keys=["observation.image"])
    return time.perf_counter() - t0


def bench_loader(root, args, augment, num_workers):
    """samples/s over --batches batches after one warmup batch."""
    ds = data.ManipulationDataset(root, image_keys=["observation.image"], chunk_size=args.chunk)
    loader = data.create_dataloader(ds, args.batch_size, shuffle=True, num_workers=num_workers, seed=0)
    it = iter(loader)
    next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(args.batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        if augment:  # as train_bc.py does, on the batch
            batch["images"] = data.augment_batch(batch["images"])
        n += len(batch["instruction"])
    return n / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=25_000)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--num_workers", type=int, default=0, help="also benchmark this many loader workers if > 0")
    p.add_argument("--train_samples_per_s", type=float, default=64 / 0.11, help="what one training step consumes")
    p.add_argument("--save", default=None)
    p.add_argument("--compare", default=None)
    args = p.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        data.FRAME_CACHE = os.path.join(tmp, "frames")
        for video in [False, True]:
            root = os.path.join(tmp, "video" if video else "png")
            write_s = write_synthetic(root, args.frames, video)
            first_s, second_s = open_seconds(root), open_seconds(root)
            for augment in [False, True]:
                for workers in sorted({0, args.num_workers}):
                    name = f"{'mp4' if video else 'png'} aug={int(augment)} workers={workers}"
                    rows[name] = {"write_s": write_s, "first_open_s": first_s, "second_open_s": second_s,
                                  "samples_per_s": bench_loader(root, args, augment, workers)}
    base = json.load(open(args.compare)) if args.compare else {}
    print(f"{args.frames} frames 96x96, batch {args.batch_size}, chunk {args.chunk}; "
          f"training consumes {args.train_samples_per_s:.0f} samples/s (target loader >= 5x)")
    print(f"{'variant':<24} {'write s':>8} {'first open s':>13} {'second open s':>14} {'samples/s':>10} {'x train':>8}"
          + ("  vs baseline" if base else ""))
    for name, r in rows.items():
        line = (f"{name:<24} {r['write_s']:>8.1f} {r['first_open_s']:>13.2f} {r['second_open_s']:>14.2f} "
                f"{r['samples_per_s']:>10.0f} "
                f"{r['samples_per_s'] / args.train_samples_per_s:>7.1f}x")
        if name in base:
            line += f"  {r['samples_per_s'] / base[name]['samples_per_s']:.2f}x"
        print(line)
    if args.save:
        json.dump(rows, open(args.save, "w"), indent=2)
        print(f"saved {args.save}")


if __name__ == "__main__":
    main()
