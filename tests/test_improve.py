"""train_dagger.py and train_gail.py: DAgger labels learner-visited states with the expert's actions
and grows a LeRobot dataset; the GAIL/PPO math does what the papers say on toy problems; both
scripts run end to end and resume. The scripts read top to bottom, so the math functions are
loaded from their source by train_common.script_functions (no import side effects)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from conftest import check_checkpoint_runs  # noqa: E402
import train_common  # noqa: E402


def script_functions(script, names, **namespace):
    """The named top-level functions of a script, with the modules they use as globals."""
    return train_common.script_functions(script, names, torch=torch, F=F, math=math, np=np, **namespace)


def run(script, args, check=True):
    r = subprocess.run([sys.executable, script] + args, cwd=REPO, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{script} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


# ----------------------------------------------------------------------------- GAIL / PPO math
def test_gae_matches_hand_computation():
    ns = script_functions('train_gail.py', ['gae'])
    r = torch.tensor([1.0, 0.0, 2.0, 1.0])
    v = torch.tensor([0.5, 0.2, 0.1, 0.3])
    nv = torch.tensor([0.2, 0.1, 0.7, 0.9])
    done = torch.tensor([0.0, 1.0, 0.0, 0.0])  # episode 1 ends (terminal) at t=1
    trunc = torch.tensor([0.0, 0.0, 0.0, 1.0])  # episode 2 is cut by the time limit at t=3
    g, lam = 0.9, 0.8
    adv, ret = ns['gae'](r, v, nv, done, trunc, g, lam)
    d = [r[0] + g * nv[0] - v[0], r[1] - v[1], r[2] + g * nv[2] - v[2], r[3] + g * nv[3] - v[3]]
    expected = [d[0] + g * lam * d[1], d[1], d[2] + g * lam * d[3], d[3]]
    assert torch.allclose(adv, torch.stack(expected))
    assert torch.allclose(ret, adv + v)


def test_discriminator_learns_separable_pairs():
    ns = script_functions('train_gail.py', ['discriminator_loss'])
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))

    def disc(obs, a):
        return net(torch.cat([obs, a], -1)).squeeze(-1)

    obs = torch.randn(256, 2)
    expert_a, policy_a = obs + 1.0, obs - 1.0  # the expert acts +1, the policy -1: separable
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(150):
        loss, acc = ns['discriminator_loss'](disc, obs, expert_a, obs, policy_a, grad_penalty=0.1)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first and acc > 0.95


def test_ppo_update_raises_log_prob_of_positive_advantage_actions():
    ns = script_functions('train_gail.py', ['ppo_policy_loss', 'log_prob'])
    torch.manual_seed(0)
    mean, log_std = torch.zeros(2, requires_grad=True), torch.zeros(2)
    actions = torch.randn(512, 2)
    adv = torch.where(actions[:, 0] > 0, 1.0, -1.0)  # actions with x > 0 were good
    old = ns['log_prob'](mean.detach().expand(512, 2), log_std.expand(512, 2), actions)
    opt = torch.optim.SGD([mean], lr=0.05)
    for _ in range(10):
        new = ns['log_prob'](mean.expand(512, 2), log_std.expand(512, 2), actions)
        loss = ns['ppo_policy_loss'](new, old, adv, clip_eps=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    new = ns['log_prob'](mean.detach().expand(512, 2), log_std.expand(512, 2), actions)
    assert (new - old)[adv > 0].mean() > 0 > (new - old)[adv < 0].mean()
    assert mean[0] > 0.05 and abs(mean[1]) < 0.05  # moved toward the good actions, only along x
    ratio = (new - old).exp()
    assert ratio.max() < 3.0  # the clip stopped the push (unclipped it would keep going)


def test_expert_chunks_stay_inside_their_episode():
    ns = script_functions('train_gail.py', ['expert_chunks'])
    actions = torch.arange(10.0).view(5, 2)  # 5 steps, A=2: step i is (2i, 2i+1)
    episode = torch.tensor([0, 0, 0, 1, 1])
    chunks = ns['expert_chunks'](actions, episode, 3)  # (5, 3 * 2)
    step = chunks.view(5, 3, 2)[..., 0] / 2  # which step each chunk entry came from
    assert step.tolist() == [[0, 1, 2], [1, 2, 2], [2, 2, 2], [3, 4, 4], [4, 4, 4]]  # the last action repeats
    assert torch.equal(ns['expert_chunks'](actions, episode, 1), actions)


def test_exploration_std_cap_is_in_action_units():
    """max_std=2 px on PushT's 512 px arena caps the normalized std at 2 / 256, and only where it is larger."""
    ns = script_functions('train_gail.py', ['cap_std'], max_std=2.0, LOW=0.0, HIGH=512.0)
    log_std = torch.log(torch.tensor([[0.1, 0.001, 0.02, 2 / 256]]))  # a chunk of 2 xy targets
    capped = ns['cap_std'](log_std).exp()
    torch.testing.assert_close(capped, torch.tensor([[2 / 256, 0.001, 2 / 256, 2 / 256]]))
    ns = script_functions('train_gail.py', ['cap_std'], max_std=0.0, LOW=0.0, HIGH=512.0)
    assert torch.equal(ns['cap_std'](log_std), log_std)  # 0 = the fitted std, untouched


