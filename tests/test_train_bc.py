"""train_bc.py end to end on a tiny synthetic dataset: every head trains and leaves a checkpoint
eval.py loads; --resume reproduces the uninterrupted losses; DDP keeps ranks identical; a NaN
loss stops the run with a message; configurator overrides reach the script."""
import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from conftest import hub_stand_in, run_scripts  # noqa: E402
TINY = ['--vision_encoder=cnn', '--batch_size=8', '--warmup_iters=2', '--log_interval=1', '--eval_interval=0',
        '--final_eval_episodes=0', '--augment=True']


@pytest.fixture(scope='module')
def tiny_dataset(tmp_path_factory):
    """3 PushT-shaped episodes of 24 frames: random images, a smooth action that follows the state."""
    import dataset_writer
    root = tmp_path_factory.mktemp('ds') / 'pusht_tiny'
    features = {
        'observation.image': {'dtype': 'image', 'shape': [96, 96, 3], 'names': ['height', 'width', 'channels']},
        'observation.state': {'dtype': 'float32', 'shape': [2], 'names': ['x', 'y']},
        'action': {'dtype': 'float32', 'shape': [2], 'names': ['x', 'y']},
    }
    writer = dataset_writer.LeRobotDatasetWriter(root, fps=10, features=features)
    rng = np.random.default_rng(0)
    for _ in range(3):
        pos = rng.uniform(100, 400, size=2)
        for t in range(24):
            img = rng.integers(0, 255, size=(96, 96, 3), dtype=np.uint8)
            act = pos + 10 * np.array([np.cos(t / 4), np.sin(t / 4)])
            writer.add_frame({'observation.image': img, 'observation.state': pos.astype(np.float32),
                              'action': act.astype(np.float32)}, task='Push the T-shaped block onto the target')
            pos = act
        writer.save_episode()
    writer.finalize()
    return str(root)


