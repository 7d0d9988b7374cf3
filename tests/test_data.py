"""Tests for data.py and dataset_writer.py: LeRobot v3.0 write/read round trips, v2.1 reading, the real so101 dataset,
the hub path, every documented bad-input error, and the model-facing ManipulationDataset."""
import json
import os
import shutil
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import dataset_writer  # noqa: E402

SO101 = Path(__file__).resolve().parents[1] / "../shared/datasets/so101_record_test_v30"
H, W, FPS, TASKS = 16, 24, 10, ["push the T", "stack the cubes"]
LENGTHS = [6, 9, 5]
FEATURES = {
    "observation.image": {"dtype": "image", "shape": (H, W, 3), "names": ["height", "width", "channels"]},
    "observation.state": {"dtype": "float32", "shape": (3,), "names": None},
    "action": {"dtype": "float32", "shape": (2,), "names": None},
}


def make_episodes(seed=0, lengths=LENGTHS):
    """Smooth synthetic images (video codecs keep them nearly exact) + random state/action."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    eps = []
    for e, n in enumerate(lengths):
        frames = []
        for t in range(n):
            base = np.stack([xx * 8 + 10 * t, yy * 10 + 20 * e, np.full_like(xx, 60 + 5 * t)], -1)
            frames.append({"observation.image": np.clip(base, 0, 255).astype(np.uint8),
                           "observation.state": rng.normal(size=3).astype(np.float32),
                           "action": rng.normal(size=2).astype(np.float32) * 10})
        eps.append((frames, TASKS[e % 2]))
    return eps


def write(root, episodes, use_videos=False):
    w = dataset_writer.LeRobotDatasetWriter(root, FPS, FEATURES, robot_type="sim", use_videos=use_videos)
    for frames, task in episodes:
        for f in frames:
            w.add_frame(f, task)
        w.save_episode()
    w.finalize()
    return Path(root)


@pytest.fixture(scope="module")
def episodes():
    return make_episodes()


@pytest.fixture(scope="module")
def png_root(tmp_path_factory, episodes):
    return write(tmp_path_factory.mktemp("png") / "ds", episodes)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory, episodes):
    return write(tmp_path_factory.mktemp("vid") / "ds", episodes, use_videos=True)


def stacked(episodes, key):
    return np.stack([f[key] for frames, _ in episodes for f in frames])


# ----------------------------------------------------------------------------- v3.0 round trip


def test_v30_layout_on_disk(png_root):
    info = json.loads((png_root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS and info["robot_type"] == "sim"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, sum(LENGTHS), 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert set(info["features"]) == set(FEATURES) | set(data.DEFAULT_FEATURES)
    eps = pq.read_table(png_root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in eps] == LENGTHS
    assert [e["dataset_from_index"] for e in eps] == [0, 6, 15] and eps[-1]["dataset_to_index"] == 20
    assert eps[1]["tasks"] == [TASKS[1]] and eps[0]["data/file_index"] == 0
    tasks = pq.read_table(png_root / "meta/tasks.parquet")
    assert tasks.column("__index_level_0__").to_pylist() == TASKS  # pandas index = task string, as lerobot reads it
    assert b"pandas" in tasks.schema.metadata
    table = pq.read_table(png_root / "data/chunk-000/file-000.parquet")
    assert table.schema.field("observation.image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    assert table.num_rows == 20 and table.column("index").to_pylist() == list(range(20))


def test_png_round_trip_exact(png_root, episodes):
    ds = data.LeRobotDataset(png_root)
    assert len(ds) == sum(LENGTHS) and ds.meta.total_episodes == 3 and ds.fps == FPS
    np.testing.assert_array_equal(ds.frames["observation.image"], stacked(episodes, "observation.image"))
    np.testing.assert_array_equal(ds.columns["action"], stacked(episodes, "action"))
    item = ds[7]  # episode 1, frame 1
    assert item["observation.image"].shape == (3, H, W) and item["observation.image"].dtype == torch.float32
    torch.testing.assert_close(item["observation.image"],
                               torch.from_numpy(episodes[1][0][1]["observation.image"]).permute(2, 0, 1) / 255.0)
    assert item["task"] == TASKS[1] and int(item["episode_index"]) == 1 and int(item["frame_index"]) == 1
    assert float(item["timestamp"]) == pytest.approx(0.1)


def test_stats_match_independent_computation(png_root, episodes):
    stats = data.LeRobotDataset(png_root).meta.stats
    img = stacked(episodes, "observation.image").astype(np.float64) / 255.0  # (N, H, W, 3)
    np.testing.assert_allclose(stats["observation.image"]["mean"], img.mean((0, 1, 2)).reshape(3, 1, 1), rtol=1e-9)
    np.testing.assert_allclose(stats["observation.image"]["std"], img.std((0, 1, 2)).reshape(3, 1, 1), rtol=1e-9)
    np.testing.assert_allclose(stats["observation.image"]["max"], img.max((0, 1, 2)).reshape(3, 1, 1))
    for key in ["observation.state", "action"]:
        x = stacked(episodes, key).astype(np.float64)
        np.testing.assert_allclose(stats[key]["mean"], x.mean(0), rtol=1e-6)
        np.testing.assert_allclose(stats[key]["std"], x.std(0), rtol=1e-6)
        np.testing.assert_allclose(stats[key]["min"], x.min(0))
        np.testing.assert_allclose(stats[key]["max"], x.max(0))
        assert int(stats[key]["count"][0]) == len(x)


def test_delta_timestamps_padding_both_ends(png_root, episodes):
    ds = data.LeRobotDataset(png_root, delta_timestamps={"observation.image": [-0.1, 0.0], "action": [0, 0.1, 0.2, 0.3]})
    first = ds[6]  # first frame of episode 1: the past image is clamped to frame 0 and flagged
    assert first["observation.image"].shape == (2, 3, H, W)
    assert first["observation.image_is_pad"].tolist() == [True, False]
    torch.testing.assert_close(first["observation.image"][0], first["observation.image"][1])
    last = ds[13]  # second-to-last frame of episode 1 (length 9): actions 14, 14, 14, 14 after clamping
    assert last["action_is_pad"].tolist() == [False, False, True, True]
    acts = np.stack([f["action"] for f in episodes[1][0]])
    np.testing.assert_array_equal(last["action"].numpy(), acts[[7, 8, 8, 8]])


def test_video_round_trip_close(video_root, episodes):
    info = json.loads((video_root / "meta/info.json").read_text())
    assert info["features"]["observation.image"]["dtype"] == "video"
    assert (video_root / "videos/observation.image/chunk-000/file-000.mp4").exists()
    eps = pq.read_table(video_root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["videos/observation.image/from_timestamp"] for e in eps] == pytest.approx([0.0, 0.6, 1.5])
    ds = data.LeRobotDataset(video_root, delta_timestamps={"observation.image": [-0.1, 0.0]})
    err = np.abs(ds.frames["observation.image"].astype(int) - stacked(episodes, "observation.image").astype(int))
    assert err.mean() < 5 and err.max() < 40, (err.mean(), err.max())  # lossy yuv420p (chroma at half resolution)
    src = stacked(episodes, "observation.image").astype(float)
    dist = np.abs(ds.frames["observation.image"][:, None].astype(float) - src[None]).mean((2, 3, 4))  # (N, N)
    assert (dist.argmin(1) == np.arange(len(src))).all()  # each decoded frame is closest to its own source frame
    assert ds[6]["observation.image_is_pad"].tolist() == [True, False]


def test_frame_cache_is_reused_rebuilt_when_stale_and_never_read_partial(tmp_path, video_root, monkeypatch):
    """The first open decodes into the cache; the next maps it in without decoding; a cache cut short, one whose
    mark of completion is missing, or one whose source video changed is decoded again, never used."""
    cache, decoded = tmp_path / "cache", []
    real = data._decode_video_into
    monkeypatch.setattr(data, "_decode_video_into", lambda path, *a, **k: decoded.append(path) or real(path, *a, **k))
    fresh = data.LeRobotDataset(video_root, cache_dir="").frames["observation.image"]
    assert len(decoded) == 1 and not cache.exists()

    def frames():
        return data.LeRobotDataset(video_root, cache_dir=str(cache)).frames["observation.image"]

    np.testing.assert_array_equal(frames(), fresh)
    entry, = cache.glob("*.npy")
    assert len(decoded) == 2 and sorted(p.name for p in cache.iterdir()) == sorted([entry.name, entry.stem + ".json"])
    cached = frames()
    assert len(decoded) == 2 and isinstance(cached, np.memmap)  # mapped in, not decoded
    np.testing.assert_array_equal(cached, fresh)
    del cached
    with open(entry, "r+b") as f:  # a crash mid-write: the file is shorter than its header says
        f.truncate(entry.stat().st_size - 100)
    np.testing.assert_array_equal(frames(), fresh)
    assert len(decoded) == 3
    entry.with_suffix(".json").unlink()  # the frames were written but not marked whole
    np.testing.assert_array_equal(frames(), fresh)
    assert len(decoded) == 4 and entry.with_suffix(".json").exists()
    video = video_root / "videos/observation.image/chunk-000/file-000.mp4"
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))  # the video was replaced
    np.testing.assert_array_equal(frames(), fresh)
    assert len(decoded) == 5 and len(list(cache.glob("*.npy"))) == 2  # a new entry; the old one is never read
    assert not list(cache.glob("*tmp*"))


def test_frame_cache_of_embedded_images_and_episode_subsets(tmp_path, png_root, episodes):
    cache = str(tmp_path / "cache")
    whole = data.LeRobotDataset(png_root, cache_dir=cache).frames["observation.image"]
    part = data.LeRobotDataset(png_root, episodes=[2], cache_dir=cache).frames["observation.image"]
    np.testing.assert_array_equal(whole, stacked(episodes, "observation.image"))
    np.testing.assert_array_equal(part, stacked(episodes[2:], "observation.image"))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # the episodes read are part of the key
    np.testing.assert_array_equal(data.LeRobotDataset(png_root, cache_dir=cache).frames["observation.image"], whole)


def test_frames_resized_while_decoding_match_resize_images_and_have_their_own_cache(tmp_path, png_root, video_root):
    """image_size resizes each camera while it decodes (an int: the height, the width keeps the aspect), exactly as
    the policy's live frames are resized; the small frames get their own cache entry; another aspect is refused."""
    cache = str(tmp_path / "cache")
    for root in (png_root, video_root):
        full = data.LeRobotDataset(root, cache_dir="").frames["observation.image"]
        want = data.resize_images(torch.from_numpy(np.asarray(full)).permute(0, 3, 1, 2), (8, 12)).permute(0, 2, 3, 1)
        small = data.LeRobotDataset(root, cache_dir=cache, image_size=8).frames["observation.image"]
        assert small.shape == (len(full), 8, 12, 3)
        np.testing.assert_array_equal(small, want.numpy())
        again = data.LeRobotDataset(root, cache_dir=cache, image_size=(8, 12)).frames["observation.image"]
        assert isinstance(again, np.memmap)  # the int and the (H, W) of one size share the entry
        np.testing.assert_array_equal(again, small)
        md = data.ManipulationDataset(root, image_keys=["observation.image"], chunk_size=2, image_size=8)
        assert md.get_batch([0, 1])["images"].shape == (2, 1, 3, 8, 12)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # one per dataset; full size never cached here
    with pytest.raises(ValueError, match="aspect ratio"):
        data.LeRobotDataset(png_root, cache_dir=cache, image_size=(8, 8))
    with pytest.raises(ValueError, match="must be positive"):
        data.LeRobotDataset(png_root, cache_dir=cache, image_size=-8)


