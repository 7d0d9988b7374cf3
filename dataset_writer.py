"""
Write robot demonstrations in the LeRobot v3.0 layout (data.py's docstring draws it), the way lerobot
itself writes them, so lerobot, the hub viewer and data.py read our recordings: many episodes per
parquet/mp4 file, per-episode statistics merged into meta/stats.json. Used by the simulator experts
(envs.record_demonstrations), DAgger (appends its labelled rollouts) and stage 1 (train_vlm.py's VQA data).
"""
import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from data import (CAMERA_DTYPES, CHUNKS_SIZE, CODEBASE_VERSION, DATA_FILE_MB, DATA_PATH, DEFAULT_FEATURES,
                  EPISODES_PATH, VIDEO_FILE_MB, VIDEO_PATH, LeRobotDatasetMetadata, _write_json, aggregate_stats)


# encoder and its options per codec. g=2: a keyframe every 2 frames keeps random access cheap for lerobot's seeking
# readers (lerobot writes AV1 with g=2, crf=30)
VIDEO_CODECS = {"h264": ("libx264", {"g": "2", "crf": "18"}), "av1": ("libsvtav1", {"g": "2", "crf": "30"})}


class LeRobotDatasetWriter:
    """Record episodes into the v3.0 layout; used by simulator experts (envs.py) and by DAgger.

    If `root` already holds a v3.0 dataset, new episodes are APPENDED (new data/video/episode files
    file-(k+1), stats merged), so DAgger can aggregate into the same dataset without rewriting it.
        w = LeRobotDatasetWriter("data/pusht", fps=10, features={"observation.image": {"dtype": "image",
                "shape": (96, 96, 3), "names": ["height", "width", "channels"]}, "observation.state": {...},
                "action": {"dtype": "float32", "shape": (2,), "names": None}})
        for t in range(T): w.add_frame({"observation.image": img, "observation.state": s, "action": a}, task)
        w.save_episode(); ...; w.finalize()
    """

    def __init__(self, root, fps, features, robot_type=None, use_videos=None, vcodec="h264"):
        """use_videos: cameras as mp4 (True) or PNG in parquet (False); None = as the dataset being appended
        to stores them (DAgger appends to whatever it was given), PNG for a new one. vcodec: 'h264' (fast to
        write) or 'av1' (what lerobot writes and the hub's datasets hold: SVT-AV1, crf 30)."""
        if vcodec not in VIDEO_CODECS:
            raise ValueError(f"vcodec={vcodec!r}: use one of {list(VIDEO_CODECS)}")
        self.root, self.fps, self.vcodec = Path(root), fps, vcodec
        if use_videos is None:
            info = self.root / "meta/info.json"
            use_videos = info.exists() and "video" in {f["dtype"] for f in json.loads(info.read_text())["features"].values()}
        feats = {k: dict(v, shape=list(v["shape"])) for k, v in features.items() if k not in DEFAULT_FEATURES}
        for k, f in feats.items():
            if f["dtype"] in CAMERA_DTYPES:
                f["dtype"] = "video" if use_videos else "image"
                f.setdefault("names", ["height", "width", "channels"])
                if use_videos and (f["shape"][0] % 2 or f["shape"][1] % 2):
                    raise ValueError(f"{k}: yuv420p video needs even height/width, got {f['shape']}; use_videos=False")
                elif use_videos:
                    f["info"] = {"video.height": f["shape"][0], "video.width": f["shape"][1], "video.codec": vcodec,
                                 "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": fps,
                                 "video.channels": 3, "has_audio": False}
        self.features = feats | DEFAULT_FEATURES
        self.stats_parts, self.new_episodes, self.buffer = [], [], []
        self.episode_file = (0, 0)
        if (self.root / "meta/info.json").exists():
            self._resume()
        else:
            if self.root.exists() and any(self.root.iterdir()):
                raise FileExistsError(f"{self.root} is not empty and has no meta/info.json; pick an empty/new folder")
            self.info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": 0,
                         "total_frames": 0, "total_tasks": 0, "chunks_size": CHUNKS_SIZE,
                         "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB, "fps": fps,
                         "splits": {}, "data_path": DATA_PATH, "video_path": VIDEO_PATH if use_videos else None,
                         "features": self.features}
            self.tasks, self.data_file = {}, (0, 0)
        self.video_keys = [k for k, f in self.features.items() if f["dtype"] == "video"]
        self.data_writer, self.videos = None, {}  # open parquet writer; key -> open mp4 {container, stream, frames, bytes}
        self.video_file = dict.fromkeys(self.video_keys, self.data_file)

    def _resume(self):
        meta = LeRobotDatasetMetadata(self.root)
        if meta.version != CODEBASE_VERSION:
            raise ValueError(f"{self.root} is {meta.version}; appending needs v3.0. Convert it with lerobot first")
        same = {k: (f["dtype"], list(f["shape"])) for k, f in meta.features.items()}
        if meta.fps != self.fps or same != {k: (f["dtype"], f["shape"]) for k, f in self.features.items()}:
            raise ValueError(f"cannot append to {self.root}: fps/features differ ({meta.fps} vs {self.fps}; "
                             f"{same} vs features given); write a new dataset instead")
        self.info, self.tasks = meta.info, {v: k for k, v in meta.tasks.items()}
        self.stats_parts = [meta.stats]  # existing totals merge with the new episodes' stats
        last = meta.episodes[-1]
        self.data_file = self._next(last["data/chunk_index"], last["data/file_index"])
        video_files = [(e[f"videos/{k}/chunk_index"], e[f"videos/{k}/file_index"])
                       for e in meta.episodes for k in meta.video_keys]
        self.data_file = max([self.data_file] + [self._next(*v) for v in video_files])
        self.episode_file = self._next(*max((e["meta/episodes/chunk_index"], e["meta/episodes/file_index"])
                                            for e in meta.episodes))

    @staticmethod
    def _next(chunk, file):
        return (chunk + 1, 0) if file + 1 >= CHUNKS_SIZE else (chunk, file + 1)

    def add_frame(self, frame, task):
        """Buffer one timestep. frame: {feature: value}, images uint8 (H, W, 3); task: instruction string."""
        missing = set(self.features) - set(DEFAULT_FEATURES) - set(frame)
        extra = set(frame) - set(self.features)
        if missing or extra:
            raise KeyError(f"frame keys mismatch the features: missing {sorted(missing)}, unexpected {sorted(extra)}")
        for k, v in frame.items():
            f = self.features[k]
            v = np.asarray(v)
            if f["dtype"] in CAMERA_DTYPES and (v.dtype != np.uint8 or list(v.shape) != f["shape"]):
                raise ValueError(f"{k}: expected uint8 {f['shape']} (H, W, C), got {v.dtype} {list(v.shape)}")
            if f["dtype"] not in CAMERA_DTYPES and k not in DEFAULT_FEATURES:
                if v.size != np.prod(f["shape"]):
                    raise ValueError(f"{k}: expected shape {f['shape']}, got {list(v.shape)}")
                if v.dtype.kind == "f" and not np.isfinite(v).all():
                    raise ValueError(f"{k} contains NaN/inf at frame {len(self.buffer)}: {v}; fix the policy/expert")
        self.buffer.append((frame, task))

    def save_episode(self):
        """Write the buffered frames as one episode (a parquet row group + video frames) and its stats."""
        if not self.buffer:
            raise RuntimeError("save_episode() with no frames; call add_frame() first")
        n, ep_idx, start = len(self.buffer), self.info["total_episodes"], self.info["total_frames"]
        tasks = list(dict.fromkeys(t for _, t in self.buffer))
        for t in tasks:
            self.tasks.setdefault(t, len(self.tasks))
        cols = {k: np.stack([np.asarray(fr[k]) for fr, _ in self.buffer]) for k in self.features if k not in DEFAULT_FEATURES}
        ts = [fr.get("timestamp", i / self.fps) for i, (fr, _) in enumerate(self.buffer)]
        cols |= {"timestamp": np.array(ts, np.float32),
                 "frame_index": np.arange(n), "episode_index": np.full(n, ep_idx), "index": np.arange(start, start + n),
                 "task_index": np.array([self.tasks[t] for _, t in self.buffer])}
        ep = {"episode_index": ep_idx, "tasks": tasks, "length": n, "data/chunk_index": self.data_file[0],
              "data/file_index": self.data_file[1], "dataset_from_index": start, "dataset_to_index": start + n}
        for k in self.video_keys:
            ep.update(self._encode_video(k, cols[k]))
        stats = {k: compute_stats(x, self.features[k]["dtype"] in CAMERA_DTYPES) for k, x in cols.items()}
        ep.update({f"stats/{k}/{s}": v.tolist() for k, d in stats.items() for s, v in d.items()})
        ep["meta/episodes/chunk_index"], ep["meta/episodes/file_index"] = self.episode_file
        self._write_data(pa.table({k: _column(cols[k], f) for k, f in self.features.items() if f["dtype"] != "video"}))
        self.stats_parts.append(stats)
        self.new_episodes.append(ep)
        self.info["total_episodes"] += 1
        self.info["total_frames"] += n
        self.buffer = []

    def _write_data(self, table):
        path = self.root / DATA_PATH.format(chunk_index=self.data_file[0], file_index=self.data_file[1])
        if self.data_writer is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            hf = {"info": {"features": {k: _hf_feature(f) for k, f in self.features.items() if f["dtype"] != "video"}}}
            self.data_writer = pq.ParquetWriter(path, table.schema.with_metadata({"huggingface": json.dumps(hf)}))
        self.data_writer.write_table(table)  # one row group per episode, like lerobot
        if path.stat().st_size > DATA_FILE_MB * 2**20:
            self.data_writer.close()
            self.data_writer, self.data_file = None, self._next(*self.data_file)

    def _encode_video(self, key, frames):
        """Append frames (n, H, W, 3) uint8 to the key's open mp4; returns the episode's video metadata."""
        (c, f), v = self.video_file[key], self.videos.get(key)
        if v is None:
            path = self.root / VIDEO_PATH.format(video_key=key, chunk_index=c, file_index=f)
            path.parent.mkdir(parents=True, exist_ok=True)
            container = av.open(str(path), "w")
            encoder, options = VIDEO_CODECS[self.vcodec]
            stream = container.add_stream(encoder, rate=self.fps, options=options)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            v = self.videos[key] = {"container": container, "stream": stream, "frames": 0, "bytes": 0}
        t0 = v["frames"] / self.fps
        for img in frames:
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = v["frames"], Fraction(1, self.fps)
            for packet in v["stream"].encode(frame):
                v["bytes"] += packet.size
                v["container"].mux(packet)
            v["frames"] += 1
        if v["bytes"] > VIDEO_FILE_MB * 2**20:
            self._close_video(key)
            self.video_file[key] = self._next(c, f)
        return {f"videos/{key}/chunk_index": c, f"videos/{key}/file_index": f,
                f"videos/{key}/from_timestamp": t0, f"videos/{key}/to_timestamp": v["frames"] / self.fps}

    def _close_video(self, key):
        v = self.videos.pop(key)
        for packet in v["stream"].encode():  # flush the encoder's delayed frames
            v["container"].mux(packet)
        v["container"].close()

    def finalize(self):
        """Close files and write meta/ (episodes, tasks, info, stats). The dataset is readable after this."""
        if self.buffer:
            raise RuntimeError(f"{len(self.buffer)} frames were added but not saved; call save_episode() first")
        if self.data_writer is not None:
            self.data_writer.close()
            self.data_writer = None
        for key in list(self.videos):
            self._close_video(key)
        if self.new_episodes:
            path = self.root / EPISODES_PATH.format(chunk_index=self.episode_file[0], file_index=self.episode_file[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(self.new_episodes), path)
            self.new_episodes, self.episode_file = [], self._next(*self.episode_file)
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        names = list(self.tasks)  # tasks.parquet as pandas writes it: the task string is the (unnamed) index
        pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [], "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
             "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object",
             "metadata": None}], "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__}}
        tasks = pa.table({"task_index": pa.array([self.tasks[t] for t in names], pa.int64()), "__index_level_0__": names})
        pq.write_table(tasks.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), self.root / "meta/tasks.parquet")
        self.info["total_tasks"] = len(self.tasks)
        self.info["splits"] = {"train": f"0:{self.info['total_episodes']}"}
        _write_json(self.info, self.root / "meta/info.json")
        stats = aggregate_stats(self.stats_parts)
        _write_json({k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()},
                    self.root / "meta/stats.json")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.buffer = []  # an unfinished episode is dropped; saved ones stay readable
        self.finalize()


