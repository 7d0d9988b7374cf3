"""train_multitask.py: padded action dims stay out of the loss; sampling follows task_weights; the
curriculum admits tasks on schedule; a tiny PushT + ALOHA run trains, resumes and evaluates each task in
its own simulator; and the instruction really conditions the policy (two goals, same observations)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import envs  # noqa: E402
from conftest import check_checkpoint_runs, run_scripts  # noqa: E402
from heads import MLPActionHead, masked_mean  # noqa: E402

TINY = ['--batch_size=16', '--warmup_iters=2', '--log_interval=1', '--ckpt_interval=10', '--action_chunk_size=8',
        '--n_action_steps=4']


def run(args, check=True):
    r = subprocess.run([sys.executable, 'train_multitask.py'] + args, cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"train_multitask.py failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def log(out):
    return [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]


@pytest.fixture(scope='module')
def demos(tmp_path_factory):
    """Real expert episodes of the default tasks, in their order: Lift (4-D actions), PushT (2-D), ALOHA (14-D)."""
    root = tmp_path_factory.mktemp('mt')
    paths = [str(root / 'lift'), str(root / 'pusht'), str(root / 'aloha')]
    envs.record_demonstrations('lift', 1, paths[0], seed=0)
    envs.record_demonstrations('pusht', 2, paths[1], seed=0)
    envs.record_demonstrations('aloha_transfer_cube', 1, paths[2], seed=0)
    return paths


def test_padded_action_dims_do_not_count():
    """Whatever sits in the padded dims (here garbage vs. zeros) leaves loss and gradients unchanged."""
    torch.manual_seed(0)
    head = MLPActionHead(32, 14, 4, 64)
    cond, target = torch.randn(3, 32), torch.randn(3, 4, 14)
    mask = torch.zeros(3, 4, 14, dtype=torch.bool)
    mask[:, :, :2] = True  # a 2-D robot's actions padded to 14 dims
    mask[0, 3] = False  # and one padded step
    garbage = target.clone()
    garbage[:, :, 2:] = 1e3
    garbage[0, 3] = -1e3
    losses = [head.compute_loss(cond, t, mask)['loss'] for t in (target, garbage)]
    torch.testing.assert_close(losses[0], losses[1])
    pred = head(cond)['action']
    expected = ((pred - target).abs()[mask]).mean()
    torch.testing.assert_close(masked_mean((pred - target).abs(), mask), expected)


@pytest.fixture(scope='module')
def three_task_run(demos, tmp_path_factory):
    """Weighted sampling for 40 iterations, then resume to 50 and a per-task evaluation -> the run's folder."""
    out = str(tmp_path_factory.mktemp('mt_run') / 'mt')
    common = [f'--datasets={demos}', f'--out_dir={out}', '--task_weights=[0.15, 0.75, 0.1]'] + TINY
    run_scripts([['train_multitask.py'] + common + ['--max_iters=40', '--eval_episodes=0'],
                 ['train_multitask.py'] + common + ['--max_iters=50', '--resume=True', '--eval_episodes=1',
                                                    '--eval_max_steps=20']])  # one process: one torch import
    seen = [r for r in log(out) if r['iter'] == 40][-1]['samples_seen']  # where the first run stopped
    return out, seen


def test_tiny_three_task_run_samples_resumes_and_evaluates(three_task_run):
    """Weighted sampling, then resume, then a per-task evaluation in each task's own simulator."""
    out, seen = three_task_run
    assert sum(seen.values()) == 40 * 16
    assert abs(seen['pusht'] / 640 - 0.75) < 0.06, seen  # binomial sd 0.017: 3.5 sd
    records = log(out)
    assert records[-1]['iter'] == 50 and sum(records[-1]['samples_seen'].values()) == 50 * 16
    results = json.load(open(os.path.join(out, 'eval.json')))
    assert set(results) == {'lift', 'pusht', 'aloha_transfer_cube'}
    assert all(r['n_episodes'] == 1 for r in results.values())
    assert 0 <= results['aloha_transfer_cube']['avg_max_reward'] <= 4
    check_checkpoint_runs(out, task='lift')  # the multi-task checkpoint, one of its tasks (4 of 14 action dims)