def test_a_crop_is_cut_while_decoding_as_live_frames_are_cut_and_has_its_own_cache(tmp_path, png_root, video_root):
    """image_crop (top, left, height, width in fractions of the frame) is cut before the resize, while decoding, to
    exactly what frame_to_model_input makes of the same frame at run time; a crop gets its own cache entry; a box
    that leaves the frame is refused."""
    cache, crop = str(tmp_path / "cache"), (0.25, 0.5, 0.5, 0.5)  # rows 4..11 and columns 12..23 of 16x24
    assert data.crop_box((H, W), crop) == (4, 12, 8, 12) and data.crop_box((H, W), ()) == (0, 0, H, W)
    for root in (png_root, video_root):
        full = data.LeRobotDataset(root, cache_dir="").frames["observation.image"]
        cut = data.LeRobotDataset(root, cache_dir=cache, image_crop=crop).frames["observation.image"]
        np.testing.assert_array_equal(cut, full[:, 4:12, 12:24])
        small = data.LeRobotDataset(root, cache_dir=cache, image_crop=crop, image_size=4).frames["observation.image"]
        live = [data.frame_to_model_input({"observation.image": f}, ["observation.image"], None, (4, 6), crop)
                for f in full[:5]]
        np.testing.assert_array_equal(small[:5], torch.stack([x["images"][0] for x in live]).permute(0, 2, 3, 1))
        assert isinstance(data.LeRobotDataset(root, cache_dir=cache, image_crop=crop).frames["observation.image"],
                          np.memmap)  # the second open maps the cropped entry in
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4  # 2 datasets x (crop, crop + resize)
    for bad in [(0.5, 0, 0.6, 1), (0, 0, 0, 1), (0, 0, 1)]:
        with pytest.raises(ValueError, match="fractions of the frame"):
            data.LeRobotDataset(png_root, cache_dir="", image_crop=bad)
    with pytest.raises(ValueError, match="after image_crop"):
        data.LeRobotDataset(png_root, cache_dir="", image_crop=crop, image_size=(4, 4))


