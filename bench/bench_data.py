"""
Dataloader throughput on a PushT-sized dataset (25k frames, 96x96 RGB, state 2, action 2, chunk 16),
written with dataset_writer.LeRobotDatasetWriter into a temp dir (images-in-parquet and mp4 variants), versus
what a training step consumes. Target: the loader is >= 5x faster than training, so training never waits.
The first open decodes every frame into the frame cache (data.FRAME_CACHE, here a temp folder); the second maps it in.

    python bench/bench_data.py                              # prints one table
    python bench/bench_data.py --frames=5000                # smaller/faster
    python bench/bench_data.py --save=bench/data_baseline.json
    python bench/bench_data.py --compare=bench/data_baseline.json

--libero: a dataset of LIBERO's shape instead (issue 38): 100k frames, two 256x256 cameras as AV1 mp4 (as
lerobot writes them), state 8, action 7, 10 fps, ~160-frame episodes. Each opener runs in a process of its own
(its peak RSS is its own): ours decodes once into the frame cache at the training size (96x96), the second open
maps it in; LeRobot 0.4.4's LeRobotDataset (its own venv, video_backend='pyav') decodes 256x256 frames per sample,
resized to 96x96 here as a training transform would. Targets: second open < 5 s, peak RSS < 4 GiB, samples/s
>= 50x LeRobot's.

    python bench/bench_data.py --libero --lerobot_python=/path/to/lerobot_venv/bin/python --dir=/big/disk/libero_bench
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from tqdm import tqdm

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


LIBERO_KEYS = ["observation.images.image", "observation.images.image2"]


def write_libero_like(root, frames, episode_len=160, seed=0):
    """LIBERO-shaped episodes: two 256x256 cameras (a textured scene per episode with two moving objects, seen
    from two viewpoints), state 8, action 7, 10 fps, 40 task texts; AV1 like the hub's. -> seconds."""
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its settings for every file otherwise
    rng = np.random.default_rng(seed)
    cam = {"dtype": "video", "shape": (256, 256, 3), "names": ["height", "width", "channels"]}
    feats = {k: cam for k in LIBERO_KEYS} | {"observation.state": {"dtype": "float32", "shape": (8,), "names": None},
                                             "action": {"dtype": "float32", "shape": (7,), "names": None}}
    w = dataset_writer.LeRobotDatasetWriter(root, 10, feats, use_videos=True, vcodec="av1")
    t0, done, e = time.perf_counter(), 0, 0
    with tqdm(total=frames, desc="writing LIBERO-like frames", unit="frame") as bar:
        while done < frames:
            n = min(episode_len, frames - done)
            texture = np.kron(rng.integers(90, 230, size=(32, 32, 3)), np.ones((8, 8, 1))).astype(np.uint8)
            path = np.cumsum(rng.normal(scale=2.0, size=(n, 2, 2)), 0) + rng.uniform(60, 190, size=(1, 2, 2))
            state = np.cumsum(rng.normal(scale=0.01, size=(n, 8)), 0).astype(np.float32)
            for t in range(n):
                views = []
                for v in range(2):  # the second view: the scene flipped, as a second camera would see it
                    img = texture.copy() if v == 0 else texture[::-1].copy()
                    for (x, y), color in zip(np.clip(path[t], 16, 240).astype(int), [(200, 40, 40), (40, 40, 200)]):
                        img[y - 12:y + 12, x - 12:x + 12] = color
                    views.append(img)
                w.add_frame({LIBERO_KEYS[0]: views[0], LIBERO_KEYS[1]: views[1], "observation.state": state[t],
                             "action": np.r_[state[min(t + 1, n - 1), :6] - state[t, :6], 1.0].astype(np.float32)},
                            f"libero task {e % 40}")
            w.save_episode()
            done, e = done + n, e + 1
            bar.update(n)
    w.finalize()
    return time.perf_counter() - t0


def ours_open_and_read(root, batches, batch_size, chunk):
    """One process: open (decoding into the frame cache on the first call), then random batches as training draws
    them. -> dict of seconds, samples/s and this process's peak RSS."""
    t0 = time.perf_counter()
    ds = data.ManipulationDataset(root, image_keys=LIBERO_KEYS, chunk_size=chunk, image_size=96)
    open_s = time.perf_counter() - t0
    rng, n = np.random.default_rng(0), 0
    ds.get_batch(rng.integers(0, len(ds), batch_size))
    t0 = time.perf_counter()
    for _ in range(batches):
        n += len(ds.get_batch(rng.integers(0, len(ds), batch_size))["images"])
    return {"open_s": open_s, "samples_per_s": n / (time.perf_counter() - t0), "peak_rss_gib": peak_rss_gib()}


