"""Shared by the test files: the check that a checkpoint folder of any producer (train_bc.py, its best/,
train_multitask.py, train_dagger.py, train_gail.py) runs through eval.py, deploy.py export and deploy.py run."""
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


# One interpreter runs the three commands in turn, each as `python SCRIPT ARGS` would (runpy, argv set): importing
# torch + transformers costs ~9 s per process here, and this check runs once per checkpoint producer.
RUN_SCRIPTS = """
import json, runpy, sys
for argv in json.loads(sys.argv[1]):
    sys.argv = argv
    print('$ python ' + ' '.join(argv), flush=True)
    try:
        runpy.run_path(argv[0], run_name='__main__')
    except SystemExit as e:
        if e.code not in (None, 0):
            raise
"""


def check_checkpoint_runs(ckpt, task=''):
    """One short episode in eval.py, an export (checked against the eager model by deploy.py), and one short
    episode of the control loop with the safety shield in the simulator; `task` picks a multi-task policy's task."""
    t = [f'--task={task}'] if task else []
    commands = [['eval.py', f'--ckpt={ckpt}', '--episodes=1', '--max_steps=8', '--videos=0',
                 f'--out={ckpt}/eval_check.json'] + t,
                ['deploy.py', 'export', f'--ckpt={ckpt}', f'--out={ckpt}/check.pt'] + t,
                ['deploy.py', 'run', f'--policy={ckpt}', '--robot=sim', '--episodes=1', '--max_steps=8', '--rate=0'] + t]
    r = subprocess.run([sys.executable, '-c', RUN_SCRIPTS, json.dumps(commands)], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"checkpoint check failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    metrics = json.load(open(os.path.join(ckpt, 'eval_check.json')))
    assert metrics['n_episodes'] == 1 and (not task or metrics['task'] == task)
    assert os.path.getsize(os.path.join(ckpt, 'check.pt')) > 0
    assert 'over 1 episodes' in r.stdout.split('$ python deploy.py run')[-1]  # deploy run's summary line
