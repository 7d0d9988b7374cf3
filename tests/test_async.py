"""Asynchronous chunk execution (policy.VLAPolicy, issue 39): the robot never waits for the policy, a chunk is used
from the step it arrives at, never earlier than its delay; the joins (switch, ensemble, blend, real-time chunking)
do what they say; the inference thread never outlives an episode and a crash in it stops the robot."""
import os
import sys
import threading
import time

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from deploy import SafetyShield, control_loop  # noqa: E402
from policy import VLAPolicy  # noqa: E402
from heads import FlowMatchingActionHead, DiffusionActionHead  # noqa: E402
from test_deploy import INSTRUCTION, tiny_model  # noqa: E402

H = 8  # the fake model's chunk


class Config:
    action_chunk_size, n_obs_steps, image_hw = H, 1, (96, 96)

    def __init__(self, head):
        self.action_head_type = head


class StepModel(torch.nn.Module):
    """Its chunk from the observation of step s (the state's first value) is [1000 s + i for i in 0..H-1]: an
    executed action tells which observation and which chunk index it came from. sleep: seconds per inference;
    fail_at: the inference call that raises; head: what it claims to be ('flow' accepts RTC's guide, kept)."""

    def __init__(self, sleep=0.0, fail_at=None, head='mlp'):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config, self.sleep, self.fail_at, self.calls, self.guides = Config(head), sleep, fail_at, 0, []

    def encode_instruction(self, texts):
        return {'text_embeds': torch.zeros(1, 1, 1), 'text_mask': torch.ones(1, 1, dtype=torch.bool)}

    def predict_action(self, batch, instruction_cache=None, guide=None):
        self.guides.append(guide)
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("CUDA error: an illegal memory access (injected)")
        time.sleep(self.sleep)
        s = float(batch['proprio'][0, 0])
        return (1000 * s + torch.arange(H, dtype=torch.float32)).view(1, H, 1).repeat(1, 1, 2)


def frame(step):
    return {'observation.image': np.zeros((96, 96, 3), np.uint8),
            'observation.state': np.array([step, 0.0], np.float32), 'timestamp': time.monotonic()}


def provenance(action):
    """-> (step of the observation, index in its chunk) of an executed action."""
    return divmod(int(round(action[0])), 1000)


@pytest.mark.parametrize("delay,n", [(0, 3), (1, 4), (2, 4), (4, 4), (3, 2), (2, 8)])
def test_simulated_delay_is_honoured_exactly(delay, n):
    """Step t executes the chunk of observation s at index t - s, with s <= t - delay (the first chunk of an
    episode excepted: the robot waits for it at rest); the next chunk is asked for n - delay steps after the last
    (one inference at a time), so no action is older than n - 1 steps while delay <= n / 2, as in the sync loop."""
    policy = VLAPolicy(StepModel(), 'x', n_action_steps=n, chunk_join='switch', inference_delay=delay)
    sources = []
    for t in range(40):
        s, i = provenance(policy(frame(t)))
        assert i == t - s  # the chunk starts from the step it is used at, not the step it was asked at
        assert s == 0 or s <= t - delay
        assert i <= max(n - 1, 2 * delay - 1)
        sources.append(s)
    used = sorted(set(sources))
    assert used[1] == max(1, n - delay) and np.all(np.diff(used[1:]) == max(1, n - delay, delay))
    assert policy.starved == 0
    assert policy.delays == [0] + [delay] * (len(policy.delays) - 1)


def test_threaded_inference_is_used_when_it_arrives_and_never_blocks_the_loop():
    """A 100 ms policy in a 50 Hz loop: the loop keeps its rate (no step waits for the policy after the first),
    chunks are used at their arrival step (>= the delay asked for) and from the matching index."""
    policy = VLAPolicy(StepModel(sleep=0.1), 'x', n_action_steps=2, chunk_join='switch', inference_delay=2,
                       threaded=True)
    period, t0 = 0.02, time.perf_counter()
    for t in range(40):
        start = time.perf_counter()
        action = policy(frame(t))
        if t > 0:
            assert time.perf_counter() - start < 0.05  # the loop never waits the 100 ms of an inference
        if action is not None:  # None: the plan ran out before the chunk came (the shield holds)
            s, i = provenance(action)
            assert i == t - s and (s == 0 or s <= t - 2)
        time.sleep(max(0.0, t0 + (t + 1) * period - time.perf_counter()))
    assert len(policy.delays) >= 3 and min(policy.delays[1:]) >= 2
    policy.close()
    assert not [th for th in threading.enumerate() if th.name.startswith('nanovla-inference')]