def test_append_episodes_for_dagger(tmp_path, episodes):
    root = write(tmp_path / "ds", episodes[:2])
    more = make_episodes(seed=1, lengths=[4, 3])
    write(root, more)  # same root: opens the existing dataset and appends
    ds = data.LeRobotDataset(root)
    assert ds.meta.total_episodes == 4 and len(ds) == 6 + 9 + 4 + 3
    assert (root / "data/chunk-000/file-001.parquet").exists()
    assert (root / "meta/episodes/chunk-000/file-001.parquet").exists()
    all_eps = episodes[:2] + more
    np.testing.assert_array_equal(ds.frames["observation.image"], stacked(all_eps, "observation.image"))
    np.testing.assert_allclose(ds.meta.stats["action"]["std"], stacked(all_eps, "action").std(0), rtol=1e-6)
    assert ds.columns["index"].tolist() == list(range(len(ds)))
    with pytest.raises(ValueError, match="cannot append"):
        dataset_writer.LeRobotDatasetWriter(root, FPS + 1, FEATURES)


def test_append_to_a_video_dataset_keeps_videos(tmp_path, episodes):
    """DAgger opens the writer with the dataset's own features (video dtype) and no use_videos: the new
    episodes must go to mp4 like the old ones, not turn the cameras into PNG columns (issue 18)."""
    root = write(tmp_path / "ds", episodes[:1], use_videos=True)
    meta = data.LeRobotDatasetMetadata(root)
    w = dataset_writer.LeRobotDatasetWriter(root, fps=meta.fps, features=meta.features)
    more = make_episodes(seed=2, lengths=[4])
    for f in more[0][0]:
        w.add_frame(f, more[0][1])
    w.save_episode()
    w.finalize()
    ds = data.LeRobotDataset(root)
    assert ds.meta.total_episodes == 2 and ds.meta.features["observation.image"]["dtype"] == "video"
    assert len(list((root / "videos").rglob("*.mp4"))) == 2
    src = stacked(episodes[:1] + more, "observation.image").astype(np.float32)
    err = np.abs(ds.frames["observation.image"].astype(np.float32) - src).mean()
    assert err < 6.0, err  # lossy video, but every frame decoded near its source


