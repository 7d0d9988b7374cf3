"""eval.py: the closed-loop wrapper executes chunks and ensembles them as ACT does, rollouts are
reproducible per seed, metrics are computed from the simulator, broken policies fail loudly."""
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs  # noqa: E402
from eval import ManipulationEvaluator, VLAPolicy  # noqa: E402


class CountingModel(torch.nn.Module):
    """Predicts chunk k (the k-th call) as actions [100k, 100k+1, ...] in both dims: easy to trace."""

    def __init__(self, chunk=4, nan=False):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.chunk, self.calls, self.nan, self.instructions = chunk, 0, nan, []

    def encode_instruction(self, texts):
        self.instructions.append(list(texts))
        return {'text_embeds': torch.zeros(1, 1, 1), 'text_mask': torch.ones(1, 1, dtype=torch.bool)}

    def predict_action(self, batch, instruction_cache=None, guide=None):
        assert batch['images'].shape == (1, 1, 3, 96, 96) and batch['images'].dtype == torch.uint8
        assert batch['proprio'].shape == (1, 2)
        assert instruction_cache is not None
        a = 100.0 * self.calls + torch.arange(self.chunk, dtype=torch.float32)
        self.calls += 1
        out = a.view(1, -1, 1).repeat(1, 1, 2)
        return out * float('nan') if self.nan else out


def frame():
    return {'observation.image': np.zeros((96, 96, 3), np.uint8), 'observation.state': np.zeros(2, np.float32)}


def test_action_chunks_are_executed_n_action_steps_at_a_time():
    model = CountingModel(chunk=4)
    policy = VLAPolicy(model, 'push', n_action_steps=3)
    got = [policy(frame())[0] for _ in range(7)]
    assert got == [0, 1, 2, 100, 101, 102, 200]  # 3 from each chunk, then re-predict
    assert model.calls == 3
    policy.reset()
    policy(frame())
    assert model.calls == 4 and len(model.instructions) == 1  # instruction encoded once, not per episode


def test_temporal_ensembling_weights_older_chunks_more():
    """ACT: a_t = sum_i w_i A_i[t - t_i] / sum_i w_i with w_i = exp(-m * i), i = 0 the oldest chunk."""
    m = 0.5
    policy = VLAPolicy(CountingModel(chunk=4), 'push', n_action_steps=1, temporal_ensemble_coeff=m)
    acts = [policy(frame())[0] for _ in range(6)]
    w = np.exp(-m * np.arange(3))
    expected_t2 = (w * np.array([0 + 2, 100 + 1, 200 + 0])).sum() / w.sum()  # chunks 0, 1, 2 cover t=2
    assert acts[0] == 0 and acts[2] == pytest.approx(expected_t2)
    w4 = np.exp(-m * np.arange(4))
    expected_t5 = (w4 * np.array([200 + 3, 300 + 2, 400 + 1, 500 + 0])).sum() / w4.sum()  # chunks 0, 1 expired
    assert acts[5] == pytest.approx(expected_t5)
    # re-planning every 2 steps: each step averages the chunks that cover it, the same weights
    policy = VLAPolicy(CountingModel(chunk=4), 'push', n_action_steps=2, temporal_ensemble_coeff=m)
    acts = [policy(frame())[0] for _ in range(3)]
    assert acts[:2] == [0, 1] and acts[2] == pytest.approx((2 + np.exp(-m) * 100) / (1 + np.exp(-m)))


def test_nan_actions_fail_loudly():
    policy = VLAPolicy(CountingModel(nan=True), 'push', n_action_steps=2)
    with pytest.raises(RuntimeError, match='NaN'):
        policy(frame())


class CirclePolicy:
    """Moves the pusher on a circle through the arena: touches the block on some seeds."""

    def reset(self):
        self.t = 0

    def __call__(self, frame, env=None):
        self.t += 1
        return np.array([256 + 150 * np.cos(self.t / 8), 256 + 150 * np.sin(self.t / 8)], np.float32)