def peak_rss_gib():
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries that across exec, so a
    worker would report its parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**20  # kB


def run_worker(cmd, env=None):
    """A benchmark step in its own process -> the JSON line it prints last."""
    import subprocess
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def bench_libero(args):
    """The LIBERO-sized table: write once (kept in --dir), then each opener in its own process."""
    root = os.path.join(args.dir, "libero_like")
    if not os.path.exists(os.path.join(root, "meta", "info.json")):
        write_s = write_libero_like(root, args.frames)
        print(f"wrote {args.frames} frames x 2 cameras in {write_s:.0f} s")
    import shutil
    cache, hf_cache = os.path.join(args.dir, "frames"), os.path.join(args.dir, "hf_datasets")
    for d in (cache, hf_cache):  # each first open must start from nothing: our frame cache, lerobot's arrow cache
        shutil.rmtree(d, ignore_errors=True)
    env = dict(os.environ, NANOVLA_FRAME_CACHE=cache, OMP_NUM_THREADS="2")
    me = [sys.executable, os.path.abspath(__file__), "--_worker", root, f"--batches={args.batches}",
          f"--batch_size={args.batch_size}", f"--chunk={args.chunk}"]
    rows = {"nanoVLA, first open (decodes)": run_worker(me, env), "nanoVLA, second open": run_worker(me, env)}
    if args.lerobot_python:
        reader = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lerobot_reader.py")
        for label in ("LeRobot 0.4.4, first open", "LeRobot 0.4.4, second open"):
            rows[label] = run_worker([args.lerobot_python, reader, root, f"--samples={args.lerobot_samples}",
                                      f"--chunk={args.chunk}", "--fps=10"],
                                     dict(os.environ, HF_DATASETS_CACHE=hf_cache, OMP_NUM_THREADS="2"))
    lerobot = rows.get("LeRobot 0.4.4, second open", {}).get("samples_per_s")
    print(f"{args.frames} frames, 2 cameras 256x256 AV1 -> 96x96, chunk {args.chunk}, random samples "
          f"(targets: second open < 5 s, peak RSS < 4 GiB, >= 50x LeRobot's samples/s)")
    print(f"{'loader':<32} {'open s':>8} {'peak RSS GiB':>13} {'samples/s':>10}" + ("  x LeRobot" if lerobot else ""))
    for name, r in rows.items():
        print(f"{name:<32} {r['open_s']:>8.2f} {r['peak_rss_gib']:>13.2f} {r['samples_per_s']:>10.1f}"
              + (f"  {r['samples_per_s'] / lerobot:>9.0f}x" if lerobot else ""))
    if args.save:
        json.dump(rows, open(args.save, "w"), indent=2)
        print(f"saved {args.save}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=None, help="default 25000, with --libero 100000")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--chunk", type=int, default=None, help="actions per sample: default 16, with --libero 10")
    p.add_argument("--batches", type=int, default=100)
    p.add_argument("--num_workers", type=int, default=0, help="also benchmark this many loader workers if > 0")
    p.add_argument("--train_samples_per_s", type=float, default=64 / 0.11, help="what one training step consumes")
    p.add_argument("--save", default=None)
    p.add_argument("--compare", default=None)
    p.add_argument("--libero", action="store_true", help="the LIBERO-sized benchmark (100k frames unless --frames)")
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "nanovla_libero_bench"),
                   help="--libero: where the dataset (kept for the next run) and its frame cache go")
    p.add_argument("--lerobot_python", default="", help="--libero: python of a venv with lerobot 0.4.4")
    p.add_argument("--lerobot_samples", type=int, default=200)
    p.add_argument("--_worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._worker:
        print(json.dumps(ours_open_and_read(args._worker, args.batches, args.batch_size, args.chunk)))
        return
    args.frames = args.frames or (100_000 if args.libero else 25_000)
    args.chunk = args.chunk or (10 if args.libero else 16)
    if args.libero:
        return bench_libero(args)
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