def test_dagger_beta_schedule():
    ns = script_functions('train_dagger.py', ['beta_at'], beta=0.8, beta_decay=0.5)
    assert [ns['beta_at'](i) for i in range(4)] == pytest.approx([0.8, 0.4, 0.2, 0.1])


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope='module')
def bc_checkpoints(tmp_path_factory):
    """Tiny BC policies (mlp and gaussian heads) trained for a few steps on a 2-episode expert dataset."""
    import data
    import envs
    root = tmp_path_factory.mktemp('improve')
    ds = str(root / 'pusht_2ep')
    envs.record_demonstrations('pusht', 2, ds, seed=0, num_workers=1)
    assert data.LeRobotDatasetMetadata(ds).total_episodes == 2
    ckpts = {}
    for head in ('mlp', 'gaussian'):
        out = str(root / f'bc_{head}')
        run('train_bc.py', ['--task=pusht', f'--dataset={ds}', f'--out_dir={out}', f'--action_head_type={head}',
                            '--max_iters=4', '--batch_size=8', '--eval_interval=0', '--final_eval_episodes=0',
                            '--action_chunk_size=8', '--n_action_steps=4', '--warmup_iters=1'])
        ckpts[head] = out
    return root, ds, ckpts


def test_dagger_labels_learner_states_with_the_expert_and_resumes(bc_checkpoints):
    import data
    import envs
    from eval import load_policy
    root, ds, ckpts = bc_checkpoints
    out = str(root / 'dagger')
    args = ['--task=pusht', f'--init_from={ckpts["mlp"]}', f'--out_dir={out}', '--episodes_per_iter=1',
            '--max_steps=12', '--beta=0.0', '--expert_segment=0', '--train_iters=2', '--eval_episodes=0',
            "--train_args=--batch_size=8 --warmup_iters=1"]
    run('train_dagger.py', args + ['--dagger_iters=1', '--num_workers=2'])  # labelled in a spawned worker
    before = data.LeRobotDataset(ds, camera_keys=[])
    after = data.LeRobotDataset(os.path.join(out, 'data_iter0'), camera_keys=[])
    new_rows = len(after) - len(before)
    assert after.meta.total_episodes == 3 and 1 <= new_rows <= 12
    labels = after.columns['action'][len(before):]
    states = after.columns['observation.state'][len(before):]
    # replay: beta=0 so the learner drove; every recorded label must be the expert's answer in that state
    env, expert = envs.make_env('pusht'), envs.make_expert('pusht')
    _, learner = load_policy(ckpts['mlp'])
    obs, _ = env.reset(seed=50_000)
    expert.reset()
    learner.reset()
    differs, threads = 0, torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the learner's actions, and so the states, bit for bit
    try:
        for t in range(new_rows):
            frame = envs.obs_to_frame('pusht', obs)
            assert np.allclose(frame['observation.state'], states[t], atol=1e-4)
            label = expert.get_action(env)
            act = learner(frame)
            assert np.allclose(labels[t], label, atol=1e-3), f"step {t}: label {labels[t]} is not the expert's {label}"
            differs += not np.allclose(labels[t], act, atol=1.0)
            obs, *_ = env.step(act)
    finally:
        torch.set_num_threads(threads)
    assert differs > new_rows // 2  # the labels are not the learner's own actions
    state = json.load(open(os.path.join(out, 'dagger_state.json')))
    assert state['done'] == 0 and state['history'][-1]['labels'] == len(after)
    # resume: one more round on top of data_iter0, fine-tuning iter0
    run('train_dagger.py', args + ['--dagger_iters=2', '--resume=True'])  # in this process (num_workers=1)
    state = json.load(open(os.path.join(out, 'dagger_state.json')))
    assert state['done'] == 1 and state['history'][-1]['labels'] > len(after)
    assert state['history'][-1]['new_labels'] >= 1 and state['history'][-1]['label_seconds'] > 0
    assert os.path.exists(os.path.join(out, 'iter1', 'model.safetensors'))
    check_checkpoint_runs(os.path.join(out, 'iter1'))  # a DAgger round's checkpoint is the one format


