"""
Robot demonstrations in the LeRobot dataset format: read (v3.0 and v2.1) and turn into model
batches. One code path for demos generated here and datasets from the hub (dataset_writer.py writes
the same layout).

On disk (codebase v3.0, what lerobot writes today; many episodes share one file):
    meta/info.json                       fps, features {name: {dtype, shape, names}}, totals, path templates
    meta/stats.json                      per feature {mean, std, min, max, count} (images: (3,1,1) over [0,1])
    meta/tasks.parquet                   task string (pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet   per episode: length, tasks, dataset_from/to_index,
                                         data/{chunk,file}_index, videos/<key>/{chunk,file}_index,
                                         videos/<key>/{from,to}_timestamp, stats/<key>/<stat>
    data/chunk-000/file-000.parquet      one row per frame: features + timestamp, frame_index,
                                         episode_index, index, task_index; images as {bytes: PNG, path}
    videos/<key>/chunk-000/file-000.mp4  camera streams, episodes back to back
v2.1 (most published datasets): one file per episode, JSON-lines metadata:
    meta/episodes.jsonl, meta/tasks.jsonl, meta/episodes_stats.jsonl,
    data/chunk-000/episode_000000.parquet, videos/chunk-000/<key>/episode_000000.mp4

Speed: a training step must never wait on data, so everything is loaded once at construction
(numeric columns -> numpy, every camera frame decoded exactly once -> one uint8 (N,H,W,3) array)
and indexing a batch is pure numpy fancy indexing. The decoded frames persist in a frame cache
(FRAME_CACHE, beside the hub cache): a later open of the same files maps them in without decoding,
and memory stays bounded by the page cache, not by the dataset. image_size resizes the frames while they decode
(LIBERO's 256x256 cameras to a 96x96 policy), after image_crop keeps a part of each (crop_box): the cache then holds
the small frames only.
"""
import hashlib
import io
import json
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from huggingface_hub.constants import HF_HOME
from PIL import Image
from tqdm import tqdm

CODEBASE_VERSION = "v3.0"
TOLERANCE_S = 1e-4  # lerobot's default: a timestamp matches a frame if within 0.1 ms
CHUNKS_SIZE = 1000  # files per chunk-XXX folder
DATA_FILE_MB, VIDEO_FILE_MB = 100, 200  # roll over to file-(k+1) past these sizes
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_FEATURES = {  # added to every frame by the writer, exactly like lerobot
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
CAMERA_DTYPES = ("image", "video")
# decoded frames, one .npy per (dataset files, episodes, camera); NANOVLA_FRAME_CACHE='' turns the cache off
FRAME_CACHE = os.environ.get("NANOVLA_FRAME_CACHE", os.path.join(HF_HOME, "nanovla_frames"))

# -----------------------------------------------------------------------------
# small I/O helpers


def _read_parquet(path):
    """Read a parquet file, turning pyarrow's generic errors into one that names the file."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is missing; the dataset is incomplete: re-download or re-record it")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path} is corrupt or truncated ({e}); re-download or re-record this dataset") from e


def _read_json(path):
    return json.loads(Path(path).read_text())


def _write_json(obj, path):
    """Write JSON atomically (tmp + rename) so a crash never leaves a half-written info.json."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=4, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
    os.replace(tmp, path)


def _read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _arrow_to_numpy(col, shape):
    """(Nested) list column -> np.ndarray (N, *shape); scalar column -> (N,)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    while pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = arr.flatten()
    out = arr.to_numpy(zero_copy_only=False)
    return out if list(shape) == [1] else out.reshape(len(col), *shape)


def _decode_png(b, src_shape, hw, crop=()):
    """PNG bytes -> uint8 (H, W, 3), cropped and resized to hw (None = as stored); its size must be the one
    info.json lists."""
    img = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
    if img.shape != src_shape:
        raise ValueError(f"a PNG frame is {img.shape}, info.json says {src_shape}: the dataset is inconsistent")
    return _fit(img, hw, crop)


def crop_box(hw, crop):
    """The pixel box (y0, x0, h, w) that a crop (top, left, height, width), in fractions of the frame, keeps of an
    (H, W) frame; () keeps all of it. Fractions, not pixels, so that one preset crops a camera alike at any
    resolution (a simulator rendered larger, a hub dataset): the policy's frames then show the workspace bigger."""
    H, W = hw
    if not crop:
        return 0, 0, H, W
    top, left, height, width = (float(c) for c in crop) if len(crop) == 4 else (-1,) * 4
    if min(top, left) < 0 or min(height, width) <= 0 or top + height > 1 + 1e-6 or left + width > 1 + 1e-6:
        raise ValueError(f"image_crop={tuple(crop)}: give (top, left, height, width) as fractions of the frame, with "
                         f"height, width > 0, top + height <= 1 and left + width <= 1; e.g. (0.25, 0, 0.5, 1) keeps "
                         f"the middle half of the rows")
    y0, x0 = round(top * H), round(left * W)
    return y0, x0, max(1, min(round(height * H), H - y0)), max(1, min(round(width * W), W - x0))


def _target_hw(src_hw, image_size):
    """The decoded size of a camera stored at src_hw: image_size None (as stored), an int height (the width keeps
    the aspect ratio) or (H, W)."""
    if image_size is None:
        return tuple(src_hw)
    if isinstance(image_size, (int, np.integer)):
        if image_size <= 0:
            raise ValueError(f"image_size={image_size}: a frame height in pixels must be positive")
        return int(image_size), max(1, round(src_hw[1] * int(image_size) / src_hw[0]))
    return tuple(int(x) for x in image_size)


def _fit(img, hw, crop=()):
    """One uint8 (h, w, 3) frame -> cropped (crop_box), then (H, W, 3) for hw = (H, W), antialiased as the policy's
    live frames are (frame_to_model_input); None or the same size = not resized."""
    if crop:
        y0, x0, h, w = crop_box(img.shape[:2], crop)
        img = img[y0:y0 + h, x0:x0 + w]
    if hw is None or img.shape[:2] == tuple(hw):
        return img
    return resize_images(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None], hw)[0].permute(1, 2, 0).numpy()