def test_episode_subset(png_root, episodes):
    ds = data.LeRobotDataset(png_root, episodes=[0, 2], delta_timestamps={"action": [0, 0.1]})
    assert len(ds) == 6 + 5 and set(ds.columns["episode_index"]) == {0, 2}
    assert ds[5]["action_is_pad"].tolist() == [False, True]  # last frame of ep 0 does not run into ep 2
    with pytest.raises(ValueError, match=r"episodes \[7\] are not in .*, whose episodes are \[0, 1, 2\]"):
        data.LeRobotDataset(png_root, episodes=[0, 7])


# ----------------------------------------------------------------------------- v2.1 written by hand


def write_v21(root, episodes, first=0):
    """A v2.1 dataset the way lerobot <=0.3 wrote it: one parquet + one mp4 per episode, JSON-lines meta;
    its episode indices start at `first`."""
    root = Path(root)
    feats = {k: dict(v, shape=list(v["shape"])) for k, v in FEATURES.items()} | data.DEFAULT_FEATURES
    feats["observation.cam2"] = {"dtype": "video", "shape": [H, W, 3], "names": ["height", "width", "channels"]}
    info = {"codebase_version": "v2.1", "robot_type": "sim", "total_episodes": len(episodes), "fps": FPS,
            "total_frames": sum(len(f) for f, _ in episodes), "total_tasks": 2, "chunks_size": 1000, "features": feats,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"}
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text("\n".join(json.dumps({"task_index": i, "task": t}) for i, t in enumerate(TASKS)))
    eps_lines, stats_lines, start = [], [], 0
    for e, (frames, task) in enumerate(episodes, start=first):
        n = len(frames)
        imgs = [dataset_writer._encode_png(f["observation.image"]) for f in frames]
        table = pa.table({
            "observation.image": pa.array([{"bytes": b, "path": f"frame_{i}.png"} for i, b in enumerate(imgs)]),
            "observation.state": [f["observation.state"].tolist() for f in frames],
            "action": [f["action"].tolist() for f in frames],
            "timestamp": pa.array(np.arange(n, dtype=np.float32) / FPS), "frame_index": np.arange(n),
            "episode_index": np.full(n, e), "index": np.arange(start, start + n), "task_index": np.full(n, TASKS.index(task))})
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"data/chunk-000/episode_{e:06d}.parquet")
        vpath = root / f"videos/chunk-000/observation.cam2/episode_{e:06d}.mp4"
        vpath.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(vpath), "w") as c:
            s = c.add_stream("libx264", rate=FPS, options={"crf": "10"})
            s.width, s.height, s.pix_fmt = W, H, "yuv420p"
            for f in frames:
                c.mux(s.encode(av.VideoFrame.from_ndarray(255 - f["observation.image"], format="rgb24")))
            c.mux(s.encode())
        eps_lines.append(json.dumps({"episode_index": e, "tasks": [task], "length": n}))
        st = {k: {s: v.tolist() for s, v in dataset_writer.compute_stats(np.stack([f[k] for f in frames])).items()}
              for k in ["observation.state", "action"]}
        stats_lines.append(json.dumps({"episode_index": e, "stats": st}))
        start += n
    (root / "meta/episodes.jsonl").write_text("\n".join(eps_lines))
    (root / "meta/episodes_stats.jsonl").write_text("\n".join(stats_lines))
    return root