def train(args, cwd=REPO, env=None, check=True):
    r = subprocess.run([sys.executable, 'train_bc.py', '--task=pusht'] + args, cwd=cwd, capture_output=True,
                       text=True, env=env, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"train_bc.py failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def train_forked(jobs):
    """Run train_bc.py once per job, side by side, each forked from one process that imported torch and
    transformers once (those imports are most of a tiny run's time). jobs: [(out_dir, kill_at, argv)]: kill_at
    > 0 kills that run at its kill_at-th file operation in out_dir (see FORKED_RUNS). -> [(exit code, stderr tail)]."""
    spec = [dict(out=out, kill_at=k, argv=argv) for out, k, argv in jobs]
    r = subprocess.run([sys.executable, '-c', FORKED_RUNS, json.dumps(spec)], cwd=REPO, capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr[-3000:]
    codes = json.loads(r.stdout.strip().splitlines()[-1])
    return [(rc, open(out + '.err').read()[-3000:]) for rc, (out, _, _) in zip(codes, jobs)]


def losses(out_dir):
    return {r['iter']: r['loss'] for r in map(json.loads, open(os.path.join(out_dir, 'log.jsonl'))) if 'loss' in r}


HEADS = ['mlp', 'gaussian', 'mixture', 'diffusion', 'flow', 'transformer']


@pytest.fixture(scope='module')
def head_runs(tiny_dataset, tmp_path_factory):
    """One 20-iteration train_bc.py run per head, all at once: {head: (out_dir, exit code, stderr tail)}."""
    root = tmp_path_factory.mktemp('heads')
    jobs = [(str(root / h), 0, ['--task=pusht', f'--dataset={tiny_dataset}', f'--out_dir={root / h}',
                                f'--action_head_type={h}', '--max_iters=20', '--ckpt_interval=20',
                                '--action_chunk_size=8', '--n_action_steps=4'] + TINY) for h in HEADS]
    return {h: (out, *res) for h, (out, _, _), res in zip(HEADS, jobs, train_forked(jobs))}


@pytest.mark.parametrize('head', HEADS)
def test_every_head_trains_and_eval_loads(head, head_runs):
    out, rc, err = head_runs[head]
    assert rc == 0, err
    log = losses(out)
    assert sorted(log) == list(range(1, 21)) and all(np.isfinite(v) for v in log.values())
    state = json.load(open(os.path.join(out, 'training_state.json')))
    for f in ['model.safetensors', 'config.json', state['tensors'], 'training_state.json',
              'train_config.json', 'curves.png']:
        assert os.path.exists(os.path.join(out, f)), f
    if head not in ('mixture', 'flow', 'transformer'):  # eval.py on the others: DAgger's (mlp), GAIL's (gaussian) and
        return  # best/ (diffusion) checkpoints go through conftest.check_checkpoint_runs
    # eval.py loads the checkpoint and runs it closed-loop in the simulator
    r = subprocess.run([sys.executable, 'eval.py', f'--ckpt={out}', '--episodes=1', '--max_steps=20', '--videos=0'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.load(open(os.path.join(out, 'eval.json')))
    assert 0.0 <= metrics['success_rate'] <= 1.0


def test_ddp_two_gloo_processes_stay_identical(tiny_dataset, tmp_path):
    out = str(tmp_path / 'ddp')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        'train_bc.py', '--task=pusht', f'--dataset={tiny_dataset}', f'--out_dir={out}',
                        '--max_iters=6', '--ckpt_interval=6', '--device=cpu', '--batch_size=4'] + TINY[2:],
                       cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'DDP: parameters identical across 2 ranks' in r.stdout


def test_nan_loss_exits_nonzero_with_message(tiny_dataset, tmp_path):
    r = train([f'--dataset={tiny_dataset}', f'--out_dir={tmp_path / "nan"}', '--max_iters=20',
               '--learning_rate=1e30', '--min_lr=1e30', '--max_grad_norm=0.0'] + TINY, check=False)
    assert r.returncode != 0
    assert 'training diverged' in r.stderr


def test_overrides_reach_the_script(tiny_dataset, tmp_path):
    out = str(tmp_path / 'cfg')
    train(TINY + [f'--dataset={tiny_dataset}', f'--out_dir={out}', '--max_iters=3', '--ckpt_interval=3',
                  '--learning_rate=1e-3', '--warmup_iters=0', '--lr_decay_iters=1000', '--image_size=48'])
    cfg = json.load(open(os.path.join(out, 'train_config.json')))
    assert cfg['learning_rate'] == 1e-3 and cfg['max_iters'] == 3
    model_cfg = json.load(open(os.path.join(out, 'config.json')))  # the 96x96 frames were resized while decoding
    assert (model_cfg['config']['image_size'], model_cfg['config']['image_width']) == (48, 0)
    first = json.loads(open(os.path.join(out, 'log.jsonl')).readline())
    assert abs(first['lr'] - 1e-3) < 1e-6  # the cosine schedule starts at the overridden rate


def test_image_crop_reaches_the_checkpoint_and_cuts_live_frames_as_training_did(tiny_dataset, tmp_path):
    """--image_crop keeps part of each frame before --image_size's resize; the checkpoint keeps it, so the policy
    that eval.py loads and the one deploy.py exports see a full live frame exactly as training saw that frame, and
    nothing outside the crop reaches them."""
    import torch

    import data
    import deploy
    import policy
    out, crop = str(tmp_path / 'crop'), (0.25, 0.0, 0.5, 1.0)  # the middle half of the rows: 48x96 -> 24x48
    train(TINY + [f'--dataset={tiny_dataset}', f'--out_dir={out}', '--max_iters=2', '--ckpt_interval=2',
                  f'--image_crop={crop}', '--image_size=24'])
    cfg = json.load(open(os.path.join(out, 'config.json')))['config']
    assert (cfg['image_crop'], cfg['image_size'], cfg['image_width']) == (list(crop), 24, 48)
    trained = data.ManipulationDataset(tiny_dataset, image_keys=['observation.image'], image_crop=crop, image_size=24,
                                       ).get_batch([5])['images']  # what training saw of frame 5
    raw = np.array(data.LeRobotDataset(tiny_dataset, cache_dir='').frames['observation.image'][5])
    raw[:24], raw[72:] = 0, 255  # outside the crop
    frame = {'observation.image': raw, 'observation.state': np.zeros(2, np.float32)}
    r = subprocess.run([sys.executable, 'deploy.py', 'export', f'--ckpt={out}'], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    exported = deploy.ExportedPolicy(*deploy.load_exported(os.path.join(out, 'policy.pt')))
    for pol in (policy.load_policy(out)[1], exported):
        assert torch.equal(pol.observe(frame)[0], trained)
    r = subprocess.run([sys.executable, 'train_bc.py', f'--dataset={tiny_dataset}', '--image_crop=(0.5, 0, 0.6, 1)'],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'fractions of the frame' in r.stderr


def test_compiled_run_resumes_and_saves_plain_weights(tiny_dataset, tmp_path):
    """torch.compile wraps the model (its state_dict keys gain '_orig_mod.'): a run resumed with --compile=True
    loads the plain checkpoint, trains compiled, and saves the plain module's keys again, which eval.py,
    deploy.py and the next --resume read. Dynamo traces and wraps the model as in any compiled run, but every
    graph runs through torch's aot_eager backend (TORCH_COMPILE_OVERRIDE_BACKENDS, a torch debug switch):
    inductor's C++ code generation would take ~2 minutes of the suite on 2 cores and is not what is tested."""
    from safetensors.torch import load_file
    out = str(tmp_path / 'compiled')
    common = [f'--dataset={tiny_dataset}', f'--out_dir={out}', '--hidden_size=32', '--num_heads=2', '--num_layers=1',
              '--cnn_width=8'] + TINY
    train(common + ['--max_iters=2', '--ckpt_interval=2'])
    train(common + ['--max_iters=4', '--ckpt_interval=2', '--resume=True', '--compile=True'],
          env=dict(os.environ, TORCH_COMPILE_OVERRIDE_BACKENDS='>=0:aot_eager'))
    assert sorted(losses(out)) == [1, 2, 3, 4]
    state = json.load(open(os.path.join(out, 'training_state.json')))
    assert state['step'] == 4
    for f in ('model.safetensors', state['tensors']):
        keys = list(load_file(os.path.join(out, f)))
        assert keys and not any('_orig_mod' in k for k in keys), (f, keys[:3])


# Runs train_bc.py once per job, each in a process forked from this one after the heavy imports, with its file
# operations in out_dir counted (and logged to out_dir.ops.log) and the process killed at operation kill_at: before
# an os.replace / os.remove, or halfway through writing a file. Prints the jobs' exit codes as one JSON list.
FORKED_RUNS = r"""
import json, os, runpy, sys, traceback
import torch, transformers, safetensors.torch as st
from transformers import Qwen2Config, Qwen2Model
sys.path.insert(0, os.getcwd())
import data, envs, eval, model, train_common

def run(out, kill_at, argv):
    out = os.path.abspath(out)
    count = [0]
    real_replace, real_remove, real_save = os.replace, os.remove, st.save_file

    def op(name, path):
        if not os.path.abspath(str(path)).startswith(out):
            return False
        count[0] += 1
        with open(out + '.ops.log', 'a') as f:
            f.write(f"{count[0]} {name} {os.path.basename(str(path))}\n")
        return count[0] == kill_at

    def replace(src, dst):
        if op('replace', dst):
            os._exit(137)
        real_replace(src, dst)

    def remove(path):
        if op('remove', path):
            os._exit(137)
        real_remove(path)

    def save_file(tensors, path, *a, **kw):
        kill = op('save_file', path)
        real_save(tensors, path, *a, **kw)
        if kill:  # a kill in the middle of the write: half a file on disk
            size = os.path.getsize(path)
            with open(path, 'r+b') as f:
                f.truncate(size // 2)
            os._exit(137)

    os.replace, os.remove, st.save_file = replace, remove, save_file
    sys.argv = ['train_bc.py'] + argv
    runpy.run_path('train_bc.py', run_name='__main__')

pids = []
for job in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        err = os.open(job['out'] + '.err', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(err, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        code = 1
        try:
            run(job['out'], job['kill_at'], job['argv'])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    pids.append(pid)
print(json.dumps([os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]))
"""


def test_a_kill_at_every_point_of_a_save_resumes_exactly(tiny_dataset, tmp_path):
    """Kill the run at each file operation of the checkpoint save at iteration 8 (and halfway through each
    file it writes), resume: the log has every iteration once, the losses and the final weights equal the
    uninterrupted run's (so a plain stop-and-resume reproduces the uninterrupted run too). Every run uses one
    thread (bitwise-reproducible sums); the runs of a phase are forked side by side from one process that
    imported torch and transformers once (those imports are most of a tiny run's time)."""
    from safetensors.torch import load_file
    common = ['--task=pusht', f'--dataset={tiny_dataset}', '--action_head_type=diffusion', '--ckpt_interval=4',
              '--max_iters=12', '--action_chunk_size=8', '--n_action_steps=4'] + TINY
    full = str(tmp_path / 'full')
    [(rc, err)] = train_forked([(full, 0, [f'--out_dir={full}', *common])])
    assert rc == 0, err
    ops = open(full + '.ops.log').read().split('\n')
    first = next(i for i, o in enumerate(ops) if 'training_state-00000008' in o)
    last = next(i for i, o in enumerate(ops) if 'training_state-00000012' in o) - 1
    points = [int(o.split()[0]) for o in ops[first:last + 1]]
    assert len(points) >= 5, ops  # tensors, their rename, the JSON commit, the old file's removal, the policy
    reference = load_file(os.path.join(full, 'model.safetensors'))
    outs = {k: str(tmp_path / f'kill{k}') for k in points}
    for k, (rc, err) in zip(points, train_forked([(outs[k], k, [f'--out_dir={outs[k]}', *common]) for k in points])):
        assert rc == 137, (k, err)
    for k, (rc, err) in zip(points, train_forked([(outs[k], 0, [f'--out_dir={outs[k]}', *common, '--resume=True'])
                                               for k in points])):
        assert rc == 0, (k, err)
    for k, out in outs.items():
        iters = [json.loads(line)['iter'] for line in open(os.path.join(out, 'log.jsonl'))]
        assert iters == list(range(1, 13)), (k, iters)  # every iteration once, in order
        a, b = losses(full), losses(out)
        assert all(abs(a[i] - b[i]) < 1e-5 * max(1.0, abs(a[i])) for i in a), (k, a, b)
        final = load_file(os.path.join(out, 'model.safetensors'))
        assert all(torch_equal(reference[n], final[n]) for n in reference), k


def torch_equal(a, b):
    import torch
    return torch.equal(a, b)


FAULTS = """
import resource, sys
import numpy as np
import train_common
kept = train_common.keep_freed_memory() if sys.argv[1] == 'keep' else None
def touch_and_free(rounds):  # a training step's pattern: many MiB-sized blocks written, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        blocks = [np.ones(1 << 19) for _ in range(16)]  # 16 x 4 MiB
        del blocks
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
touch_and_free(2)
print(kept, touch_and_free(10))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc',
                    reason="keep_freed_memory tunes glibc's malloc (Linux) only")
def test_cpu_training_keeps_freed_memory_instead_of_faulting_it_in_again():
    """train_common.keep_freed_memory (train_bc.py on a CPU): memory freed by one step is reused by the next
    without page faults; glibc's default returns it to the OS, and the next step faults its pages in again."""
    runs = {}
    for mode in ('default', 'keep'):
        out = subprocess.run([sys.executable, '-c', FAULTS, mode], cwd=REPO, capture_output=True, text=True, check=True)
        kept, faults = out.stdout.split()
        runs[mode] = (kept, int(faults))
    assert runs['keep'][0] == 'True'  # malloc accepted all three settings
    assert runs['default'][1] > 10 * 16384 // 4  # 10 rounds of 64 MiB (16384 pages): here about half fault again
    assert runs['keep'][1] < runs['default'][1] / 20


def test_eval_workers_run_the_same_episodes(head_runs):
    """eval.py --num_workers=2: the episodes, run in two spawned processes that each load the checkpoint, equal
    the single-process run's, seed for seed (the policy and the simulator are deterministic per seed; one torch
    thread per worker changes float sums only in their last bits)."""
    from eval import ManipulationEvaluator
    out = head_runs['mlp'][0]
    ev = ManipulationEvaluator('pusht', n_episodes=3, start_seed=100_000, max_steps=12, progress=False)
    one, two = ev.evaluate(dict(ckpt_dir=out)), ev.evaluate(dict(ckpt_dir=out), num_workers=2)
    keys = ('seed', 'steps', 'max_reward', 'position_error')  # float sums differ in the last bits across threads
    assert [[e[k] for k in keys] for e in two['episodes']] == \
        [[pytest.approx(e[k], rel=1e-5) for k in keys] for e in one['episodes']]
    assert [e['seed'] for e in two['episodes']] == [100_000, 100_001, 100_002]
    with pytest.raises(ValueError, match='checkpoint'):
        ev.evaluate(object(), num_workers=2)  # a policy object cannot travel to the workers


def test_a_dataset_without_a_simulator_trains_validates_open_loop_and_carries_its_shield(tiny_dataset, tmp_path):
    """train_bc.py --dataset with no --task: the last episode is held out and scored open loop (per action dim, in
    the action's units); the checkpoint carries shield limits measured on its data, which an export keeps; eval.py
    and deploy.py's simulator say there is nothing to run it in."""
    import data
    import deploy
    out = str(tmp_path / 'real')
    args = TINY + [f'--dataset={tiny_dataset}', f'--out_dir={out}', '--max_iters=4', '--ckpt_interval=4',
                   '--eval_interval=2']
    trained, evaluate, dagger, export, run, cameras, sim_cameras = run_scripts([  # one process: torch is imported once
        ['train_bc.py'] + args,
        ['eval.py', f'--ckpt={out}', '--episodes=1'],
        ['train_dagger.py', f'--init_from={out}'],
        ['deploy.py', 'export', f'--ckpt={out}'],
        ['deploy.py', 'run', f'--policy={out}/policy.pt', '--trust_exported_code=True', '--episodes=1'],
        ['train_bc.py', f'--dataset={tiny_dataset}', '--cameras=observation.images.top'],  # a camera it lacks
        ['train_bc.py', '--task=pusht', '--cameras=observation.image']], check=False)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert 'no simulator: 1 held-out episodes (24 frames)' in trained.stdout
    m = json.load(open(os.path.join(out, 'eval.json')))
    assert m['episodes'] == 1 and set(m['action_mae_per_dim']) == {'x', 'y'}
    assert m['scored_actions'] == 24 * 8 - sum(range(1, 8))  # the first 8 actions of each frame's chunk, in the episode
    assert m['action_mae'] == pytest.approx(np.mean(list(m['action_mae_per_dim'].values())))
    log = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    assert [r['iter'] for r in log if 'eval_action_mae' in r] == [2] and log[-1]['val_action_mae'] == m['action_mae']
    limits = json.load(open(os.path.join(out, 'config.json')))['policy']['tasks'][0]['limits']
    train = data.LeRobotDataset(tiny_dataset, episodes=[0, 1], camera_keys=[])  # the limits come from training data
    assert limits == data.action_limits(train)
    a = train.columns['action']
    np.testing.assert_allclose(limits['action_low'], a.min(0), rtol=1e-6)
    shield, rest = deploy.make_shield('unused', 2, limits)
    assert rest is None and shield.max_step.tolist() == pytest.approx(limits['max_step_change'])
    assert evaluate.returncode != 0 and 'which has no simulator' in evaluate.stderr and 'eval.json' in evaluate.stderr
    assert dagger.returncode != 0 and 'which has no simulator: DAgger needs one' in dagger.stderr
    assert export.returncode == 0, export.stderr[-3000:]
    assert run.returncode != 0 and 'which has no simulator' in run.stderr
    assert cameras.returncode != 0 and "cameras ['observation.images.top'] are not cameras of" in cameras.stderr
    assert "its cameras are ['observation.image']" in cameras.stderr
    assert sim_cameras.returncode != 0
    assert '--cameras picks the cameras of a dataset with no simulator' in sim_cameras.stderr


SO101 = os.path.join(REPO, '..', 'shared', 'datasets', 'so101_record_test_v30')


@pytest.mark.skipif(not os.path.exists(SO101), reason="../shared/datasets/so101_record_test_v30 not present")
def test_a_real_so101_recording_trains_without_a_simulator(tmp_path):
    """The SO-101 recording (LeRobot v3.0, 4 episodes at 30 fps, two 480x640 cameras whose videos were not uploaded:
    stand-in mp4s of the same size and length here) trains with only --dataset, resized to 48x64 while decoding;
    the held-out episode is scored per joint, in the recording's units."""
    import shutil

    import av
    root = tmp_path / 'so101'
    shutil.copytree(SO101, root)
    for cam in ('front', 'top'):
        path = root / 'videos' / f'observation.images.{cam}' / 'chunk-000' / 'file-000.mp4'
        path.parent.mkdir(parents=True)
        with av.open(str(path), 'w') as out:
            stream = out.add_stream('libx264', rate=30, options={'preset': 'ultrafast'})
            stream.width, stream.height, stream.pix_fmt = 640, 480, 'yuv420p'
            for t in range(1492):
                img = np.full((480, 640, 3), (t % 256, 80, 160 if cam == 'top' else 40), np.uint8)
                out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format='rgb24')))
            out.mux(stream.encode())
    out = str(tmp_path / 'out')
    r = subprocess.run([sys.executable, 'train_bc.py', f'--dataset={root}', f'--out_dir={out}', '--image_size=48',
                        '--max_iters=2', '--ckpt_interval=2'] + TINY, cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.load(open(os.path.join(out, 'eval.json')))
    assert m['episodes'] == 1 and m['scored_actions'] == 373 * 8 - sum(range(1, 8))  # episode 3, 373 frames
    assert list(m['action_mae_per_dim']) == ['shoulder_pan.pos', 'shoulder_lift.pos', 'elbow_flex.pos',
                                             'wrist_flex.pos', 'wrist_roll.pos', 'gripper.pos']
    cfg = json.load(open(os.path.join(out, 'config.json')))
    assert (cfg['config']['image_size'], cfg['config']['image_width'], cfg['config']['num_cameras']) == (48, 64, 2)


SQUARE = (256, 256)


@pytest.mark.parametrize('preset, repo_id, version, fps, cameras, dims, used, args', [
    ('libero', 'lerobot/libero', 'v3.0', 10, {'image': SQUARE, 'image2': SQUARE}, (8, 7), 2, []),
    ('libero', 'lerobot/libero_10', 'v3.0', 10, {'image': SQUARE, 'wrist_image': SQUARE}, (8, 7), 2,
     ['--dataset=lerobot/libero_10']),  # a suite: its wrist camera has another name
    ('bridge', 'IPEC-COMMUNITY/bridge_orig_lerobot', 'v2.0', 5, {f'image_{i}': SQUARE for i in range(4)}, (8, 7), 1, []),
    ('droid', 'lerobot/droid_100', 'v2.0', 15, {k: (180, 320) for k in ('exterior_image_1_left', 'exterior_image_2_left',
                                                                         'wrist_image_left')}, (8, 8), 3, []),
])
def test_the_dataset_presets_train_on_stand_ins_from_the_hub_cache(tmp_path, preset, repo_id, version, fps, cameras,
                                                                    dims, used, args):
    """--task=<preset> for the datasets with no simulator (config/libero.py, bridge.py, droid.py) on a stand-in with
    the hub dataset's schema (codebase version, fps, camera keys and sizes, AV1 videos for v2.0, state and action
    sizes) placed where huggingface_hub keeps a download, read offline through snapshot_download as a user's download
    is: the preset's cameras reach the policy at its image size, and validation holds out the last episode."""
    env = hub_stand_in(tmp_path / 'hub', repo_id, version, fps, {f'observation.images.{k}': hw for k, hw in
                                                                  cameras.items()}, *dims)
    out = str(tmp_path / 'out')
    r = subprocess.run([sys.executable, 'train_bc.py', f'--task={preset}', f'--out_dir={out}', '--max_iters=2',
                        '--ckpt_interval=2', '--batch_size=8', '--warmup_iters=1'] + args, cwd=REPO,
                       capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'no simulator: 1 held-out episodes (12 frames)' in r.stdout
    m = json.load(open(os.path.join(out, 'eval.json')))
    assert m['episodes'] == 1 and len(m['action_mae_per_dim']) == dims[1]
    cfg = json.load(open(os.path.join(out, 'config.json')))
    h, w = next(iter(cameras.values()))
    assert (cfg['config']['image_size'], cfg['config']['image_width']) == (96, 0 if h == w else round(96 * w / h))
    assert cfg['config']['num_cameras'] == used
    assert cfg['policy']['tasks'][0]['image_keys'] == [f'observation.images.{k}' for k in cameras][:used]
    assert cfg['policy']['tasks'][0]['task'] == repo_id
