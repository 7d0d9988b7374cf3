"""heads.py: shapes, learning, multimodality, samplers against an exact denoiser, Gaussian log-probs."""
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from heads import (DiffusionActionHead, FlowMatchingActionHead, GaussianActionHead,  # noqa: E402
                   MixtureActionHead, MLPActionHead, TransformerActionHead, make_beta_schedule)

torch.set_num_threads(min(2, torch.get_num_threads()))
N, D = 3, 8  # conditioning tokens and their width


def make_head(kind, action_dim, chunk, **kw):
    """A tiny head of each kind reading (B, N, D) tokens."""
    if kind == "mlp":
        return MLPActionHead(N * D, action_dim, chunk, hidden_dim=32, **kw)
    if kind == "gaussian":
        return GaussianActionHead(N * D, action_dim, chunk, hidden_dim=32, **kw)
    if kind == "mixture":
        return MixtureActionHead(N * D, action_dim, chunk, hidden_dim=32, **kw)
    if kind == "diffusion":
        return DiffusionActionHead(N * D, action_dim, chunk, hidden_dim=32, num_blocks=2, **kw)
    if kind == "flow":
        return FlowMatchingActionHead(N * D, action_dim, chunk, hidden_dim=32, num_blocks=2, **kw)
    return TransformerActionHead(D, action_dim, chunk, hidden_dim=32, num_layers=1, **kw)