def _ids(ids):
    """Episode indices as a Python expression for episodes=...: list(range(a, b)) when they are consecutive."""
    ids = sorted(ids)
    if len(ids) > 3 and ids[-1] - ids[0] == len(ids) - 1:
        return f"list(range({ids[0]}, {ids[-1] + 1}))"
    return str(ids)


def _frame_buffer(n, shape, key):
    """A uint8 (n, *shape) array for decoded frames: RAM when it fits in half of it, else a disk memmap."""
    nbytes = n * int(np.prod(shape))
    if nbytes < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2:
        return np.empty((n, *shape), dtype=np.uint8)
    path = Path(tempfile.mkdtemp(prefix="nanovla_frames_")) / f"{key}.u8"
    print(f"{key}: {nbytes / 2**30:.1f} GiB of frames > half of RAM; caching them in a memmap at {path} (TMPDIR)")
    return np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *shape))


class _FrameFile:
    """Write-only uint8 frames (n, *shape) into a .npy file through pwrite, not through a memory map: the frames go
    to the page cache, which the kernel writes back and drops, and not into this process's resident memory (pages
    written through a map count there: 0.84 against 0.33 GiB peak for 20k LIBERO-like frames x 2 cameras at 96x96,
    RESULTS.md). Threads may write at once: each frame has its own offset."""

    def __init__(self, path, n, shape):
        self.frame_bytes = int(np.prod(shape))
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": (n, *shape)})
            self.offset = f.tell()
            f.truncate(self.offset + n * self.frame_bytes)
        self.fd = os.open(path, os.O_WRONLY)

    def __setitem__(self, rows, frame):
        buf = np.ascontiguousarray(frame, dtype=np.uint8).data
        for row in np.atleast_1d(rows).tolist():
            os.pwrite(self.fd, buf, self.offset + row * self.frame_bytes)

    def close(self, sync=False):
        """sync: on disk before the file is renamed into place, so a crash cannot leave a whole-looking cache."""
        if sync:
            os.fsync(self.fd)
        os.close(self.fd)


def _cache_entry(cache_dir, root, key, sources, episode_ids, shape, crop=()):
    """-> (path of the .npy, its description). The name hashes everything the frames depend on: the source files
    (path, size, modification time: an edited or re-downloaded file gives a new entry, never a stale one), the
    episodes read, the camera, the crop and the frame shape."""
    desc = dict(root=str(Path(root).resolve()), camera=key, shape=list(shape), episodes=_ids(episode_ids),
                files=[[str(Path(f).resolve()), (st := os.stat(f)).st_size, st.st_mtime_ns] for f in sources])
    if crop:  # only when given: the uncropped entries keep the names they had before crops existed
        desc["crop"] = [float(c) for c in crop]
    digest = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{Path(root).name}-{key.split('.')[-1]}-{digest}.npy", desc


def _open_cached(path, desc, n, shape):
    """The cached frames if `path` holds them whole (its description, written last, matches), else None."""
    try:
        if json.loads(path.with_suffix(".json").read_text()) != desc:
            return None
        frames = np.load(path, mmap_mode="r")  # a truncated file fails here (its header promises more bytes)
    except (OSError, ValueError):
        return None
    return frames if frames.dtype == np.uint8 and frames.shape == (n, *shape) else None


def _decode_video_into(path, query_ts, dest_rows, out, src_shape, hw=None, crop=(), tolerance_s=TOLERANCE_S):
    """Decode `path` once, front to back, writing the frame at each query timestamp (seconds, sorted), cropped
    and resized to hw (None = as stored), into out[dest_rows]. A query with no decoded frame within tolerance_s is
    an error (lerobot's check); so is a stream whose frames are not src_shape, the size info.json lists."""
    found = np.zeros(len(query_ts), bool)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                ts = float(frame.pts * stream.time_base)
                lo = np.searchsorted(query_ts, ts - tolerance_s)
                hi = np.searchsorted(query_ts, ts + tolerance_s, "right")
                if hi > lo:  # queries [lo, hi) want this frame
                    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3) uint8
                    if rgb.shape != src_shape:
                        raise ValueError(f"{path}: frames are {rgb.shape}, info.json says {src_shape}")
                    out[dest_rows[lo:hi]], found[lo:hi] = _fit(rgb, hw, crop), True
                if ts > query_ts[-1] + tolerance_s:
                    break
    except av.FFmpegError as e:
        raise ValueError(f"{path} is corrupt or unreadable by PyAV ({e}); re-download or re-encode it") from e
    if not found.all():
        raise ValueError(f"{path}: no frame within tolerance_s={tolerance_s} of timestamps {query_ts[~found][:5]} "
                         f"({(~found).sum()} in all); the video and the parquet timestamps disagree")


# -----------------------------------------------------------------------------
# statistics: per-episode (dataset_writer.compute_stats), merged with the parallel-variance formula
# (Chan et al. 1979)


def aggregate_stats(stats_list):
    """Merge per-episode stats {key: {mean, std, min, max, count}} into dataset stats (exact mean/std)."""
    out = {}
    for key in {k for s in stats_list for k in s}:
        parts = [s[key] for s in stats_list if key in s]
        n = np.array([float(np.asarray(p["count"]).sum()) for p in parts])
        mean_i, std_i = (np.stack([np.asarray(p[s], dtype=np.float64) for p in parts]) for s in ("mean", "std"))
        w = (n / n.sum()).reshape(-1, *[1] * (mean_i.ndim - 1))
        mean = (w * mean_i).sum(0)
        out[key] = {"mean": mean, "std": np.sqrt((w * (std_i ** 2 + (mean_i - mean) ** 2)).sum(0)),
                    "count": np.array([int(n.sum())]),
                    "min": np.min(np.stack([np.asarray(p["min"]) for p in parts]), 0),
                    "max": np.max(np.stack([np.asarray(p["max"]) for p in parts]), 0)}
    return out


