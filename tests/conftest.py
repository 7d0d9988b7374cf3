"""Shared by the test files: run_scripts (several script commands in one Python process: one torch import), the
check that a checkpoint folder of any producer (train_bc.py, its best/, train_multitask.py, train_dagger.py,
train_gail.py) runs through eval.py, deploy.py export and deploy.py run, and hub-shaped dataset stand-ins."""
import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the decoded-frame cache (data.FRAME_CACHE) of this run and its subprocesses: a folder of its own, removed at exit
os.environ["NANOVLA_FRAME_CACHE"] = _frame_cache = tempfile.mkdtemp(prefix="nanovla_test_frames_")
atexit.register(shutil.rmtree, _frame_cache, ignore_errors=True)


# One interpreter runs a list of script commands in turn, each as `python SCRIPT ARGS` would (runpy, argv set, its
# own stdout / stderr / exit code): importing torch + transformers is a few seconds per process, most of a tiny run.
RUN_SCRIPTS = """
import contextlib, io, json, logging, runpy, sys, traceback
results = []
for argv in COMMANDS:
    sys.argv, out, err = argv, io.StringIO(), io.StringIO()
    logging.root.handlers.clear()  # a script's logging.basicConfig binds this command's stderr, as a new process would
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_path(argv[0], run_name='__main__')
            code = 0
        except SystemExit as e:  # as the interpreter would exit: None -> 0, an int as is, a message -> printed, 1
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else print(e.code, file=sys.stderr) or 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append(dict(returncode=code, stdout=out.getvalue(), stderr=err.getvalue()))
    if code and STOP_AT_FAILURE:
        break
json.dump(results, open(RESULTS_FILE, 'w'))
"""


def run_scripts(commands, cwd=REPO, env=None, check=True, timeout=600):
    """Run [script, *args] commands one after another in one Python process (see RUN_SCRIPTS), in `cwd`.
    -> one SimpleNamespace(returncode, stdout, stderr) per command. check: each must succeed; the first that exits
    nonzero is the last one run (the later ones would start from its missing outputs) and fails the test with its
    output. check=False runs them all, for a test that expects some to fail."""
    from types import SimpleNamespace
    commands = [[str(a) for a in command] for command in commands]
    with tempfile.TemporaryDirectory() as tmp:
        results_file = os.path.join(tmp, 'results.json')
        code = f'COMMANDS, STOP_AT_FAILURE, RESULTS_FILE = {commands!r}, {check!r}, {results_file!r}\n'
        r = subprocess.run([sys.executable, '-c', code + RUN_SCRIPTS], cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=timeout)
        assert r.returncode == 0 and os.path.exists(results_file), f"the script runner failed:\n{r.stderr[-3000:]}"
        results = [SimpleNamespace(**res) for res in json.load(open(results_file))]
    for command, res in zip(commands, results):
        assert not check or res.returncode == 0, f"{' '.join(command)}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return results


def check_checkpoint_runs(ckpt, task=''):
    """One short episode in eval.py, an export (checked against the eager model by deploy.py), and one short
    episode of the control loop with the safety shield in the simulator; `task` picks a multi-task policy's task."""
    t = [f'--task={task}'] if task else []
    commands = [['eval.py', f'--ckpt={ckpt}', '--episodes=1', '--max_steps=8', '--videos=0',
                 f'--out={ckpt}/eval_check.json'] + t,
                ['deploy.py', 'export', f'--ckpt={ckpt}', f'--out={ckpt}/check.pt'] + t,
                ['deploy.py', 'run', f'--policy={ckpt}', '--robot=sim', '--episodes=1', '--max_steps=8', '--rate=0'] + t]
    results = run_scripts(commands)  # each must succeed
    metrics = json.load(open(os.path.join(ckpt, 'eval_check.json')))
    assert metrics['n_episodes'] == 1 and (not task or metrics['task'] == task)
    assert os.path.getsize(os.path.join(ckpt, 'check.pt')) > 0
    assert 'over 1 episodes' in results[2].stdout  # deploy run's summary line