def test_dagger_segments_record_only_the_experts_stretches(bc_checkpoints):
    """expert_segment=H: who drives is drawn every H steps and each expert stretch is an episode of its own.
    With beta=1 that is the expert's own episode (its consecutive actions, not per-step re-plans); with beta=0.5
    the stretches are whole H-step blocks that together hold exactly the expert-driven steps."""
    import envs
    import eval  # the module (DAgger's labelled rollouts live there), not the builtin
    _, _, ckpts = bc_checkpoints
    seed, steps = 50_000, 24
    alone = envs.run_expert_episode('pusht', seed, render=False)
    ep = eval._dagger_worker(('pusht', ckpts['mlp'], seed, 1.0, steps, [0, seed], 0, None, 4, 0))
    [(frames, labels)] = ep['episodes']
    assert ep['labels'] == len(frames) == steps and ep['expert_fraction'] == 1.0
    assert np.allclose(labels, alone['actions'][:steps], atol=1e-4)
    ep = eval._dagger_worker(('pusht', ckpts['mlp'], seed, 0.5, 40, [0, seed], 0, None, 4, 0))  # 3 stretches
    lengths = [len(f) for f, _ in ep['episodes']]
    assert len(lengths) >= 2 and all(n % 4 == 0 for n in lengths), lengths
    assert sum(lengths) == ep['labels'] == round(ep['expert_fraction'] * ep['steps']) < ep['steps']
    assert all(len(f) == len(a) for f, a in ep['episodes'])