# -----------------------------------------------------------------------------
# reading


class LeRobotDatasetMetadata:
    """meta/ of a dataset (v3.0 or v2.1): fps, features, tasks {index: str}, episodes (list of dicts), stats."""

    def __init__(self, root):
        self.root = Path(root)
        info_path = self.root / "meta/info.json"
        if not info_path.exists():
            raise FileNotFoundError(f"{info_path} is missing: {self.root} is not a LeRobot dataset "
                                    f"(expected meta/info.json, data/chunk-XXX/*.parquet); check the path")
        self.info = _read_json(info_path)
        self.version = self.info.get("codebase_version")
        if self.version not in ("v2.0", "v2.1", "v3.0"):
            raise ValueError(f"{info_path}: codebase_version={self.version!r} is not supported (v2.0, v2.1, v3.0). "
                             f"Convert it with lerobot's conversion scripts to v3.0")
        self.fps, self.features = self.info["fps"], self.info["features"]
        self.camera_keys = [k for k, f in self.features.items() if f["dtype"] in CAMERA_DTYPES]
        self.video_keys = [k for k in self.camera_keys if self.features[k]["dtype"] == "video"]
        self.image_keys = [k for k in self.camera_keys if self.features[k]["dtype"] == "image"]
        if self.version == "v3.0":
            t = _read_parquet(self.root / "meta/tasks.parquet").to_pydict()
            self.tasks = dict(zip(t["task_index"], t.get("task", t.get("__index_level_0__"))))  # pandas index = task
            files = sorted((self.root / "meta/episodes").glob("*/*.parquet"))
            if not files:
                raise FileNotFoundError(f"{self.root}/meta/episodes/chunk-XXX/file-XXX.parquet is missing")
            self.episodes = [r for f in files for r in _read_parquet(f).to_pylist()]
        else:
            self.tasks = {t["task_index"]: t["task"] for t in _read_jsonl(self.root / "meta/tasks.jsonl")}
            self.episodes = _read_jsonl(self.root / "meta/episodes.jsonl")
        self.episodes.sort(key=lambda e: e["episode_index"])
        self.total_episodes, self.total_frames = len(self.episodes), sum(e["length"] for e in self.episodes)
        stats_path = self.root / "meta/stats.json"
        if stats_path.exists() or self.version == "v3.0":
            self.stats = {k: {s: np.asarray(v) for s, v in d.items()} for k, d in _read_json(stats_path).items()}
        else:  # v2.1 keeps per-episode stats only
            self.stats = aggregate_stats([e["stats"] for e in _read_jsonl(self.root / "meta/episodes_stats.jsonl")])

    def episode_file(self, ep, key=None):
        """Path of the parquet (key=None) or of camera `key`'s mp4 that holds episode ep."""
        if self.version == "v3.0":  # many episodes per file, named in the episode's metadata
            col = f"videos/{key}/" if key else "data/"
            where = dict(chunk_index=ep[col + "chunk_index"], file_index=ep[col + "file_index"])
        else:  # v2: one file per episode
            i = ep["episode_index"]
            where = dict(episode_chunk=i // self.info["chunks_size"], episode_index=i)
        return self.root / self.info["video_path" if key else "data_path"].format(video_key=key, **where)


def is_hub_id(name):
    """Is `name` a hub dataset id ("user/name") rather than a local path? Only when nothing local exists by that
    name, it has exactly that form, and its first part is not a local folder (data/<new> is a path to create)."""
    name = str(name)
    return not (Path(name).expanduser().exists() or name.startswith(("/", ".", "~"))
                or not re.fullmatch(r"[\w.-]+/[\w.-]+", name) or Path(name).parent.is_dir())


def _resolve_root(repo_id_or_path):
    """A local folder is used as is; a hub id ("user/name") is snapshot-downloaded into the hub cache."""
    name = str(repo_id_or_path)
    if Path(name).expanduser().exists():
        return Path(name).expanduser()  # a folder without info.json: LeRobotDatasetMetadata says what is missing
    if not is_hub_id(name):
        raise FileNotFoundError(f"local dataset folder {name} does not exist: check the path (a hub id like "
                                f"'lerobot/pusht' is only tried when its first part is not a local folder)")
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(name, repo_type="dataset"))
    except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
        raise RuntimeError(
            f"no local folder {name!r} exists, and it could not be downloaded as a dataset from the Hugging Face hub "
            f"({type(e).__name__}: {e}). If this machine is offline, download it elsewhere with `huggingface-cli "
            f"download --repo-type dataset {name} --local-dir DIR`, copy DIR here and pass 'DIR'") from e