def test_v21_read(tmp_path, episodes):
    root = write_v21(tmp_path / "v21", episodes)
    ds = data.LeRobotDataset(root, delta_timestamps={"action": [0, 0.1]})
    assert len(ds) == sum(LENGTHS) and ds.meta.version == "v2.1" and ds.meta.tasks[1] == TASKS[1]
    np.testing.assert_array_equal(ds.frames["observation.image"], stacked(episodes, "observation.image"))
    err = np.abs(ds.frames["observation.cam2"].astype(int) - (255 - stacked(episodes, "observation.image")).astype(int))
    assert err.mean() < 3
    assert ds[5]["action_is_pad"].tolist() == [False, True] and ds[14]["task"] == TASKS[1]
    np.testing.assert_allclose(ds.meta.stats["action"]["mean"], stacked(episodes, "action").mean(0), rtol=1e-6)
    np.testing.assert_allclose(ds.meta.stats["observation.state"]["std"], stacked(episodes, "observation.state").std(0), rtol=1e-6)


# ----------------------------------------------------------------------------- real so101 dataset (v3.0 by lerobot)


@pytest.mark.skipif(not SO101.exists(), reason="../shared/datasets/so101_record_test_v30 not present (a user's clone)")
def test_so101_real_dataset():
    ds = data.LeRobotDataset(SO101, delta_timestamps={"action": [0, 1 / 30, 2 / 30]})
    assert len(ds) == 1492 and ds.meta.total_episodes == 4 and ds.fps == 30
    assert [e["length"] for e in ds.meta.episodes] == [373, 374, 372, 373]
    assert ds.meta.tasks == {0: "Pick the orange cube and place it in the box"}
    raw = json.loads((SO101 / "meta/stats.json").read_text())
    np.testing.assert_allclose(ds.meta.stats["action"]["mean"], raw["action"]["mean"])
    assert ds.meta.stats["observation.images.top"]["mean"].shape == (3, 1, 1)
    np.testing.assert_allclose(ds.meta.stats["action"]["mean"], ds.columns["action"].mean(0), rtol=1e-4, atol=1e-3)
    with pytest.raises(FileNotFoundError, match=r"observation.images.front/chunk-000/file-000.mp4 is missing"):
        ds[0]
    ds = data.LeRobotDataset(SO101, camera_keys=[], delta_timestamps={"action": [0, 1 / 30]})
    end = ds.meta.episodes[0]["dataset_to_index"]
    assert ds[end - 1]["action_is_pad"].tolist() == [False, True] and ds[end]["action_is_pad"].tolist() == [False, False]
    assert ds[0]["task"].startswith("Pick the orange cube") and ds[0]["action"].shape == (2, 6)
    with pytest.raises(FileNotFoundError, match="mp4 is missing") as e:
        data.ManipulationDataset(SO101, image_keys=["observation.images.top"])
    assert "out of image_keys (image_keys=[] reads only the numeric features)" in str(e.value)
    assert "camera_keys" not in str(e.value)
    m = data.ManipulationDataset(ds, image_keys=[], chunk_size=8)
    assert m[0]["action"].shape == (8, 6) and m[0]["proprio"].shape == (6,)


# ----------------------------------------------------------------------------- hub path