KINDS = ["mlp", "gaussian", "mixture", "diffusion", "flow", "transformer"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [1, 5])
@pytest.mark.parametrize("batch", [1, 3])
def test_shapes(kind, chunk, batch):
    head = make_head(kind, 2, chunk)
    cond = torch.randn(batch, N, D)
    action = head(cond)["action"]
    assert action.shape == (batch, chunk, 2)
    loss = head.compute_loss(cond, torch.rand(batch, chunk, 2) * 2 - 1, torch.ones(batch, chunk, dtype=torch.bool))["loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("kind", KINDS)
def test_overfits_a_fixed_batch(kind):
    torch.manual_seed(0)
    head = make_head(kind, 2, 4)
    cond, target = torch.randn(8, N, D), torch.rand(8, 4, 2) * 1.6 - 0.8
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = head.compute_loss(cond, target)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, f"{kind}: loss {first:.3f} -> {last:.3f}"


@pytest.mark.parametrize("kind", KINDS)
def test_padded_steps_do_not_change_the_loss(kind):
    head = make_head(kind, 2, 4)
    cond, target = torch.randn(3, N, D), torch.rand(3, 4, 2) * 2 - 1
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    other = torch.where(mask.unsqueeze(-1), target, torch.full_like(target, 0.9))
    torch.manual_seed(1)
    a = head.compute_loss(cond, target, mask)["loss"]
    torch.manual_seed(1)
    b = head.compute_loss(cond, other, mask)["loss"]
    torch.manual_seed(1)
    c = head.compute_loss(cond, other)["loss"]
    assert torch.allclose(a, b) and not torch.allclose(a, c)


def train_bimodal(head, steps=400):
    """1-D actions at -0.6 or +0.6 with equal probability for the same observation."""
    torch.manual_seed(0)
    cond = torch.zeros(256, N, D)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    for _ in range(steps):
        target = (torch.randint(0, 2, (256, 1, 1)) * 1.2 - 0.6).float()
        loss = head.compute_loss(cond, target)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return head(torch.zeros(400, N, D))["action"].flatten()


@pytest.mark.parametrize("kind", ["diffusion", "flow"])
def test_generative_heads_sample_both_modes(kind):
    a = train_bimodal(make_head(kind, 1, 1))
    near_low, near_high = ((a + 0.6).abs() < 0.2).float().mean(), ((a - 0.6).abs() < 0.2).float().mean()
    assert near_low > 0.3 and near_high > 0.3, f"{kind}: {near_low:.2f} near -0.6, {near_high:.2f} near +0.6"


def test_mlp_head_averages_the_modes():
    a = train_bimodal(make_head("mlp", 1, 1, loss="mse"), steps=200)
    assert a.abs().max() < 0.2, "MSE regression should predict the mean of two symmetric modes"


def test_mixture_head_commits_to_one_mode_and_weighs_both():
    """Where L1 / MSE regression lands between two pushes, the mixture keeps both and executes one of them."""
    head = make_head("mixture", 1, 1, num_components=3)
    a = train_bimodal(head)
    assert ((a.abs() - 0.6).abs() < 0.05).all(), f"actions {a.min():.3f}..{a.max():.3f} are not at a mode (+-0.6)"
    with torch.no_grad():
        log_w, mean, _ = head.distribution(torch.zeros(1, N, D))
    heavy = log_w.exp()[0] > 0.25  # the components that carry the data
    assert torch.isclose(log_w.exp()[0][heavy].sum(), torch.tensor(1.0), atol=0.05)
    modes = sorted(mean[0, heavy, 0, 0].tolist())
    assert modes[0] < -0.55 and modes[-1] > 0.55, f"heavy components at {modes}: both modes should be kept"


class ExactEps(torch.nn.Module):
    """The exact eps-predictor for 1-D Gaussian data a0 ~ N(mu, s^2): a_t is jointly Gaussian with eps, so
    E[eps | a_t] = sqrt(1 - ab) (a_t - sqrt(ab) mu) / (ab s^2 + 1 - ab). A sampler fed this must output N(mu, s^2)."""

    def __init__(self, alpha_bar, mu, s):
        super().__init__()
        self.alpha_bar, self.mu, self.s = alpha_bar, mu, s

    def forward(self, x, t, cond):
        ab = self.alpha_bar[t].view(-1, 1, 1)
        return (1 - ab).sqrt() * (x - ab.sqrt() * self.mu) / (ab * self.s ** 2 + 1 - ab)


def sample_exact(mu, s, sampler, train_steps, steps, schedule, n=4000):
    head = DiffusionActionHead(1, 1, 1, num_train_steps=train_steps, schedule=schedule, sampler=sampler,
                               num_inference_steps=steps)
    head.net = ExactEps(head.alpha_bar, mu, s)
    torch.manual_seed(0)
    a = head(torch.zeros(n, 1, 1))["action"].flatten()
    return a.mean().item(), a.std().item()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_samplers_converge_to_the_target_distribution(sampler, schedule):
    """With the exact denoiser and a fine chain (1000 steps) both samplers reproduce N(mu, s^2) exactly:
    DDPM's posterior step and DDIM's update are right. (The seed's sampler, which divided the noise out
    as if jumping to a0 at every step, fails this.)"""
    mean, std = sample_exact(0.3, 0.2, sampler, 1000, 1000, schedule)
    assert abs(mean - 0.3) < 0.01 and abs(std - 0.2) < 0.01, f"mean {mean:.3f} std {std:.3f}"


@pytest.mark.parametrize("sampler,steps", [("ddim", 10), ("ddpm", 100), ("ddpm", 20)])
def test_few_step_sampling_matches_the_target_distribution(sampler, steps):
    """The default recipe (100-step cosine chain, DDIM with 10 steps) keeps the mean and most of the
    spread. Large deterministic steps shrink the variance a bit (Euler error of the DDIM ODE), as does
    DDPM's posterior variance (a lower bound on the true reverse variance, Ho et al. 2020 sec. 3.2)."""
    mean, std = sample_exact(0.1, 0.4, sampler, 100, steps, "cosine")
    assert abs(mean - 0.1) < 0.03 and 0.75 * 0.4 < std < 1.05 * 0.4, f"mean {mean:.3f} std {std:.3f}"


def test_sample_prediction_matches_epsilon_prediction():
    """prediction='sample' with the exact x0-predictor gives the same DDIM trajectory as the exact eps."""
    mu, s = 0.3, 0.2
    eps_head = DiffusionActionHead(1, 1, 1, prediction="epsilon")
    eps_head.net = ExactEps(eps_head.alpha_bar, mu, s)
    x0_head = DiffusionActionHead(1, 1, 1, prediction="sample")

    class ExactX0(torch.nn.Module):
        def forward(self, x, t, cond):
            ab = eps_head.alpha_bar[t].view(-1, 1, 1)
            return (x - (1 - ab).sqrt() * eps_head.net(x, t, cond)) / ab.sqrt()

    x0_head.net = ExactX0()
    noise = torch.randn(50, 1, 1)
    cond = torch.zeros(50, 1, 1)
    assert torch.allclose(eps_head(cond, noise=noise)["action"], x0_head(cond, noise=noise)["action"], atol=1e-4)


def test_schedules():
    for kind in ("linear", "cosine"):
        betas = make_beta_schedule(100, kind)
        alpha_bar = torch.cumprod(1 - betas, 0)
        assert betas.shape == (100,) and (betas > 0).all() and (betas < 1).all()
        assert alpha_bar[0] > 0.99 and alpha_bar[-1] < 0.01, f"{kind}: the chain must end in (nearly) pure noise"
    with pytest.raises(ValueError, match="cosine"):
        make_beta_schedule(100, "quadratic")


def test_flow_euler_with_exact_velocity_is_exact():
    """Straight paths: for a point-mass target the exact velocity (a - x)/(1 - tau) makes Euler exact."""
    head = FlowMatchingActionHead(1, 1, 1, num_steps=4)

    class ExactVelocity(torch.nn.Module):
        def forward(self, x, t, cond):
            return (0.5 - x) / (1 - t / head.TIME_SCALE).view(-1, 1, 1)

    head.net = ExactVelocity()
    assert torch.allclose(head(torch.zeros(10, 1, 1))["action"], torch.full((10, 1, 1), 0.5), atol=1e-5)


def test_flow_noise_scale_is_a_sampling_temperature():
    """noise_scale s starts the paths from s * N(0, I): the same draw passed in, scaled by s, gives the same chunk, the
    unscaled draw another one; s = 0 always starts from the noise's mode, so it samples one fixed chunk."""
    torch.manual_seed(0)
    head, cond = make_head("flow", 2, 5, noise_scale=0.25), torch.randn(3, N, D)
    torch.manual_seed(1)
    scaled = head(cond)["action"]
    torch.manual_seed(1)
    draw = torch.randn(3, 5, 2)
    assert torch.allclose(scaled, head(cond, noise=0.25 * draw)["action"])
    assert not torch.allclose(scaled, head(cond, noise=draw)["action"])
    head.noise_scale = 0.0
    assert torch.equal(head(cond)["action"], head(cond)["action"])


def test_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    head = GaussianActionHead(N * D, 3, 4, hidden_dim=16)
    cond, action = torch.randn(5, N, D), torch.randn(5, 4, 3)
    mean, log_std = head.distribution(cond)
    assert (log_std >= head.LOG_STD_MIN).all() and (log_std <= head.LOG_STD_MAX).all()
    ref = torch.distributions.Normal(mean, log_std.exp()).log_prob(action)
    assert torch.allclose(head.log_prob(cond, action), ref.sum((1, 2)), atol=1e-5)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[:, 2:] = False
    assert torch.allclose(head.log_prob(cond, action, mask), ref[:, :2].sum((1, 2)), atol=1e-5)
    assert torch.allclose(head.compute_loss(cond, action)["loss"], -ref.mean(), atol=1e-5)
    assert torch.equal(head(cond)["action"], mean)  # deterministic mean at inference
    assert not torch.equal(head.sample(cond), mean)
    head.log_prob(cond, action).sum().backward()  # differentiable for policy gradients
    assert all(p.grad is not None for p in head.parameters())
    assert math.isfinite(head.compute_loss(cond, action)["std"].item())