class LeRobotDataset(torch.utils.data.Dataset):
    """Frames of a LeRobot dataset. ds[i] -> {feature: tensor, "<key>_is_pad": bool, "task": str, ...}.

    delta_timestamps (lerobot semantics) asks for a window of each feature around frame i, in seconds:
        {"observation.image": [-0.1, 0.0], "action": [0.0, 0.1, 0.2, 0.3]}   at fps=10 ->
        frame:      i-1   i    i+1  i+2  i+3          (clamped to the episode, padded frames flagged)
        image        x    x                            -> (2, C, H, W), observation.image_is_pad (2,)
        action            x    x    x    x             -> (4, A),       action_is_pad (4,)
    episodes: a subset of episode indices (default all). camera_keys limits which cameras are decoded
    (default all; [] reads only the numeric columns); keys_arg is the argument that error hints name
    (ManipulationDataset passes its image_keys here). cache_dir: the frame cache (None = FRAME_CACHE, '' = none:
    frames in RAM, or a temporary memmap past half of it). image_size: every camera resized while decoding, to
    (H, W) (same aspect ratio) or, an int, to that height (width keeps the aspect); None = as stored.
    image_crop: (top, left, height, width) in fractions of the frame (crop_box), cut before the resize; () = none.
    Negative indices count from the end, like a list.
    """

    def __init__(self, repo_id_or_path, delta_timestamps=None, episodes=None, camera_keys=None, keys_arg="camera_keys",
                 cache_dir=None, image_size=None, image_crop=()):
        self.root = _resolve_root(repo_id_or_path)
        self.image_size, self.image_crop = image_size, tuple(image_crop or ())
        self.cache_dir = FRAME_CACHE if cache_dir is None else cache_dir  # '' = no frame cache
        self.meta = meta = LeRobotDatasetMetadata(self.root)
        self.fps, self.features, self.keys_arg = meta.fps, meta.features, keys_arg
        self.delta_indices = self._check_deltas(delta_timestamps or {})
        self.camera_keys = list(dict.fromkeys(meta.camera_keys if camera_keys is None else camera_keys))
        unknown = [k for k in self.camera_keys if k not in meta.camera_keys]
        if unknown:
            raise KeyError(f"{keys_arg} {unknown} are not cameras of {self.root}; its cameras are {meta.camera_keys}")
        all_ids = [e["episode_index"] for e in meta.episodes]
        unknown = set(episodes or []) - set(all_ids)
        if unknown:
            raise ValueError(f"episodes {_ids(unknown)} are not in {self.root}, whose episodes are {_ids(all_ids)}")
        self.episodes = eps = [e for e in meta.episodes if episodes is None or e["episode_index"] in set(episodes)]
        self.columns = self._load_columns(eps)  # {key: np.ndarray (N, ...)}
        ep_idx = self.columns["episode_index"]
        # per-row start/end (relative row indices) of the row's episode, for windows and padding
        bounds = np.flatnonzero(np.diff(ep_idx)) + 1
        starts, ends = np.r_[0, bounds], np.r_[bounds, len(ep_idx)]
        self.ep_start, self.ep_end = np.repeat(starts, ends - starts), np.repeat(ends, ends - starts)
        for e, s, n in zip(eps, starts, ends - starts):
            if n != e["length"] or ep_idx[s] != e["episode_index"]:
                raise ValueError(f"{self.root}: episode {e['episode_index']} has {n} rows in data/ but its metadata "
                                 f"says length {e['length']}; the dataset is corrupt, re-download or re-record it")
        self.frames, self.missing = {}, {}  # key -> uint8 (N,H,W,3); key -> error raised when that camera is used
        for key in self.camera_keys:
            try:
                self.frames[key] = self._load_camera(key, eps)
            except FileNotFoundError as e:  # e.g. videos absent upstream: numeric features still usable
                self.missing[key] = e
        self._image_table = None  # PNG bytes are decoded; free them

    def _check_deltas(self, delta_timestamps):
        """Seconds -> frame offsets; each delta must land on a frame (a multiple of 1/fps within tolerance)."""
        out = {}
        for key, deltas in delta_timestamps.items():
            if key not in self.features:
                raise KeyError(f"delta_timestamps names {key!r} but the dataset has no such feature; "
                               f"it has {sorted(self.features)}")
            bad = [d for d in deltas if abs(d * self.fps - round(d * self.fps)) / self.fps > TOLERANCE_S]
            if bad:
                raise ValueError(f"delta_timestamps[{key!r}] = {bad} do not land on a frame at fps={self.fps} "
                                 f"(tolerance {TOLERANCE_S}s); use multiples of 1/{self.fps} s")
            out[key] = np.array([round(d * self.fps) for d in deltas], dtype=np.int64)
        return out

    def _check_files(self, eps, key=None):
        """Raise if an episode's parquet (key=None) or mp4 is absent, naming the episodes that can be read."""
        missing = {e["episode_index"]: p for e in eps if not (p := self.meta.episode_file(e, key)).exists()}
        if not missing:
            return
        present = [e["episode_index"] for e in eps if e["episode_index"] not in missing]
        hints = [f"pass episodes={_ids(present)} to read only those"] if present else []
        if key:
            hints.append(f"leave {key!r} out of {self.keys_arg} ({self.keys_arg}=[] reads only the numeric features)")
        raise FileNotFoundError(
            f"{next(iter(missing.values()))} is missing: the {f'{key!r} videos' if key else 'data files'} of episodes "
            f"{_ids(missing)} are not in {self.root}" + (f"; episodes {_ids(present)} have theirs" if present else "")
            + "; " + (", or ".join(hints) or "re-download the dataset"))

    def _load_columns(self, eps):
        numeric = [k for k, f in self.features.items() if f["dtype"] not in CAMERA_DTYPES]
        self._check_files(eps)
        tables = []
        for path in dict.fromkeys(self.meta.episode_file(e) for e in eps):
            t = _read_parquet(path)
            missing = set(numeric) - set(t.column_names)
            if missing:
                raise ValueError(f"{path} lacks columns {sorted(missing)} listed in meta/info.json; it is corrupt")
            tables.append(t.select(numeric + self.meta.image_keys))
        table = pa.concat_tables(tables)  # v3.0 files hold other episodes too: keep ours, in frame order
        table = table.filter(pc.is_in(table["episode_index"], pa.array([e["episode_index"] for e in eps])))
        table = table.sort_by("index")
        self._image_table = table.select(self.meta.image_keys)
        cols = {k: _arrow_to_numpy(table.column(k), self.features[k]["shape"]) for k in numeric}
        for k, x in cols.items():
            if x.dtype.kind == "f" and not np.isfinite(x).all():
                bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(1))[0]
                raise ValueError(f"{self.root}: feature {k!r} has NaN/inf at episode {cols['episode_index'][bad]} "
                                 f"frame {cols['frame_index'][bad]}; fix the recording or drop that episode "
                                 f"with episodes=[...]")
        return cols

    def _load_camera(self, key, eps):
        """Every frame of one camera, decoded once, into uint8 (N, H, W, 3): from the frame cache when it holds
        them, else decoded (into the cache, which appears whole or not at all: its description is written last)."""
        src_shape, video = tuple(self.features[key]["shape"]), self.features[key]["dtype"] == "video"
        crop_hw = crop_box(src_shape[:2], self.image_crop)[2:]  # what the crop keeps, before the resize
        hw = _target_hw(crop_hw, self.image_size)
        shape = (*hw, src_shape[2])
        if not same_aspect(crop_hw, hw):  # refused now, before any decoding
            raise ValueError(f"image_size={self.image_size}: {key} is {crop_hw[0]}x{crop_hw[1]} (HxW"
                             f"{', after image_crop' if self.image_crop else ''}), a different aspect ratio; pass an "
                             f"int height (the width follows) or a size of the same aspect ratio")
        if video:
            self._check_files(eps, key)
        sources = dict.fromkeys(self.meta.episode_file(e, key if video else None) for e in eps)
        path = None
        if self.cache_dir:
            path, desc = _cache_entry(self.cache_dir, self.root, key, sources, [e["episode_index"] for e in eps], shape,
                                      self.image_crop)
            frames = _open_cached(path, desc, len(self), shape)
            if frames is not None:
                return frames
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")  # one per process: two openers never mix
            out = _FrameFile(tmp, len(self), shape)
        else:
            out = _frame_buffer(len(self), shape, key)
        try:
            self._decode_camera(key, eps, out, video, src_shape, hw)
        except BaseException:
            if path is not None:  # a half-decoded cache file is of no use to anyone
                out.close()
                tmp.unlink(missing_ok=True)
            raise
        if path is None:
            return out
        out.close(sync=True)
        os.replace(tmp, path)
        _write_json(desc, path.with_suffix(".json"))  # last: the mark that the frames are whole
        return np.load(path, mmap_mode="r")

    def _decode_camera(self, key, eps, out, video, src_shape, hw):
        """Decode every frame of one camera (stored at src_shape) into out, cropped and resized to hw: each mp4
        once, front to back, in parallel over files (PyAV releases the GIL while decoding), or the PNG bytes inside
        the parquet."""
        if not video:
            blobs = self._image_table.column(key).combine_chunks().field("bytes").to_pylist()
            if any(b is None for b in blobs):
                raise ValueError(f"{self.root}: image feature {key!r} has rows without embedded PNG bytes")
            with ThreadPoolExecutor(4) as pool:  # PIL releases the GIL while decoding
                frames = pool.map(lambda b: _decode_png(b, src_shape, hw, self.image_crop), blobs, chunksize=256)
                for i, img in enumerate(tqdm(frames, total=len(blobs),
                                             desc=f"decoding {key}", disable=len(blobs) < 5000, leave=False)):
                    out[i] = img
            return
        ts, by_file = self.columns["timestamp"].astype(np.float64), {}
        for ep, row in zip(eps, np.cumsum([0] + [e["length"] for e in eps]).tolist()):
            q, dest = by_file.setdefault(self.meta.episode_file(ep, key), ([], []))
            q.extend(ep.get(f"videos/{key}/from_timestamp", 0.0) + ts[row:row + ep["length"]])
            dest.extend(range(row, row + ep["length"]))

        def decode(item):
            path, (q, dest) = item
            order = np.argsort(q, kind="stable")
            _decode_video_into(path, np.asarray(q)[order], np.asarray(dest)[order], out, src_shape, hw, self.image_crop)
            return len(q)

        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool, \
                tqdm(total=len(self), desc=f"decoding {key}", unit="frame", disable=len(self) < 5000) as bar:
            for n in pool.map(decode, by_file.items()):
                bar.update(n)

    def _index(self, idx):
        """Indices (any shape) -> rows 0..N-1: negative ones count from the end, like a Python list."""
        idx, n = np.asarray(idx), len(self)
        bad = (idx < -n) | (idx >= n)
        if bad.any():
            raise IndexError(f"index {idx[bad].ravel()[:5].tolist()} is out of range for the {n} frames of "
                             f"{self.root} (valid: {-n} to {n - 1})")
        return idx % n

    def window(self, idx, offsets):
        """Rows idx+offsets clamped to each row's episode, and where they fell outside it.
        idx (B,) int rows (0..N-1), offsets (T,) int -> rows (B, T), is_pad (B, T) bool."""
        idx = np.asarray(idx)[..., None]
        q = idx + offsets
        start, end = self.ep_start[idx], self.ep_end[idx]
        return np.clip(q, start, end - 1), (q < start) | (q >= end)

    def camera(self, key):
        if key in self.missing:
            raise self.missing[key]
        return self.frames[key]

    def __len__(self):
        return len(self.columns["index"])

    def __getitem__(self, i):
        i, item = self._index(i), {}
        for key in [*self.columns, *self.camera_keys]:
            arr = self.camera(key) if key in self.camera_keys else self.columns[key]
            if key in self.delta_indices:
                rows, pad = self.window(i, self.delta_indices[key])
                x, item[f"{key}_is_pad"] = arr[rows], torch.from_numpy(pad)
            else:
                x = arr[i]
            x = torch.from_numpy(np.array(x))
            if key in self.camera_keys:  # uint8 (..., H, W, C) -> float (..., C, H, W) in [0, 1], like lerobot
                x = x.movedim(-1, -3).float() / 255.0
            item[key] = x
        item["task"] = self.meta.tasks[int(self.columns["task_index"][i])]
        return item