def test_joins_merge_the_overlap_as_documented():
    new = [np.array([10.0]), np.array([20.0])]
    for join, expected in [('switch', [10, 20]), ('blend', [2 / 3 * 1 + 1 / 3 * 10, 1 / 3 * 2 + 2 / 3 * 20, 30]),
                           ('ensemble', [(1 + np.exp(-0.5) * 10) / (1 + np.exp(-0.5)),
                                         (2 + np.exp(-0.5) * 20) / (1 + np.exp(-0.5)), 30])]:
        policy = VLAPolicy(StepModel(), 'x', n_action_steps=1, chunk_join=join, temporal_ensemble_coeff=0.5)
        policy.plan.extend([[np.array([1.0]), 1.0, 1], [np.array([2.0]), 1.0, 1]])
        policy.join_chunk(new + ([np.array([30.0])] if join != 'switch' else []))
        assert [float(s[0] / w) for s, w, _ in policy.plan] == pytest.approx(expected)


def test_rtc_freezes_the_actions_that_execute_during_inference():
    """The guide's target is the plan's next steps, weight 1 on the d that execute while the chunk is computed,
    decaying to 0 over the rest of the overlap; and they are exactly the actions executed next."""
    model = StepModel(head='flow')
    policy = VLAPolicy(model, 'x', n_action_steps=2, chunk_join='rtc', inference_delay=3)
    executed = [policy(frame(t)) for t in range(8)]  # asks at 0 (no plan: no guide), 1 (used at 4), 4, 7
    assert model.guides[0] is None and len(model.guides) == 4
    guide = model.guides[1]  # asked at step 1, with 7 steps of the first chunk left in the plan
    w = guide['weights']
    assert len(w) == H - 1 and np.all(w[:3] == 1) and np.all(np.diff(w[3:]) < 0) and 0 < w[-1] < 1
    assert np.array_equal(guide['target'][0, :3].numpy(), np.stack(executed[1:4]))  # what ran during inference


@pytest.mark.parametrize("head", [FlowMatchingActionHead, DiffusionActionHead])
def test_rtc_guidance_pulls_the_sampled_prefix_to_the_target(head):
    """The sampler, guided with weight 1 on the first 3 steps, lands near the target there (an untrained net's
    samples are far from it), and no nearer than unguided where the weight is 0."""
    torch.manual_seed(0)
    h = head(cond_dim=8, action_dim=2, chunk_size=8, hidden_dim=16, num_blocks=1).eval()
    cond, noise = torch.randn(4, 8), torch.randn(4, 8, 2)
    target = torch.full((4, 8, 2), 0.5)
    weights = torch.zeros(4, 8, 2)
    weights[:, :3] = 1
    free = h(cond, noise=noise.clone())['action']
    guided = h(cond, noise=noise.clone(), guide=dict(target=target, weights=weights, max_weight=5.0))['action']
    err_free, err_guided = (free - target)[:, :3].abs().mean(), (guided - target)[:, :3].abs().mean()
    assert err_guided < 0.1 and err_guided < 0.3 * err_free