def hub_stand_in(hub_dir, repo_id, version, fps, cameras, state_dim, action_dim, episodes=3, length=12,
                 task='put the bowl on the plate'):
    """A dataset with a hub dataset's schema (codebase version, fps, camera keys and (H, W), state and action
    sizes), placed where huggingface_hub keeps a downloaded `repo_id`, so that the code reads it offline through
    snapshot_download as it reads a user's download. v3.0 comes from our writer (AV1, as the hub's); v2.0 is
    written as lerobot <= 0.2 wrote it (one parquet and one AV1 mp4 per camera per episode, JSON-lines meta,
    stats.json). Frame t of episode e is filled with (20 t + 60 e) % 256. -> the environment to run a script in
    (HF_HUB_CACHE, offline)."""
    import av
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pathlib import Path
    sys.path.insert(0, REPO)
    import dataset_writer

    repo_dir = Path(hub_dir) / ('datasets--' + repo_id.replace('/', '--'))
    root = repo_dir / 'snapshots' / ('0' * 40)
    features = {k: {'dtype': 'video', 'shape': [h, w, 3], 'names': ['height', 'width', 'channels']}
                for k, (h, w) in cameras.items()}
    features.update({'observation.state': {'dtype': 'float32', 'shape': [state_dim], 'names': None},
                     'action': {'dtype': 'float32', 'shape': [action_dim], 'names': None}})
    rng = np.random.default_rng(0)
    eps = [[{**{k: np.full((h, w, 3), (20 * t + 60 * e) % 256, np.uint8) for k, (h, w) in cameras.items()},
             'observation.state': rng.normal(size=state_dim).astype(np.float32),
             'action': rng.normal(size=action_dim).astype(np.float32)} for t in range(length)] for e in range(episodes)]
    if version == 'v3.0':
        writer = dataset_writer.LeRobotDatasetWriter(root, fps=fps, features=features, use_videos=True, vcodec='av1')
        for frames in eps:
            for frame in frames:
                writer.add_frame(frame, task=task)
            writer.save_episode()
        writer.finalize()
    else:
        info = {'codebase_version': version, 'robot_type': 'stand-in', 'total_episodes': episodes, 'fps': fps,
                'total_frames': episodes * length, 'total_tasks': 1, 'chunks_size': 1000,
                'features': features | dataset_writer.DEFAULT_FEATURES,
                'data_path': 'data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet',
                'video_path': 'videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4'}
        (root / 'meta').mkdir(parents=True)
        (root / 'meta/info.json').write_text(json.dumps(info))
        (root / 'meta/tasks.jsonl').write_text(json.dumps({'task_index': 0, 'task': task}))
        (root / 'meta/episodes.jsonl').write_text('\n'.join(
            json.dumps({'episode_index': e, 'tasks': [task], 'length': length}) for e in range(episodes)))
        all_frames = [f for frames in eps for f in frames]
        stats = {k: {s: v.tolist() for s, v in dataset_writer.compute_stats(np.stack([f[k] for f in all_frames])).items()}
                 for k in features}
        (root / 'meta/stats.json').write_text(json.dumps(stats))
        for e, frames in enumerate(eps):
            table = pa.table({'observation.state': [f['observation.state'].tolist() for f in frames],
                              'action': [f['action'].tolist() for f in frames],
                              'timestamp': pa.array(np.arange(length, dtype=np.float32) / fps),
                              'frame_index': np.arange(length), 'episode_index': np.full(length, e),
                              'index': np.arange(e * length, (e + 1) * length), 'task_index': np.zeros(length, int)})
            (root / 'data/chunk-000').mkdir(parents=True, exist_ok=True)
            pq.write_table(table, root / f'data/chunk-000/episode_{e:06d}.parquet')
            for k, (h, w) in cameras.items():
                path = root / f'videos/chunk-000/{k}/episode_{e:06d}.mp4'
                path.parent.mkdir(parents=True, exist_ok=True)
                with av.open(str(path), 'w') as c:
                    s = c.add_stream('libsvtav1', rate=fps)
                    s.width, s.height, s.pix_fmt = w, h, 'yuv420p'
                    for f in frames:
                        c.mux(s.encode(av.VideoFrame.from_ndarray(f[k], format='rgb24')))
                    c.mux(s.encode())
    (repo_dir / 'refs').mkdir()
    (repo_dir / 'refs' / 'main').write_text('0' * 40)
    return dict(os.environ, HF_HUB_CACHE=str(hub_dir), HF_HUB_OFFLINE='1')