def test_evaluator_is_reproducible_and_reports_simulator_metrics():
    ev = ManipulationEvaluator('pusht', n_episodes=2, start_seed=envs.VAL_SEED, max_steps=40, progress=False)
    a, b = ev.evaluate(CirclePolicy()), ev.evaluate(CirclePolicy())
    assert [e['max_reward'] for e in a['episodes']] == [e['max_reward'] for e in b['episodes']]
    assert [e['position_error'] for e in a['episodes']] == [e['position_error'] for e in b['episodes']]
    assert a['n_episodes'] == 2 and all(e['steps'] == 40 for e in a['episodes'])  # never succeeds in 40 steps
    assert a['success_rate'] == 0.0 and 0.0 <= a['avg_max_reward'] < 1.0
    assert 0.0 <= a['avg_orientation_error'] <= 180.0 and a['avg_position_error'] > 0.0
    assert a['avg_smoothness'] == pytest.approx(2 * 150 * np.sin(1 / 16), rel=1e-3)  # chord of the circle per step
    other = ManipulationEvaluator('pusht', n_episodes=2, start_seed=envs.TEST_SEED, max_steps=40, progress=False)
    assert [e['position_error'] for e in other.evaluate(CirclePolicy())['episodes']] != \
        [e['position_error'] for e in a['episodes']]  # different seeds -> different initial states


class SamplingPolicy:
    """Draws its action from torch's generator, as a flow or diffusion head draws its noise."""

    def reset(self):
        pass

    def __call__(self, frame, env=None):
        return (256 + 100 * torch.randn(2)).numpy()


def test_a_sampling_policy_gives_the_same_episode_from_its_seed_alone():
    """Each episode seeds torch's generator from its seed, so a row is reproducible whatever ran before it (or in
    which worker), episodes still differ from each other, and the caller's generator is left as it was."""
    ev = ManipulationEvaluator('pusht', n_episodes=3, start_seed=envs.VAL_SEED, max_steps=10, progress=False)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = [e['smoothness'] for e in ev.evaluate(SamplingPolicy())['episodes']]
    assert torch.equal(torch.get_rng_state(), state)  # a training run's batches do not depend on its evaluations
    torch.randn(5)  # the generator moved on: the same seeds still give the same episodes
    b = [e['smoothness'] for e in ev.evaluate(SamplingPolicy())['episodes']]
    last = ManipulationEvaluator('pusht', n_episodes=1, start_seed=envs.VAL_SEED + 2, max_steps=10, progress=False)
    c = last.evaluate(SamplingPolicy())['episodes'][0]['smoothness']  # episode 3 alone, as a worker would run it
    assert a == b and c == a[2] and len(set(a)) == 3


def test_unknown_task_is_named():
    with pytest.raises(ValueError, match='unknown task'):
        ManipulationEvaluator('pushq')


def test_command_smoothness_measures_jerk_and_what_the_shield_would_limit():
    from eval import command_smoothness
    ramp = np.stack([np.arange(10.0) * 5, np.zeros(10)], 1)  # constant velocity: no jerk, steps of 5 px
    m = command_smoothness(ramp, envs.TASKS['pusht'])
    assert m['jerk'] == 0 and m['smoothness'] == 5 and m['rate_limited_steps'] == 0
    jump = ramp.copy()
    jump[5:, 0] += 100  # a switch to a chunk 100 px away: one step over PushT's 40 px limit, jerk spikes
    m = command_smoothness(jump, envs.TASKS['pusht'])
    assert m['rate_limited_steps'] == 1 and m['jerk'] > 50
    lift = np.array([[0.0, 0, 0, -1], [3.0, 0, 0, -1], [0.0, 0, 0, 1]])  # Lift: a delta dim's value is what is limited
    assert command_smoothness(lift, envs.TASKS['lift'])['rate_limited_steps'] == 1