def test_hub_id_downloads_with_snapshot_download(png_root, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kw: calls.append((repo_id, kw)) or str(png_root))
    ds = data.LeRobotDataset("someone/pusht_demo")
    assert len(ds) == sum(LENGTHS) and calls[0][0] == "someone/pusht_demo" and calls[0][1]["repo_type"] == "dataset"

    def offline(*a, **kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(RuntimeError, match="--local-dir DIR"):
        data.LeRobotDataset("someone/other_demo")


# ----------------------------------------------------------------------------- bad input -> clear errors


def test_errors_missing_info_and_unknown_version(tmp_path, png_root):
    with pytest.raises(FileNotFoundError, match="meta/info.json is missing"):
        data.LeRobotDataset(tmp_path)
    root = tmp_path / "copy"
    shutil.copytree(png_root, root)
    info = json.loads((root / "meta/info.json").read_text())
    (root / "meta/info.json").write_text(json.dumps(info | {"codebase_version": "v9.9"}))
    with pytest.raises(ValueError, match="'v9.9' is not supported"):
        data.LeRobotDataset(root)


def test_errors_delta_timestamps(png_root):
    with pytest.raises(ValueError, match="do not land on a frame"):
        data.LeRobotDataset(png_root, delta_timestamps={"action": [0, 0.15]})
    with pytest.raises(KeyError, match="no such feature"):
        data.LeRobotDataset(png_root, delta_timestamps={"observation.depth": [0]})
    data.LeRobotDataset(png_root, delta_timestamps={"action": [0, 0.1 + 5e-5]})  # within tolerance


def test_errors_corrupt_files(tmp_path, png_root, video_root):
    root = tmp_path / "png"
    shutil.copytree(png_root, root)
    p = root / "data/chunk-000/file-000.parquet"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"file-000.parquet is corrupt"):
        data.LeRobotDataset(root)
    root = tmp_path / "vid"
    shutil.copytree(video_root, root)
    v = root / "videos/observation.image/chunk-000/file-000.mp4"
    v.write_bytes(b"\x00" * 64 + v.read_bytes()[100:200])
    with pytest.raises(ValueError, match=r"file-000.mp4 is corrupt"):
        data.LeRobotDataset(root, cache_dir=str(tmp_path / "cache"))
    assert list((tmp_path / "cache").iterdir()) == []  # the half-decoded frame file is removed, not left behind
    v.unlink()
    with pytest.raises(FileNotFoundError, match="mp4 is missing"):
        data.LeRobotDataset(root)[0]


def test_errors_nan(tmp_path, png_root, episodes):
    w = dataset_writer.LeRobotDatasetWriter(tmp_path / "w", FPS, FEATURES)
    bad = dict(episodes[0][0][0], action=np.array([np.nan, 0], np.float32))
    with pytest.raises(ValueError, match="action contains NaN"):
        w.add_frame(bad, "t")
    root = tmp_path / "nan"
    shutil.copytree(png_root, root)
    p = root / "data/chunk-000/file-000.parquet"
    t = pq.read_table(p)
    state = t.column("observation.state").to_pylist()
    state[8][1] = float("nan")
    t = t.set_column(t.schema.get_field_index("observation.state"), "observation.state",
                     pa.array(state, t.schema.field("observation.state").type))
    pq.write_table(t, p)
    with pytest.raises(ValueError, match=r"'observation.state' has NaN/inf at episode 1 frame 2"):
        data.LeRobotDataset(root)


def test_errors_writer_inputs(tmp_path, episodes):
    w = dataset_writer.LeRobotDatasetWriter(tmp_path / "w", FPS, FEATURES)
    with pytest.raises(KeyError, match="missing"):
        w.add_frame({"action": np.zeros(2, np.float32)}, "t")
    with pytest.raises(ValueError, match="expected uint8"):
        w.add_frame(dict(episodes[0][0][0], **{"observation.image": np.zeros((H, W, 3), np.float32)}), "t")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk/file.txt").write_text("x")
    with pytest.raises(FileExistsError):
        dataset_writer.LeRobotDatasetWriter(tmp_path / "junk", FPS, FEATURES)


# ----------------------------------------------------------------------------- model-facing