def test_training_time_rtc_learns_the_rest_of_a_given_prefix():
    """prefix_max_delay (training-time RTC): each chunk's first d steps go in at flow time 1 (given, with a little
    noise) and get no loss; sampling returns the executing steps (weight 1) unchanged and samples the others."""
    torch.manual_seed(0)
    h = FlowMatchingActionHead(cond_dim=8, action_dim=2, chunk_size=8, hidden_dim=16, num_blocks=1, prefix_max_delay=7)
    seen = {}

    def keep(module, inputs, v):  # the noisy chunk, the times and the velocity the net saw
        v.retain_grad()
        seen.update(x=inputs[0], t=inputs[1], v=v)
    h.net.register_forward_hook(keep)
    cond, target = torch.randn(64, 8), torch.rand(64, 8, 2) * 2 - 1
    h.compute_loss(cond, target)['loss'].backward()
    given = seen['t'] == h.TIME_SCALE  # (B, T)
    d = given.sum(1)
    assert torch.equal(given, torch.arange(8)[None] < d[:, None]) and d.max() > 1  # a prefix at the start
    assert 16 <= (d == 0).sum() <= 48  # about half the chunks are learned from nothing
    off = (seen['x'] - target)[given]  # a given prefix is the demonstration's plus noise of std prefix_noise
    assert 0.5 * h.prefix_noise < off.std() < 2 * h.prefix_noise
    grad = seen['v'].grad.abs().sum(-1)
    assert (grad[given] == 0).all() and (grad[~given] > 0).all()
    h.eval()
    weights = torch.zeros(1, 8, 2)
    weights[:, :3], weights[:, 3:5] = 1, 0.5
    plan = torch.full((1, 8, 2), 0.25)
    out = h(cond[:1], noise=torch.randn(1, 8, 2), guide=dict(target=plan, weights=weights, max_weight=5.0))['action']
    assert torch.equal(out[:, :3], plan[:, :3]) and not torch.allclose(out[:, 3:], plan[:, 3:])
    from model import ManipulationVLAConfig
    with pytest.raises(ValueError, match="action_head_type='flow'"):
        ManipulationVLAConfig(action_head_type='mlp', rtc_train_max_delay=2)
    with pytest.raises(ValueError, match="rtc_train_min_delay=5"):
        ManipulationVLAConfig(action_head_type='flow', rtc_train_max_delay=4, rtc_train_min_delay=5)


def test_training_time_rtc_prefixes_have_the_configured_lengths():
    """rtc_train_min_delay..rtc_train_max_delay bound the given prefixes (min = max: only the deployed delay); the
    values reach the head from the config, and the chunks with no prefix stay."""
    h = tiny_model("flow", rtc_train_max_delay=3, rtc_train_min_delay=2).head
    assert (h.prefix_min_delay, h.prefix_max_delay) == (2, 3)
    seen = {}
    h.net.register_forward_hook(lambda module, inputs, v: seen.update(t=inputs[1]))
    torch.manual_seed(0)
    h.compute_loss(torch.randn(256, h.net.cond_proj.in_features), torch.rand(256, 4, 2) * 2 - 1)
    d = (seen['t'] == h.TIME_SCALE).sum(1)
    assert set(d.tolist()) == {0, 2, 3}


def test_rtc_through_the_model_in_raw_units_and_refused_where_it_cannot_run():
    model = tiny_model("flow")
    policy = VLAPolicy(model, INSTRUCTION, n_action_steps=2, chunk_join='rtc', inference_delay=1)
    for t in range(6):
        assert np.isfinite(policy(frame(t))).all()
    with pytest.raises(ValueError, match="diffusion or flow"):
        VLAPolicy(tiny_model("mlp"), INSTRUCTION, n_action_steps=2, chunk_join='rtc')
    with pytest.raises(ValueError, match="a chunk must last until the next one arrives"):
        VLAPolicy(model, INSTRUCTION, n_action_steps=2, inference_delay=3)  # chunk 4 < 2 * 3
    with pytest.raises(ValueError, match="chunk_join='jump'"):
        VLAPolicy(model, INSTRUCTION, n_action_steps=2, chunk_join='jump')