def test_dagger_branches_label_the_learners_own_states(bc_checkpoints):
    """expert_branch=B: the learner drives the whole rollout (branches leave it alone: the same steps and outcome as
    with none), and each branch is the expert's own B steps from a copy of the learner's state at a decision point."""
    import envs
    import eval  # the module, not the builtin
    from eval import load_policy
    _, _, ckpts = bc_checkpoints
    seed, steps, H, B = 50_000, 24, 4, 6
    none = eval._dagger_worker(('pusht', ckpts['mlp'], seed, 0.0, steps, [0, seed], 0, None, H, B))
    every = eval._dagger_worker(('pusht', ckpts['mlp'], seed, 1.0, steps, [0, seed], 0, None, H, B))
    assert none['episodes'] == [] and none['labels'] == 0
    assert (every['steps'], every['success']) == (none['steps'], none['success'])
    assert len(every['episodes']) == -(-every['steps'] // H) and every['expert_fraction'] == 0.0
    assert all(len(f) == len(a) <= B for f, a in every['episodes']) and every['labels'] >= B
    # replay: the learner drives H steps, then the expert takes over; the second branch is what it does there
    env, expert = envs.make_env('pusht'), envs.make_expert('pusht')
    _, learner = load_policy(ckpts['mlp'])
    obs, _ = env.reset(seed=seed)
    learner.reset()
    for _ in range(H):
        obs, *_ = env.step(learner(envs.obs_to_frame('pusht', obs)))
    expert.reset()
    frames, labels = every['episodes'][1]
    for frame, label in zip(frames, labels):
        now = envs.obs_to_frame('pusht', obs)
        assert all(np.array_equal(now[k], frame[k]) for k in now)  # the same image and state
        action = expert.get_action(env)
        assert np.allclose(label, action, atol=1e-4)
        obs, *_ = env.step(action)


def test_dagger_names_the_tasks_of_a_checkpoint_without_the_task(tmp_path):
    """--task must be one of the checkpoint's tasks: refused up front, naming them (read from config.json, no
    weights loaded), instead of failing later on a missing recipe."""
    ckpt = tmp_path / 'mt'
    ckpt.mkdir()
    tasks = [dict(task=t, instruction=f'do {t}') for t in ('aloha_insertion', 'lift')]
    (ckpt / 'config.json').write_text(json.dumps(dict(policy=dict(tasks=tasks, n_action_steps=8))))
    r = run('train_dagger.py', ['--task=pusht', f'--init_from={ckpt}', f'--out_dir={tmp_path / "d"}'], check=False)
    assert r.returncode != 0 and 'serves aloha_insertion, lift: pass --task=<one of them>' in r.stderr


def test_gail_state_mode_runs_and_resumes(tmp_path):
    out = str(tmp_path / 'gail')
    args = ['--task=pusht', f'--out_dir={out}', '--expert_episodes=1', '--bc_iters=20', '--ppo_iters=2',
            '--steps_per_iter=64', '--minibatch_size=32', '--eval_episodes=1', '--eval_interval=0', '--ppo_epochs=2',
            '--action_steps=4', '--max_std=3.0']
    run('train_gail.py', args)
    state = json.load(open(os.path.join(out, 'gail_state.json')))
    assert state['iter'] == 2
    from safetensors.torch import load_file
    tensors = load_file(os.path.join(out, state['tensors']))
    # a chunk of 4 targets is one action: the policy emits 4 means + 4 log-stds per xy, D reads 10 features + 4 xy
    assert tensors['policy.head.net.4.weight'].shape[0] == 2 * 4 * 2
    assert tensors['disc.net.0.weight'].shape[1] == 10 + 4 * 2
    rounds = [h for h in state['history'] if 'disc_acc' in h]
    assert len(rounds) == 2 and all(0.0 <= h['disc_acc'] <= 1.0 and h['mean_reward'] > 0 for h in rounds)
    assert all(0 < h['policy_std'] <= 3.0 + 1e-4 for h in rounds)  # the rollouts' noise, capped at max_std px
    assert [h for h in state['history'] if 'test_success' in h][0]['iter'] == 0  # evaluated before
    run('train_gail.py', args[:4] + ['--ppo_iters=3', '--resume=True'] + args[5:])
    state = json.load(open(os.path.join(out, 'gail_state.json')))
    assert state['iter'] == 3 and [h['iter'] for h in state['history'] if 'disc_acc' in h] == [1, 2, 3]


@pytest.mark.parametrize('task, features, action_dim', [('lift', 11, 4), ('aloha_transfer_cube', 21, 14)])
def test_gail_runs_on_other_tasks_from_their_modules_features(task, features, action_dim, tmp_path):
    """GAIL is not PushT's only: the task module's gail_features feed the networks, actions have the task's dims.
    (Its evaluations are PushT's and the reach task's to test: a Lift or ALOHA episode is seconds of simulation.)"""
    out = str(tmp_path / 'gail')
    run('train_gail.py', [f'--task={task}', f'--out_dir={out}', '--expert_episodes=1', '--bc_iters=5',
                          '--ppo_iters=1', '--steps_per_iter=32', '--minibatch_size=16', '--eval_episodes=0',
                          '--eval_interval=0', '--ppo_epochs=1', '--disc_steps=1', '--action_steps=2'])
    state = json.load(open(os.path.join(out, 'gail_state.json')))
    from safetensors.torch import load_file
    tensors = load_file(os.path.join(out, state['tensors']))
    assert tensors['disc.net.0.weight'].shape[1] == features + 2 * action_dim
    assert tensors['policy.head.net.4.weight'].shape[0] == 2 * 2 * action_dim


def test_gail_pixel_mode_refuses_a_task_whose_state_is_not_its_action_space(tmp_path):
    r = run('train_gail.py', ['--task=lift', '--obs_mode=pixels', f'--out_dir={tmp_path / "x"}'], check=False)
    assert r.returncode != 0 and 'not its action space' in r.stderr


def test_gail_pixel_mode_updates_the_vla_policy(bc_checkpoints, tmp_path):
    from safetensors.torch import load_file
    _, _, ckpts = bc_checkpoints
    out = str(tmp_path / 'gail_px')
    run('train_gail.py', ['--task=pusht', '--obs_mode=pixels', f'--init_from={ckpts["gaussian"]}', f'--out_dir={out}',
                          '--expert_episodes=1', '--ppo_iters=1', '--steps_per_iter=24', '--minibatch_size=8',
                          '--eval_episodes=0', '--ppo_epochs=1', '--disc_steps=1'])
    init = load_file(os.path.join(ckpts['gaussian'], 'model.safetensors'))
    after = load_file(os.path.join(out, json.load(open(os.path.join(out, 'gail_state.json')))['tensors']))
    moved = [k for k in init if k.startswith('head.') and not torch.equal(init[k], after['policy.vla.' + k])]
    assert moved, "PPO did not change the Gaussian head's weights"
    check_checkpoint_runs(out)  # GAIL writes the improved VLA in the one checkpoint format
    r = run('train_gail.py', ['--task=pusht', '--obs_mode=pixels', f'--init_from={ckpts["mlp"]}',
                              f'--out_dir={tmp_path / "x"}', '--expert_episodes=1'], check=False)
    assert r.returncode != 0 and 'gaussian' in (r.stdout + r.stderr)