def _hf_feature(f):
    """The `datasets` feature spec lerobot stores in parquet metadata (so HF tools read our files)."""
    if f["dtype"] == "image":
        return {"_type": "Image"}
    if f["shape"] == [1]:
        return {"dtype": f["dtype"], "_type": "Value"}
    if len(f["shape"]) == 1:
        return {"feature": {"dtype": f["dtype"], "_type": "Value"}, "length": f["shape"][0], "_type": "List"}
    return {"shape": f["shape"], "dtype": f["dtype"], "_type": f"Array{len(f['shape'])}D"}


def _column(x, f):
    """np.ndarray (N, *shape) of feature f -> its parquet column: PNG structs for images, a scalar column for
    shape [1], else nested fixed-size lists (what HF List/ArrayND read back)."""
    if f["dtype"] == "image":
        return pa.array([{"bytes": _encode_png(img), "path": None} for img in x],
                        pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    x = np.ascontiguousarray(x, dtype=f["dtype"])
    arr = pa.array(x.reshape(-1))
    for d in reversed(f["shape"] if f["shape"] != [1] else []):
        arr = pa.FixedSizeListArray.from_arrays(arr, d)
    return arr


def _encode_png(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=1)  # level 1: 5x faster, ~same size on renders
    return buf.getvalue()


def compute_stats(x, is_camera=False):
    """Stats of one feature over frames x (N, *shape). Cameras and depth (N, H, W, C): per channel, shape
    (C, 1, 1), uint8 pixels scaled to [0, 1] (lerobot's convention)."""
    x = np.asarray(x)
    n, cam = len(x), is_camera or x.ndim == 4
    scale = 255.0 if cam and x.dtype == np.uint8 else 1.0
    x = (x.reshape(-1, x.shape[-1]) if cam else x.reshape(n, -1)).astype(np.float64) / scale  # reduce over N (,H,W)
    stats = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0)}
    return {k: v.reshape(-1, 1, 1) if cam else v for k, v in stats.items()} | {"count": np.array([n])}