def test_a_flow_heads_temperature_is_stored_and_can_be_replaced_at_load(tmp_path):
    """flow_noise_scale travels in the checkpoint; load_policy(flow_noise_scale=s) (eval.py --flow_noise_scale) replaces
    it, and 0 makes the policy deterministic. Other heads refuse it, in the config and at load."""
    from model import ManipulationVLAConfig
    from policy import load_policy
    from test_deploy import save_checkpoint
    ckpt = save_checkpoint(tiny_model("flow", flow_noise_scale=0.5), tmp_path / "flow")
    _, policy = load_policy(ckpt)
    assert policy.model.head.noise_scale == 0.5
    _, policy = load_policy(ckpt, flow_noise_scale=0.0)
    assert policy.model.head.noise_scale == 0.0 and policy.model.config.flow_noise_scale == 0.0
    obs = policy.observe(frame(3))
    assert np.array_equal(policy.predict_chunk(*obs), policy.predict_chunk(*obs))
    with pytest.raises(ValueError, match="belongs to a flow head"):
        load_policy(save_checkpoint(tiny_model("mlp"), tmp_path / "mlp"), flow_noise_scale=0.5)
    with pytest.raises(ValueError, match="needs action_head_type='flow'"):
        ManipulationVLAConfig(action_head_type="diffusion", flow_noise_scale=0.5)
    with pytest.raises(ValueError, match="needs action_head_type='flow'"):
        ManipulationVLAConfig(action_head_type="flow", flow_noise_scale=-1.0)


class Robot:
    action_dim = 2

    def __init__(self):
        self.t, self.sent, self.done, self.success = 0, [], False, False

    def get_observation(self):
        return frame(self.t)

    def send_action(self, a):
        self.sent.append(np.asarray(a))
        self.t += 1


def test_a_crash_in_the_inference_thread_stops_the_robot_through_the_shield():
    policy = VLAPolicy(StepModel(sleep=0.01, fail_at=6), 'x', n_action_steps=2, inference_delay=1, threaded=True)
    robot = Robot()
    shield = SafetyShield(2, 1e6, watchdog_timeout=1.0)
    stats = control_loop(policy, robot, shield, rate=100, max_steps=50, hold=[0.0, 0.0])
    assert stats['stopped'].startswith('policy error: RuntimeError: CUDA error') and shield.counts['estop'] == 1
    assert stats['steps'] < 50 and np.array_equal(robot.sent[-1], robot.sent[-2])  # held the last command
    assert not [th for th in threading.enumerate() if th.name.startswith('nanovla-inference')]


def test_async_control_loop_reports_the_chunk_delay():
    policy = VLAPolicy(StepModel(sleep=0.05), 'x', n_action_steps=2, inference_delay=0, threaded=True)
    stats = control_loop(policy, Robot(), SafetyShield(2, 1e6, watchdog_timeout=1.0), rate=100, max_steps=40,
                         hold=[0.0, 0.0])
    assert stats['steps'] == 40 and not stats['stopped']
    assert stats['max_chunk_delay'] >= 2 and stats['mean_chunk_delay'] > 1  # 50 ms at 10 ms per step
    assert not [th for th in threading.enumerate() if th.name.startswith('nanovla-inference')]


def test_cli_runs_a_checkpoint_asynchronously_in_deploy_and_with_a_delay_in_eval(tmp_path):
    """The keys a user types: deploy.py run --async_inference with RTC on a flow checkpoint, and eval.py
    --inference_delay, whose report carries the chunk delay and the command's jerk."""
    import json
    import subprocess
    from test_deploy import REPO, cli, save_checkpoint
    ckpt = save_checkpoint(tiny_model("flow"), tmp_path / "ckpt")  # chunk 4, 2 actions executed
    r = cli("run", f"--policy={ckpt}", "--episodes=1", "--max_steps=12", "--rate=20", "--async_inference=True",
            "--chunk_join=rtc", "--inference_delay=1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "chunk delay mean" in r.stdout and "stopped:" not in r.stdout
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, os.path.join(REPO, "eval.py"), f"--ckpt={ckpt}", "--episodes=1", "--videos=0",
                        "--max_steps=12", "--inference_delay=2", "--chunk_join=switch", f"--out={out}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    ep = json.load(open(out))['episodes'][0]
    assert ep['max_chunk_delay'] == 2 and ep['steps'] == 12 and 'jerk' in ep
    r = cli("run", f"--policy={ckpt}", "--max_steps=2", "--inference_delay=3")  # chunk 4 cannot cover 2 + 3
    assert r.returncode != 0 and "a chunk must last until the next one arrives" in r.stderr