# -----------------------------------------------------------------------------
# model batches: images (B, cams, 3, H, W) uint8, proprio (B, D), instruction list[str],
# action (B, chunk, A) with action_is_pad (B, chunk)


def augment_batch(images, crop_scale=(0.8, 1.0), crop_ratio=(3 / 4, 4 / 3), max_rotate_deg=5.0, max_translate=0.05,
                  brightness=0.2, contrast=0.2, saturation=0.2, generator=None):
    """RandomResizedCrop + small RandomAffine + ColorJitter for a whole batch, in plain torch.

    images (..., 3, H, W) uint8 or float [0,1] (e.g. (B, cams, ...) or (B, n_obs, cams, ...)) -> same shape and
    dtype, each image augmented independently.
    Crop, rotation and shift are one affine map per image, so the batch is resampled by a single
    grid_sample call (Spatial Transformer, Jaderberg 2015); brightness, contrast and saturation are
    linear in RGB, so they fold into one 3x3 matrix + offset per image (one bmm instead of ~15 passes).
    """
    C, H, W = images.shape[-3:]
    x = images.reshape(-1, C, H, W).float()
    M, dev = x.shape[0], images.device
    x = x / 255.0 if images.dtype == torch.uint8 else x

    def u(lo, hi):  # (M,) uniform samples
        return (torch.rand(M, generator=generator) * (hi - lo) + lo).to(dev)

    # RandomResizedCrop: the crop covers `area` of the image with aspect `ratio`; in grid_sample's
    # normalized coords [-1, 1] a crop of relative size (sw, sh) centred at (cx, cy) is x' = sw*x + cx.
    area, ratio = u(*crop_scale), torch.exp(u(np.log(crop_ratio[0]), np.log(crop_ratio[1])))
    sw, sh = torch.sqrt(area * ratio).clamp(max=1.0), torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - sw) * u(-1, 1) + 2 * u(-max_translate, max_translate)
    cy = (1 - sh) * u(-1, 1) + 2 * u(-max_translate, max_translate)
    a = torch.deg2rad(u(-max_rotate_deg, max_rotate_deg))
    theta = torch.stack([sw * torch.cos(a), -sh * torch.sin(a), cx, sw * torch.sin(a), sh * torch.cos(a), cy], 1)
    if not (theta - torch.tensor([1.0, 0, 0, 0, 1, 0], device=dev)).abs().max() == 0:  # skip exact identity
        # affine_grid by broadcasting (3x faster than its bmm on CPU): pixel centres in [-1, 1]
        px, py = (torch.arange(W, device=dev) * 2 + 1) / W - 1, (torch.arange(H, device=dev) * 2 + 1) / H - 1
        th, grid = theta.view(M, 6, 1), torch.empty(M, H, W, 2, device=dev)  # grid (M, H, W, 2) = theta @ (x, y, 1)
        torch.add((th[:, 0] * px)[:, None, :], (th[:, 1] * py + th[:, 2])[:, :, None], out=grid[..., 0])
        torch.add((th[:, 3] * px)[:, None, :], (th[:, 4] * py + th[:, 5])[:, :, None], out=grid[..., 1])
        x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # ColorJitter as y = A x + t: brightness b scales; contrast c pulls toward the mean gray m;
    # saturation s pulls each pixel toward its gray L.x (ITU-R 601 luma L, as torchvision).
    b, c, s = u(1 - brightness, 1 + brightness), u(1 - contrast, 1 + contrast), u(1 - saturation, 1 + saturation)
    luma = torch.tensor([0.299, 0.587, 0.114], device=dev)
    m = torch.einsum("c,mc->m", luma, x.mean((2, 3)))  # (M,) mean gray
    sat = s.view(M, 1, 1) * torch.eye(3, device=dev) + (1 - s).view(M, 1, 1) * luma.view(1, 1, 3)  # (M, 3, 3)
    A = sat * (b * c).view(M, 1, 1)
    t = ((1 - c) * b * m).view(M, 1)  # rows of sat sum to 1, so the contrast offset passes through unchanged
    x = (torch.bmm(A, x.reshape(M, C, H * W)) + t.unsqueeze(-1)).clamp_(0, 1).view(images.shape)
    return (x * 255 + 0.5).to(torch.uint8) if images.dtype == torch.uint8 else x.to(images.dtype)