def test_dagger_aggregates_one_task_of_a_multi_task_policy(demos, three_task_run, tmp_path):
    """DAgger on the multi-task checkpoint: PushT rollouts of ITS PushT entry, labelled by the expert, grow PushT's
    dataset only; the round retrains with train_multitask.py's recipe from the checkpoint, the other tasks on
    their own data, and writes the one checkpoint format."""
    import data
    ckpt, out = three_task_run[0], str(tmp_path / 'dagger')
    r = subprocess.run([sys.executable, 'train_dagger.py', '--task=pusht', f'--init_from={ckpt}', f'--out_dir={out}',
                        '--dagger_iters=1', '--episodes_per_iter=1', '--max_steps=10', '--expert_segment=0',
                        '--train_iters=5', '--eval_episodes=1', '--train_args=--eval_max_steps=5'],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    aggregate = os.path.join(out, 'data_iter0')
    before, after = (data.LeRobotDatasetMetadata(p).total_frames for p in (demos[1], aggregate))
    assert after == before + 10  # one failing 10-step rollout: 10 expert labels
    recipe = json.load(open(os.path.join(out, 'iter0', 'train_config.json')))
    assert recipe['dataset_paths'] == [demos[0], aggregate, demos[2]] and recipe['init_from'] == ckpt
    assert recipe['max_iters'] == 5 and recipe['task_weights'] == [0.15, 0.75, 0.1]  # the rest of the recipe kept
    state = json.load(open(os.path.join(out, 'dagger_state.json')))
    pusht_eval = json.load(open(os.path.join(out, 'iter0', 'eval.json')))['pusht']
    assert state['history'][-1]['test_max_reward'] == pusht_eval['avg_max_reward']
    check_checkpoint_runs(os.path.join(out, 'iter0'), task='pusht')


def test_curriculum_admits_tasks_in_order_with_a_head_per_task(demos, tmp_path):
    from safetensors.torch import load_file
    out = str(tmp_path / 'cur')
    run([f'--datasets={demos}', f'--out_dir={out}', '--curriculum=True', '--curriculum_interval=10',
         '--max_iters=30', '--eval_episodes=0', '--multi_head=True'] + TINY)
    weights = load_file(os.path.join(out, json.load(open(os.path.join(out, 'training_state.json')))['tensors']))
    assert any(k.startswith('ema.heads.2.') for k in weights) and not any(k.startswith('ema.head.') for k in weights)
    records = {r['iter']: r for r in log(out)}
    assert records[10]['active_tasks'] == 1 and records[10]['samples_seen']['lift'] == 10 * 16
    assert records[20]['active_tasks'] == 2 and records[20]['samples_seen']['aloha_transfer_cube'] == 0
    assert records[20]['samples_seen']['pusht'] > 0
    assert records[21]['active_tasks'] == 3 and records[30]['samples_seen']['aloha_transfer_cube'] > 0


def test_bad_task_lists_fail_clearly(tmp_path):
    r = run(['--tasks=["pusht", "aloha_transfer_cube"]', '--task_weights=[1.0]', f'--out_dir={tmp_path}'], check=False)
    assert r.returncode != 0 and 'task_weights has 1 entries but there are 2 tasks' in r.stderr + r.stdout


GOALS = {'move the pusher to the left side': (130.0, 300.0), 'move the pusher to the right side': (380.0, 300.0)}


def record_goal_demos(root, instruction, goal, seeds):
    """PushT frames of an agent driven straight to a goal point (the action IS the goal: a position target)."""
    import dataset_writer
    spec = envs.TASKS['pusht']
    features = {'observation.image': {'dtype': 'image', 'shape': [96, 96, 3], 'names': ['height', 'width', 'channels']},
                'observation.state': {'dtype': 'float32', 'shape': [2], 'names': ['x', 'y']},
                'action': {'dtype': 'float32', 'shape': [2], 'names': ['x', 'y']}}
    writer = dataset_writer.LeRobotDatasetWriter(root, fps=10, features=features)
    env = envs.make_env('pusht')
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        for _ in range(15):
            frame = envs.obs_to_frame('pusht', obs)
            writer.add_frame({**frame, 'action': np.float32(goal)}, task=instruction)
            obs, *_ = env.step(np.float32(goal))
        writer.save_episode()
    env.close()
    writer.finalize()
    assert spec['state_key'] == 'observation.state'


def test_instruction_conditions_the_policy(tmp_path):
    """Two 'tasks' with the same observations (same seeds, same simulator) and different instructions: the
    trained model's actions differ by instruction at the very same frame, and driving the real PushT
    simulator with each instruction brings the pusher to that instruction's goal, on seeds it never saw."""
    from model import ManipulationVLA
    from eval import VLAPolicy
    paths = []
    for k, (instruction, goal) in enumerate(GOALS.items()):
        paths.append(str(tmp_path / f'goal{k}'))
        record_goal_demos(paths[-1], instruction, goal, seeds=range(6))
    out = str(tmp_path / 'cond')
    run(['--tasks=["pusht", "pusht"]', f'--datasets={paths}', f'--instructions={list(GOALS)}', f'--out_dir={out}',
         '--max_iters=150', '--eval_episodes=0', '--augment=False', '--learning_rate=1e-3', '--ema_decay=0.0'] + TINY)
    model = ManipulationVLA.from_pretrained(out).eval()  # the one checkpoint format: weights + config.json
    env = envs.make_env('pusht')
    hits, first_actions = {}, []
    for k, (instruction, goal) in enumerate(GOALS.items()):
        assert model.policy_info['tasks'][k]['instruction'] == instruction
        hits[instruction] = 0
        for seed in (envs.TEST_SEED, envs.TEST_SEED + 1, envs.TEST_SEED + 2):
            obs, _ = env.reset(seed=seed)
            policy = VLAPolicy(model, instruction, n_action_steps=4, task_index=k)  # the task's own statistics
            for _ in range(15):
                action = np.asarray(policy(envs.obs_to_frame('pusht', obs)))
                if seed == envs.TEST_SEED and policy.t == 1:
                    first_actions.append(action)  # same frame, two instructions
                obs, *_ = env.step(action.astype(np.float32))
            agent = obs['agent_pos']
            own, other = np.hypot(*(agent - goal)), np.hypot(*(agent - GOALS[list(GOALS)[1 - k]]))
            hits[instruction] += own < 60 and own < other
    env.close()
    assert np.hypot(*(first_actions[0] - first_actions[1])) > 100, first_actions
    assert all(h >= 2 for h in hits.values()), hits  # chance: the pusher ends near at most one goal


def test_observation_history_reaches_the_datasets(demos, tmp_path):
    """--n_obs_steps=2 builds the model for two frames AND gives it two from each task's dataset (it was passed to the
    model only, and the first forward pass failed); the evaluation feeds the history too."""
    out = str(tmp_path / 'mt_obs2')
    run([f'--datasets={demos[:2]}', "--tasks=['lift', 'pusht']", f'--out_dir={out}', '--n_obs_steps=2',
         '--max_iters=3', '--eval_episodes=1', '--eval_max_steps=4'] + TINY)
    assert json.load(open(os.path.join(out, 'config.json')))['config']['n_obs_steps'] == 2
    assert log(out)[-1]['iter'] == 3
