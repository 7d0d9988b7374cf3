"""
The LeRobot side of `bench_data.py --libero`; runs inside a venv with lerobot 0.4.4 (it cannot share one with
transformers 5). Opens a LeRobot v3.0 dataset with LeRobot's own LeRobotDataset (video_backend='pyav'), reads
random samples with a chunk of future actions, resizes each camera to 96x96 as a training transform would, and
prints one JSON line: open seconds, samples/s, this process's peak RSS.

    /path/to/lerobot_venv/bin/python bench/lerobot_reader.py DATASET_ROOT --samples=200 --chunk=10 --fps=10
"""
import argparse
import json
import time

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

p = argparse.ArgumentParser()
p.add_argument("root")
p.add_argument("--samples", type=int, default=200)
p.add_argument("--chunk", type=int, default=10)
p.add_argument("--fps", type=int, default=10)
args = p.parse_args()

t0 = time.perf_counter()
ds = LeRobotDataset("bench/libero_like", root=args.root, video_backend="pyav",
                    delta_timestamps={"action": [i / args.fps for i in range(args.chunk)]})
open_s = time.perf_counter() - t0
cams = ds.meta.camera_keys
rng = np.random.default_rng(0)


def sample(i):
    item = ds[int(i)]
    return [torch.nn.functional.interpolate(item[k][None], size=(96, 96), mode="bilinear", antialias=True)
            for k in cams]


sample(rng.integers(len(ds)))  # warm-up: the first decoder opens its file
t0 = time.perf_counter()
for i in rng.integers(0, len(ds), args.samples):
    sample(i)
samples_per_s = args.samples / (time.perf_counter() - t0)
with open("/proc/self/status") as f:  # VmHWM, this process's own peak (ru_maxrss carries the parent's across exec)
    peak_gib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20
print(json.dumps({"open_s": open_s, "samples_per_s": samples_per_s, "peak_rss_gib": peak_gib}))