def shift_batch(images, pad, generator=None):
    """Random shift (DrQ, Kostrikov et al. 2020): pad each image by `pad` pixels (edge replicated) and crop
    it back at a random integer offset, independently per image. On a fixed camera with little data this
    is the augmentation that matters (Diffusion Policy's random crop is the same idea): the policy cannot
    key on exact pixel positions, yet the scene's geometry is unchanged. (..., 3, H, W) -> same shape."""
    shape, (H, W) = images.shape, images.shape[-2:]
    x = images.reshape(-1, *shape[-3:])
    padded = torch.nn.functional.pad(x.float() if x.dtype == torch.uint8 else x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, x.shape[0]), generator=generator).tolist()
    out = torch.stack([p[:, i:i + H, j:j + W] for p, i, j in zip(padded, dy, dx)])  # slices: 4x faster than a gather
    return out.to(images.dtype).reshape(shape)


def mirror_batch(batch, line, p=0.5, generator=None):
    """Reflect a random fraction p of the samples (1 = all) across the line x + y = `line` (a task spec's
    mirror_line): xy of the state and of every action -> (line - y, line - x), and each image about its
    anti-diagonal, which is where that line lies in a square top-down picture of the [0, line]^2 arena (row = y,
    column = x). Where the task is symmetric about the line (PushT: the goal T's stem lies on it), a mirrored
    demonstration is as valid as the original, so this doubles the distinct states the policy sees (symmetry as
    data augmentation: Lin et al. 2020, "Invariant Transform Experience Replay"). Returns a new batch; the first
    two state and action dims must be x, y, and either may be absent (a policy's input has no action)."""
    images = batch["images"]
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"mirror_batch reflects about the picture's diagonal: it needs square images, got "
                         f"{tuple(images.shape[-2:])}; turn --augment_mirror off for this dataset")
    flip = torch.rand(images.shape[0], generator=generator) < p  # (B,)
    per_sample = lambda x: flip.view(-1, *[1] * (x.dim() - 1))  # (B, 1, ...): broadcasts against x
    out = dict(batch)
    for key in ("images", "depth"):  # (B, ..., H, W): every picture of a flipped sample, all cameras and steps
        if key in batch:
            out[key] = torch.where(per_sample(batch[key]), batch[key].flip(-2, -1).transpose(-2, -1), batch[key])
    for key in ("proprio", "action"):  # whichever the batch has
        if key in batch:
            xy = batch[key][..., :2]
            out[key] = batch[key].clone()
            out[key][..., :2] = torch.where(per_sample(xy), torch.stack([line - xy[..., 1], line - xy[..., 0]], -1), xy)
    return out