def test_manipulation_dataset_batch_convention(png_root, episodes):
    m = data.ManipulationDataset(png_root, image_keys=["observation.image", "observation.image"], chunk_size=4)
    s = m[13]
    assert s["images"].shape == (2, 3, H, W) and s["images"].dtype == torch.uint8
    assert s["proprio"].shape == (3,) and s["proprio"].dtype == torch.float32
    assert s["action"].shape == (4, 2) and s["action_is_pad"].tolist() == [False, False, True, True]
    assert s["instruction"] == TASKS[1]
    np.testing.assert_array_equal(s["images"][0].permute(1, 2, 0).numpy(), episodes[1][0][7]["observation.image"])
    loader = data.create_dataloader(m, batch_size=8, shuffle=True, seed=0, drop_last=False)
    batches = list(loader)
    assert sum(len(b["instruction"]) for b in batches) == len(m)
    b = batches[0]
    assert b["images"].shape == (8, 2, 3, H, W) and b["action"].shape == (8, 4, 2) and b["action_is_pad"].dtype == torch.bool
    assert data.ManipulationDataset(m.ds, ["observation.image"], instruction="go")[0]["instruction"] == "go"
    assert "proprio" not in data.ManipulationDataset(m.ds, ["observation.image"], state_key=None)[0]


def test_augmentation_random_bounded_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8, generator=g)
    ident = data.augment_batch(x, crop_scale=(1, 1), crop_ratio=(1, 1), max_rotate_deg=0, max_translate=0,
                               brightness=0, contrast=0, saturation=0)
    assert torch.equal(ident, x)  # zero-strength augmentation is exactly the identity
    a, b = data.augment_batch(x, generator=g), data.augment_batch(x, generator=g)
    assert a.shape == x.shape and a.dtype == torch.uint8 and not torch.equal(a, b)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    xf = torch.stack([xx, yy, (xx + yy) / 2]).expand(4, 2, 3, 32, 32)  # smooth image: small warps = small changes
    af = data.augment_batch(xf)
    assert af.dtype == torch.float32 and 0 <= af.min() and af.max() <= 1
    assert 0.005 < (af - xf).abs().mean() < 0.15  # a perturbation, not a different image


def test_augmented_loader_and_frame_to_model_input(png_root, episodes):
    m = data.ManipulationDataset(png_root, image_keys=["observation.image"], chunk_size=3)
    b = next(iter(data.create_dataloader(m, batch_size=4, seed=1)))
    for images in (data.augment_batch(b["images"]), data.shift_batch(b["images"], 2)):  # what train_bc does
        assert images.shape == (4, 1, 3, H, W) and images.dtype == torch.uint8
    frame = episodes[0][0][0]
    s = data.frame_to_model_input(frame, ["observation.image"], "observation.state")
    assert s["images"].shape == (1, 3, H, W) and s["images"].dtype == torch.uint8
    np.testing.assert_array_equal(s["images"][0].permute(1, 2, 0).numpy(), frame["observation.image"])
    torch.testing.assert_close(s["proprio"], torch.from_numpy(frame["observation.state"]))


def test_depth_feature_round_trip(tmp_path, episodes):
    feats = FEATURES | {"observation.depth": {"dtype": "float32", "shape": (H, W, 1), "names": None}}
    w = dataset_writer.LeRobotDatasetWriter(tmp_path / "d", FPS, feats)
    depth = np.random.default_rng(0).uniform(0.1, 2.0, size=(6, H, W, 1)).astype(np.float32)
    for f, d in zip(episodes[0][0], depth):
        w.add_frame(dict(f, **{"observation.depth": d}), TASKS[0])
    w.save_episode()
    w.finalize()
    ds = data.LeRobotDataset(tmp_path / "d")
    np.testing.assert_array_equal(ds.columns["observation.depth"], depth)
    np.testing.assert_allclose(ds.meta.stats["observation.depth"]["mean"], depth.mean().reshape(1, 1, 1), rtol=1e-6)
    s = data.ManipulationDataset(ds, ["observation.image"], depth_keys=["observation.depth"], chunk_size=2)[0]
    assert s["depth"].shape == (1, 1, H, W) and s["depth"].dtype == torch.float32


# ----------------------------------------------------------------------------- errors met on real datasets