class ManipulationDataset(torch.utils.data.Dataset):
    """LeRobot frames -> the model's batch convention. Sample i is frame i of the dataset:
        observations at t-n_obs+1..t -> images (cams, 3, H, W) uint8, proprio (D,); with n_obs_steps > 1
                                        images (n_obs, cams, 3, H, W), proprio (n_obs, D)
        actions t .. t+chunk-1       -> action (chunk, A), action_is_pad (chunk,) True past the episode end
    The windows are lerobot's delta_timestamps ({key: [seconds relative to t]}), checked against the
    dataset's fps; steps before an episode's start repeat its first frame (as Diffusion Policy pads).
    instruction=None conditions every frame on its episode's own task text (meta/tasks). image_size, image_crop:
    the cameras' decoded size and crop (LeRobotDataset; None, () = as stored).
    Batches are gathered with numpy fancy indexing (get_batch); augment them with augment_batch / shift_batch."""

    def __init__(self, lerobot_dataset_or_path, image_keys, state_key="observation.state", action_key="action",
                 chunk_size=16, instruction=None, depth_keys=None, episodes=None, n_obs_steps=1, image_size=None,
                 image_crop=()):
        ds = lerobot_dataset_or_path
        if not isinstance(ds, LeRobotDataset):
            ds = LeRobotDataset(ds, episodes=episodes, camera_keys=image_keys, keys_arg="image_keys",
                                image_size=image_size, image_crop=image_crop)
        for key in [action_key, state_key, *(depth_keys or [])]:
            if key is not None and key not in ds.features:
                raise KeyError(f"{key!r} is not a feature of {ds.root}; it has {sorted(ds.features)}")
        unknown = [k for k in image_keys if k not in ds.camera_keys]
        if unknown:
            raise KeyError(f"image_keys {unknown}: the cameras of {ds.root} are {ds.meta.camera_keys}, of which this "
                           f"LeRobotDataset decoded {ds.camera_keys} (its camera_keys)")
        self.ds, self.image_keys, self.depth_keys = ds, list(image_keys), list(depth_keys or [])
        self.state_key, self.action_key, self.instruction = state_key, action_key, instruction
        self.images = [ds.camera(k) for k in self.image_keys]  # raises now if a video is missing
        self.n_obs_steps = n_obs_steps
        obs_keys = [k for k in [*self.image_keys, state_key, *self.depth_keys] if k is not None]
        self.delta_timestamps = {k: [(i - n_obs_steps + 1) / ds.fps for i in range(n_obs_steps)] for k in obs_keys}
        self.delta_timestamps[action_key] = [i / ds.fps for i in range(chunk_size)]
        deltas = ds._check_deltas(self.delta_timestamps)  # seconds -> frame offsets, checked against fps
        self.offsets = deltas[action_key]
        self.obs_offsets = deltas[obs_keys[0]] if obs_keys else np.zeros(n_obs_steps, np.int64)

    def __len__(self):
        return len(self.ds)

    def tasks(self):
        """The distinct task texts of the frames, most frequent first (what the policy is conditioned on)."""
        if self.instruction:
            return [self.instruction]
        idx, counts = np.unique(self.ds.columns["task_index"], return_counts=True)
        return [self.ds.meta.tasks[int(i)] for i in idx[np.argsort(-counts, kind="stable")]]

    def get_batch(self, idx):
        """idx (B,) ints (negative ones count from the end) -> batch dict in the model convention."""
        ds, idx = self.ds, self.ds._index(idx)
        obs, _ = ds.window(idx, self.obs_offsets)  # (B, n_obs) rows, clamped to the episode start
        obs = obs[:, 0] if self.n_obs_steps == 1 else obs
        batch = {}
        if self.image_keys:
            im = np.stack([im[obs] for im in self.images], -4)  # (B, [n_obs,] N, H, W, 3)
            batch["images"] = torch.from_numpy(im).movedim(-1, -3).contiguous()  # (B, [n_obs,] N, 3, H, W)
        if self.depth_keys:
            d = np.stack([np.asarray(ds.columns[k][obs], np.float32) for k in self.depth_keys], -4)
            batch["depth"] = torch.from_numpy(d).movedim(-1, -3)
        if self.state_key is not None:
            batch["proprio"] = torch.from_numpy(ds.columns[self.state_key][obs].astype(np.float32))
        rows, pad = ds.window(idx, self.offsets)
        batch["action"] = torch.from_numpy(ds.columns[self.action_key][rows].astype(np.float32))  # (B, chunk, A)
        batch["action_is_pad"] = torch.from_numpy(pad)
        batch["instruction"] = [self.instruction or ds.meta.tasks[int(t)] for t in ds.columns["task_index"][idx]]
        return batch

    def __getitem__(self, i):
        """An int -> one sample (no batch dim); a list of ints -> a batch (what create_dataloader asks for)."""
        if np.ndim(i) == 1:
            return self.get_batch(i)
        return {k: v[0] for k, v in self.get_batch([i]).items()}


def dataset_spec(repo_id_or_path, cameras=None):
    """A dataset with no simulator -> what train_bc.py reads from a tasks.TASKS entry: its cameras (all, or the keys
    in `cameras`: Bridge's image_1..3 are often blank), state key, fps and frame size, from meta/info.json alone
    (nothing is decoded), and its local root (a hub id is resolved once)."""
    root = _resolve_root(repo_id_or_path)
    meta = LeRobotDatasetMetadata(root)
    missing = [k for k in ("observation.state", "action") if k not in meta.features]
    if missing or not meta.camera_keys:
        raise ValueError(f"{root} has no {missing or 'camera'} feature: a policy needs cameras, "
                         f"'observation.state' and 'action'; its features are {sorted(meta.features)}")
    keys = list(cameras or meta.camera_keys)
    unknown = [k for k in keys if k not in meta.camera_keys]
    if unknown:
        raise ValueError(f"cameras {unknown} are not cameras of {root}; its cameras are {meta.camera_keys}")
    return dict(root=str(root), fps=meta.fps, image_keys=keys, state_key="observation.state",
                image_size=meta.features[keys[0]]["shape"][0], episodes=[e["episode_index"] for e in meta.episodes])


def action_limits(ds):
    """The shield's limits of a policy trained on ds (a Manipulation/LeRobotDataset) with no task table entry: the
    range of its actions, and 1.5x the largest change of each action dim between two consecutive frames of an
    episode (the demonstrator's own speed limit, with a margin)."""
    ds = getattr(ds, "ds", ds)
    a = ds.columns["action"].reshape(len(ds), -1).astype(np.float64)
    same = ds.columns["episode_index"][1:] == ds.columns["episode_index"][:-1]
    step = np.abs(np.diff(a, axis=0))[same].max(0) if same.any() else np.zeros(a.shape[1])
    low, high = a.min(0), a.max(0)
    return dict(action_low=low.tolist(), action_high=high.tolist(),  # a dim that never moved may move by 1% of its range
                max_step_change=np.maximum(1.5 * step, np.maximum(0.01 * (high - low), 1e-6)).tolist())


def epoch_rows(ds, end_frames=0, end_repeats=1):
    """Rows of one training epoch: each episode's last end_frames frames end_repeats times, every other frame once.
    Human PushT demonstrations stop the moment the T is placed, so the final few-pixel alignment pushes are a small
    share of the frames; repeating them gives the finish more of the gradient. ds: a (Manipulation/LeRobot)Dataset."""
    ds = getattr(ds, "ds", ds)
    rows = np.arange(len(ds))
    if end_frames < 0 or end_repeats < 1 or int(end_repeats) != end_repeats:
        raise ValueError(f"end_frames must be >= 0 and end_repeats a whole number >= 1, got {end_frames}, {end_repeats}")
    return np.repeat(rows, np.where(ds.ep_end - rows <= end_frames, int(end_repeats), 1))  # ep_end - row: 1 = last


def create_dataloader(dataset, batch_size, shuffle=True, num_workers=0, drop_last=True, seed=None):
    """DataLoader that asks ManipulationDataset for whole batches (get_batch: one numpy gather per key)
    instead of B __getitem__ calls + collate."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    base = torch.utils.data.RandomSampler(dataset, generator=gen) if shuffle else torch.utils.data.SequentialSampler(dataset)
    return torch.utils.data.DataLoader(dataset, sampler=torch.utils.data.BatchSampler(base, batch_size, drop_last),
                                       batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)


def frame_to_model_input(frame, image_keys, state_key="observation.state", image_hw=None, image_crop=()):
    """A live env frame {key: uint8 (H, W, 3) / float (D,)} -> one sample (no batch dim) like ManipulationDataset.
    image_crop: the training data's crop (crop_box), cut first; image_hw = the model's (H, W): a camera frame of
    another size with the same aspect ratio is resized (bilinear, antialiased); another aspect ratio is an error
    naming both sizes (a different camera)."""
    images = torch.stack([torch.from_numpy(np.ascontiguousarray(frame[k])).permute(2, 0, 1) for k in image_keys])
    if images.dtype != torch.uint8:
        raise ValueError(f"images {image_keys} must be uint8 (H, W, 3) like the dataset, got {images.dtype}")
    if image_crop:
        y0, x0, h, w = crop_box(images.shape[-2:], image_crop)
        images = images[..., y0:y0 + h, x0:x0 + w]
    out = {"images": resize_images(images, image_hw) if image_hw is not None else images}
    if state_key is not None:
        out["proprio"] = torch.as_tensor(np.asarray(frame[state_key], np.float32))
    return out


def same_aspect(hw, other_hw):
    """Can frames of size hw be resized to other_hw without distortion (aspect ratios within 2%)?"""
    return abs(hw[0] / hw[1] - other_hw[0] / other_hw[1]) <= 0.02


def resize_images(images, image_hw):
    """uint8 (..., 3, h, w) -> (..., 3, H, W) for image_hw = (H, W); identity when the size already matches."""
    (h, w), (H, W) = images.shape[-2:], image_hw
    if (h, w) == (H, W):
        return images
    if not same_aspect((h, w), (H, W)):
        raise ValueError(f"camera frames are {h}x{w} (HxW) but the policy was trained on {H}x{W} frames, a different "
                         f"aspect ratio: render or crop the camera to {H}x{W} (the training data's size)")
    x = torch.nn.functional.interpolate(images.flatten(0, -4).float(), size=(H, W), mode="bilinear",
                                        antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).view(*images.shape[:-2], H, W)