def test_v21_missing_episode_files_name_the_readable_episodes(tmp_path, episodes):
    root = write_v21(tmp_path / "v21", episodes, first=1)  # episode files start at 1, like some hub datasets
    ds = data.LeRobotDataset(root)
    assert len(ds) == sum(LENGTHS) and ds.columns["episode_index"][0] == 1 and ds[-1]["task"] == TASKS[0]
    with pytest.raises(ValueError, match=r"episodes \[0\] are not in .*, whose episodes are \[1, 2, 3\]"):
        data.LeRobotDataset(root, episodes=[0, 1])
    (root / "data/chunk-000/episode_000001.parquet").unlink()
    with pytest.raises(FileNotFoundError) as e:
        data.LeRobotDataset(root)
    msg = str(e.value)
    assert msg.startswith(f"{root}/data/chunk-000/episode_000001.parquet is missing: the data files of episodes [1]")
    assert msg.endswith("episodes [2, 3] have theirs; pass episodes=[2, 3] to read only those")
    assert len(data.LeRobotDataset(root, episodes=[2, 3])) == LENGTHS[1] + LENGTHS[2]
    (root / "videos/chunk-000/observation.cam2/episode_000002.mp4").unlink()  # a camera's video of one episode
    ds = data.LeRobotDataset(root, episodes=[2, 3])  # numeric features and the other camera still load
    with pytest.raises(FileNotFoundError) as e:
        ds.camera("observation.cam2")
    assert "the 'observation.cam2' videos of episodes [2]" in str(e.value)
    assert str(e.value).endswith("; pass episodes=[3] to read only those, or leave 'observation.cam2' out of "
                                 "camera_keys (camera_keys=[] reads only the numeric features)")
    with pytest.raises(FileNotFoundError) as e:
        data.ManipulationDataset(root, image_keys=["observation.cam2"], episodes=[2, 3])
    assert "out of image_keys (image_keys=[] reads only the numeric features)" in str(e.value)
    assert "camera_keys" not in str(e.value)
    assert len(data.ManipulationDataset(root, image_keys=["observation.cam2"], episodes=[3])) == LENGTHS[2]


def test_camera_hint_names_the_callers_argument(png_root):
    with pytest.raises(KeyError, match=r"image_keys \['observation.images.top'\] are not cameras of .*; its "
                                       r"cameras are \['observation.image'\]") as e:
        data.ManipulationDataset(png_root, image_keys=["observation.images.top"])
    assert "camera_keys" not in str(e.value)
    with pytest.raises(KeyError, match=r"camera_keys \['observation.state'\] are not cameras"):
        data.LeRobotDataset(png_root, camera_keys=["observation.state"])
    numeric_only = data.LeRobotDataset(png_root, camera_keys=[])
    with pytest.raises(KeyError, match=r"image_keys \['observation.image'\]: the cameras of .* are "
                                       r"\['observation.image'\], of which this LeRobotDataset decoded \[\]"):
        data.ManipulationDataset(numeric_only, image_keys=["observation.image"])
    with pytest.raises(KeyError, match=r"'observation.velocity' is not a feature of"):
        data.ManipulationDataset(png_root, image_keys=["observation.image"], state_key="observation.velocity")


def test_negative_indices_wrap_like_a_list(png_root):
    m = data.ManipulationDataset(png_root, image_keys=["observation.image"], chunk_size=4, n_obs_steps=2)
    n = len(m)
    for a, b in [(m[-1], m[n - 1]), (m[-n], m[0])]:
        assert a["instruction"] == b["instruction"]
        for k in ["images", "proprio", "action", "action_is_pad"]:
            assert torch.equal(a[k], b[k]), k
    assert m[-1]["action_is_pad"].tolist() == [False, True, True, True]  # the last frame: no future actions
    b, ref = m.get_batch(np.array([-1, 0, -6])), m.get_batch([n - 1, 0, n - 6])
    assert all(torch.equal(b[k], ref[k]) for k in ["images", "proprio", "action", "action_is_pad"])
    for bad in ([n], [0, -n - 1]):
        with pytest.raises(IndexError, match=rf"index \[{bad[-1]}\] is out of range for the {n} frames of .* "
                                             rf"\(valid: -{n} to {n - 1}\)"):
            m.get_batch(bad)
    with pytest.raises(IndexError, match="out of range"):
        m[n]
    ds = m.ds
    assert torch.equal(ds[-1]["action"], ds[n - 1]["action"]) and int(ds[-1]["index"]) == n - 1
    with pytest.raises(IndexError, match="out of range"):
        ds[-n - 1]
    assert len(list(iter(ds))) == n  # the sequence protocol stops at the IndexError


def test_missing_local_path_is_reported_before_the_hub(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: calls.append(repo_id) or "x")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for path in [tmp_path / "no_such_dataset", "data/pusht", "./pusht/v1", "~/no/such/dataset", "pusht"]:
        with pytest.raises(FileNotFoundError, match=f"local dataset folder {path} does not exist: check the path"):
            data.LeRobotDataset(path)
    assert calls == []  # none of them reached the hub
    with pytest.raises(FileNotFoundError, match="meta/info.json is missing"):
        data.LeRobotDataset("data")  # an existing folder that is not a dataset
