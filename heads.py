"""
Action heads: turn the backbone's features into a chunk of future actions.

    cond (B, N, D) backbone tokens --head--> action (B, T, A)    T = chunk size, A = action dim

Heads work on NORMALIZED actions in [-1, 1] (model.py normalizes and un-normalizes). Every
head has the same two calls:

    head(cond)                             -> dict(action=(B, T, A), ...)   inference
    head.compute_loss(cond, target, mask)  -> dict(loss=scalar, ...)        training

`mask` (B, T) is True where a step counts: chunks that run past an episode's end are padded,
and training on the padding would teach the policy to freeze (ACT, Zhao et al. 2023, drops
them the same way). A (B, T, A) mask also drops action dims (multi-task: a 2-D pusher's actions
padded to a 14-D arm's). The heads, from simplest to most expressive:

    MLPActionHead           regression (L1 or MSE): one answer, averages multimodal demos
    GaussianActionHead      a diagonal Gaussian: NLL loss, log_prob for policy gradient / GAIL
    MixtureActionHead       K Laplace components: keeps multimodal demos' modes apart at the MLP's cost
    DiffusionActionHead     DDPM training, DDPM or DDIM sampling (Chi et al. 2023)
    FlowMatchingActionHead  rectified flow, few Euler steps (Lipman et al. 2023; pi0, Black et al. 2024)
    TransformerActionHead   ACT decoder: one learned query per chunk step cross-attends the tokens

All but the transformer head read a fixed number of tokens and flatten them: cond_dim = N * D.
The transformer head keeps them as a sequence: cond_dim = D.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def element_mask(mask, x):
    """A (B, T) step mask or a (B, T, A) element mask as (B, T, A) weights in x's dtype."""
    m = mask.to(x.dtype)
    return m.unsqueeze(-1).expand_as(x) if m.dim() == 2 else m


def masked_mean(x, mask=None):
    """Mean of a per-element loss x (B, T, A) over the steps where mask (B, T) is True, or over the
    elements where mask (B, T, A) is True (multi-task: padded action dims of a smaller robot)."""
    if mask is None:
        return x.mean()
    m = element_mask(mask, x)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def hold_last_valid(target, mask=None):
    """Overwrite padded steps of target (B, T, A) with the last valid action. The generative heads
    denoise the whole chunk with temporal convolutions, so padded values would leak into the valid
    steps' predictions; holding the last action (what a robot at rest does) keeps the loss a function
    of valid steps only."""
    if mask is None:
        return target
    if mask.dim() == 3:  # (B, T, A) element mask: a step is valid where any of its dims counts
        mask = mask.any(-1)
    steps = torch.arange(target.shape[1], device=target.device)
    idx = (steps * mask.long()).cummax(dim=1).values  # (B, T) index of the last valid step so far
    return target.gather(1, idx.unsqueeze(-1).expand_as(target))


def mlp(in_dim, hidden_dim, out_dim, num_layers=2):
    """num_layers hidden Linear+GELU layers, then a linear output."""
    layers, d = [], in_dim
    for _ in range(num_layers):
        layers += [nn.Linear(d, hidden_dim), nn.GELU()]
        d = hidden_dim
    return nn.Sequential(*layers, nn.Linear(d, out_dim))


def squash(raw, low, high):
    """raw -> (low, high) smoothly with a tanh: the bounded log-scales of the likelihood heads (a hard clamp
    would stop the gradient at the bounds)."""
    return low + 0.5 * (high - low) * (torch.tanh(raw) + 1)


def regression_loss(pred, target, kind):
    """Element-wise L1 (ACT's choice: sharper than MSE on demonstrations) or MSE."""
    if kind == "l1":
        return (pred - target).abs()
    if kind == "mse":
        return (pred - target) ** 2
    raise ValueError(f"regression loss must be 'l1' or 'mse', got {kind!r}")


class MLPActionHead(nn.Module):
    """Flattened tokens -> MLP -> the whole chunk at once. Fast and strong on unimodal data; on
    multimodal demos (go left OR right around an obstacle) MSE predicts their average."""

    def __init__(self, cond_dim, action_dim, chunk_size, hidden_dim=256, num_layers=2, loss="l1"):
        super().__init__()
        self.action_dim, self.chunk_size, self.loss = action_dim, chunk_size, loss
        self.net = mlp(cond_dim, hidden_dim, chunk_size * action_dim, num_layers)

    def forward(self, cond):
        action = self.net(cond.flatten(1)).view(-1, self.chunk_size, self.action_dim)  # (B, T, A)
        return dict(action=action)

    def compute_loss(self, cond, target, mask=None):
        return dict(loss=masked_mean(regression_loss(self(cond)["action"], target, self.loss), mask))


class GaussianActionHead(nn.Module):
    """A diagonal Gaussian over the chunk: pi(a|s) = N(mean(s), diag(std(s)^2)). Trained by negative
    log-likelihood; log_prob is what policy-gradient methods (PPO, GAIL) differentiate. Inference
    uses the mean; sample() draws for exploration."""
    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # std in [0.007, 7.4]: no collapse to a spike, no blow-up

    def __init__(self, cond_dim, action_dim, chunk_size, hidden_dim=256, num_layers=2):
        super().__init__()
        self.action_dim, self.chunk_size = action_dim, chunk_size
        self.net = mlp(cond_dim, hidden_dim, 2 * chunk_size * action_dim, num_layers)

    def distribution(self, cond):
        """-> mean, log_std, each (B, T, A), the log-std squashed into its range."""
        out = self.net(cond.flatten(1)).view(-1, self.chunk_size, 2 * self.action_dim)
        mean, raw = out.chunk(2, dim=-1)
        log_std = squash(raw, self.LOG_STD_MIN, self.LOG_STD_MAX)
        return mean, log_std

    def forward(self, cond, deterministic=True):
        mean, log_std = self.distribution(cond)
        action = mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)
        return dict(action=action, mean=mean, log_std=log_std)

    def sample(self, cond):
        """A random action chunk (B, T, A) from the policy."""
        return self(cond, deterministic=False)["action"]

    @staticmethod
    def _elementwise_log_prob(action, mean, log_std):
        # log N(a; mu, sigma) = -((a - mu) / sigma)^2 / 2 - log sigma - log(2 pi) / 2
        return -0.5 * ((action - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)

    def log_prob(self, cond, action, mask=None):
        """log pi(action | cond) summed over the chunk's valid steps and action dims -> (B,)."""
        lp = self._elementwise_log_prob(action, *self.distribution(cond))  # (B, T, A)
        if mask is not None:
            lp = lp * element_mask(mask, lp)
        return lp.sum(dim=(1, 2))

    def compute_loss(self, cond, target, mask=None):
        mean, log_std = self.distribution(cond)
        nll = -self._elementwise_log_prob(target, mean, log_std)
        return dict(loss=masked_mean(nll, mask), std=log_std.exp().mean().detach())


class MixtureActionHead(nn.Module):
    """A mixture of K Laplace distributions over the whole chunk (robomimic's GMM head, Mandlekar et al.
    2021, with the L1 loss's distribution). L1 regression is maximum likelihood under ONE Laplace, so on
    multimodal demos (push now, or go around first) it predicts a median between the modes; with K
    components each mode keeps its own chunk and a weight, and inference commits to the heaviest one.
    Costs what the MLP head costs: one MLP outputs the K weights, means and scales."""
    LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 1.0  # scale in [0.0009, 2.7] of the normalized [-1, 1] range

    def __init__(self, cond_dim, action_dim, chunk_size, hidden_dim=256, num_layers=2, num_components=5):
        super().__init__()
        self.action_dim, self.chunk_size, self.k = action_dim, chunk_size, num_components
        self.net = mlp(cond_dim, hidden_dim, num_components * (1 + 2 * chunk_size * action_dim), num_layers)

    def distribution(self, cond):
        """-> log weights (B, K), means (B, K, T, A), log scales (B, K, T, A)."""
        out = self.net(cond.flatten(1))
        logits, rest = out[:, :self.k], out[:, self.k:].view(-1, self.k, self.chunk_size, 2 * self.action_dim)
        mean, raw = rest.chunk(2, dim=-1)
        log_scale = squash(raw, self.LOG_SCALE_MIN, self.LOG_SCALE_MAX)
        return logits.log_softmax(-1), mean, log_scale

    def forward(self, cond):
        log_w, mean, _ = self.distribution(cond)
        best = log_w.argmax(-1)  # commit to the most likely mode: a mean between modes is no mode at all
        return dict(action=mean[torch.arange(mean.shape[0], device=mean.device), best], weights=log_w.exp())

    def compute_loss(self, cond, target, mask=None):
        log_w, mean, log_scale = self.distribution(cond)
        # log Laplace(a; mu, b) = -|a - mu| / b - log(2b), summed over the chunk's valid elements per component
        lp = -(target.unsqueeze(1) - mean).abs() / log_scale.exp() - log_scale - math.log(2)  # (B, K, T, A)
        m = element_mask(mask, target) if mask is not None else torch.ones_like(target)  # (B, T, A)
        log_lik = torch.logsumexp(log_w + (lp * m.unsqueeze(1)).sum(dim=(2, 3)), dim=-1)  # (B,) log sum_k w_k p_k
        n_valid = m.sum(dim=(1, 2)).clamp(min=1.0)  # per sample: the loss is per element, like L1's
        return dict(loss=-(log_lik / n_valid).mean(), scale=log_scale.exp().mean().detach())


# ----------------------------------------------------------------------------- denoiser
class FiLMResBlock(nn.Module):
    """Two temporal convolutions with a residual; the conditioning scales and shifts the features in
    between (FiLM, Perez et al. 2018), as in diffusion policy's ConditionalResidualBlock1D."""

    def __init__(self, channels, cond_dim, kernel_size=5):
        super().__init__()
        groups = math.gcd(8, channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm1, self.norm2 = nn.GroupNorm(groups, channels), nn.GroupNorm(groups, channels)
        self.film = nn.Linear(cond_dim, 2 * channels)

    def forward(self, x, c):  # x (B, C, T), c (B, 1 or T, Dc): one conditioning for the chunk, or one per step
        h = F.mish(self.norm1(self.conv1(x)))
        scale, shift = self.film(c).transpose(1, 2).chunk(2, dim=1)  # (B, C, 1 or T) each
        h = h * (1 + scale) + shift
        return x + F.mish(self.norm2(self.conv2(h)))


def sinusoidal_embedding(t, dim):
    """(B,) float timesteps -> (B, dim) sines and cosines of geometric frequencies (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([args.sin(), args.cos()], dim=-1)


class Denoiser(nn.Module):
    """eps/x0/velocity network shared by the diffusion and flow heads:
    (x (B, T, A), t (B,) or one per step (B, T), cond (B, cond_dim)) -> (B, T, A). A stack of FiLM residual
    blocks over the chunk's time axis: cheap on a CPU, and the convolutions make chunks smooth."""

    def __init__(self, action_dim, cond_dim, hidden_dim=128, num_blocks=3, time_dim=64):
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden_dim), nn.Mish(), nn.Linear(hidden_dim, hidden_dim))
        self.cond_proj = nn.Linear(cond_dim, hidden_dim)
        self.inp = nn.Conv1d(action_dim, hidden_dim, 1)
        self.blocks = nn.ModuleList(FiLMResBlock(hidden_dim, hidden_dim) for _ in range(num_blocks))
        self.out = nn.Conv1d(hidden_dim, action_dim, 1)

    def forward(self, x, t, cond):
        time = self.time_mlp(sinusoidal_embedding(t.flatten(), self.time_dim))
        time = time.view(x.shape[0], -1, time.shape[-1])  # (B, 1 or T, H)
        c = F.mish(self.cond_proj(cond).unsqueeze(1) + time)
        h = self.inp(x.transpose(1, 2))  # (B, H, T)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h).transpose(1, 2)  # (B, T, A)


# ----------------------------------------------------------------------------- diffusion
def make_beta_schedule(num_steps, kind):
    """Noise variances beta_1..beta_T. 'linear': DDPM's 1e-4..0.02 for T=1000 (Ho et al. 2020),
    rescaled by 1000/T so short chains still end in pure noise (Nichol & Dhariwal 2021).
    'cosine': alpha_bar(t) = cos^2((t/T + s)/(1 + s) * pi/2), gentler at both ends (same paper)."""
    if kind == "linear":
        scale = 1000.0 / num_steps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
    if kind == "cosine":
        s = 0.008
        t = torch.linspace(0, num_steps, num_steps + 1, dtype=torch.float64) / num_steps
        alpha_bar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"diffusion_schedule must be 'linear' or 'cosine', got {kind!r}")


class DiffusionActionHead(nn.Module):
    """Denoising diffusion over the action chunk (DDPM, Ho et al. 2020; diffusion policy, Chi et al. 2023).

    Training: a_t = sqrt(alpha_bar_t) a_0 + sqrt(1 - alpha_bar_t) eps, the network predicts eps
    (prediction='epsilon') or a_0 ('sample'), MSE. Sampling walks noise back to an action along
    num_inference_steps timesteps spread over [T-1, 0] ("trailing", Lin et al. 2024), either
      'ddpm': sample the posterior q(a_s | a_t, a_0_hat) (Ho et al. eq. 6-7; with a stride, the
              posterior of the sub-chain), or
      'ddim': the deterministic update a_s = sqrt(ab_s) a_0_hat + sqrt(1-ab_s) eps_hat (Song et al.
              2021 eq. 12, eta=0), which keeps quality with 10 steps of a 100-step chain."""

    def __init__(self, cond_dim, action_dim, chunk_size, hidden_dim=128, num_blocks=3, num_train_steps=100,
                 schedule="cosine", prediction="epsilon", sampler="ddim", num_inference_steps=10):
        super().__init__()
        if prediction not in ("epsilon", "sample"):
            raise ValueError(f"diffusion_prediction must be 'epsilon' or 'sample', got {prediction!r}")
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"diffusion_sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        if not 1 <= num_inference_steps <= num_train_steps:
            raise ValueError(f"diffusion_inference_steps={num_inference_steps} must be in [1, diffusion_steps={num_train_steps}]")
        self.action_dim, self.chunk_size = action_dim, chunk_size
        self.num_train_steps, self.prediction = num_train_steps, prediction
        self.sampler, self.num_inference_steps = sampler, num_inference_steps
        alpha_bar = torch.cumprod(1 - make_beta_schedule(num_train_steps, schedule), dim=0)
        self.register_buffer("alpha_bar", alpha_bar.float(), persistent=False)  # derived from the config
        self.net = Denoiser(action_dim, cond_dim, hidden_dim, num_blocks)

    def compute_loss(self, cond, target, mask=None):
        B, target = target.shape[0], hold_last_valid(target, mask)
        t = torch.randint(0, self.num_train_steps, (B,), device=target.device)
        noise = torch.randn_like(target)
        ab = self.alpha_bar[t].view(B, 1, 1)
        noisy = ab.sqrt() * target + (1 - ab).sqrt() * noise  # forward process q(a_t | a_0)
        pred = self.net(noisy, t, cond.flatten(1))
        goal = noise if self.prediction == "epsilon" else target
        return dict(loss=masked_mean((pred - goal) ** 2, mask))

    def predict_x0_eps(self, x, t, c, clip=True):
        """Network output at step t -> (a_0_hat clipped to [-1, 1], the eps consistent with it). clip=False for
        guidance, whose gradient a clipped a_0_hat would cut."""
        ab = self.alpha_bar[t]
        out = self.net(x, torch.full((x.shape[0],), t, device=x.device), c)
        x0 = (x - (1 - ab).sqrt() * out) / ab.sqrt() if self.prediction == "epsilon" else out
        if clip:
            x0 = x0.clamp(-1, 1)  # actions live in [-1, 1]; clipping a_0_hat stabilizes early, noisy steps
        return x0, (x - ab.sqrt() * x0) / (1 - ab).sqrt()

    def forward(self, cond, noise=None, sampler=None, num_inference_steps=None, guide=None):
        """guide: real-time chunking's target for the chunk's first steps (see rtc_guided_estimate), or None."""
        sampler = sampler or self.sampler
        k = num_inference_steps or self.num_inference_steps
        c = cond.flatten(1)
        x = noise if noise is not None else torch.randn(cond.shape[0], self.chunk_size, self.action_dim,
                                                          device=cond.device, dtype=cond.dtype)
        steps = torch.linspace(self.num_train_steps - 1, 0, k).round().long().tolist()  # e.g. 99, 88, ..., 0
        for i, t in enumerate(steps):
            ab_t = self.alpha_bar[t]
            if guide is None:
                x0, eps = self.predict_x0_eps(x, t, c)
            else:  # the same guidance as the flow head's, in its coordinates: x_t / (sqrt(ab) + sqrt(1-ab)) is
                # tau a + (1 - tau) eps with tau = sqrt(ab) / (sqrt(ab) + sqrt(1-ab))
                scale = ab_t.sqrt() + (1 - ab_t).sqrt()
                x0 = rtc_guided_estimate(lambda z: self.predict_x0_eps(z * scale, t, c, clip=False)[0], x / scale,
                                         float(ab_t.sqrt() / scale), guide).clamp(-1, 1)
                eps = (x - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
            ab_s = self.alpha_bar[steps[i + 1]] if i + 1 < len(steps) else torch.ones_like(ab_t)
            if sampler == "ddim":
                x = ab_s.sqrt() * x0 + (1 - ab_s).sqrt() * eps
            else:  # DDPM posterior N(mean, var) of the step t -> s (s = t-1 without a stride)
                beta = 1 - ab_t / ab_s
                mean = ab_s.sqrt() * beta / (1 - ab_t) * x0 + (ab_t / ab_s).sqrt() * (1 - ab_s) / (1 - ab_t) * x
                var = beta * (1 - ab_s) / (1 - ab_t)  # 0 on the last step: return the mean
                x = mean + var.sqrt() * torch.randn_like(x)
        return dict(action=x.clamp(-1, 1))


class FlowMatchingActionHead(nn.Module):
    """Conditional flow matching with straight paths (rectified flow; Lipman et al. 2023, Liu et al.
    2023), the action expert of pi0 (Black et al. 2024). x_tau = tau a + (1 - tau) eps moves from
    noise (tau=0) to the action (tau=1) at constant velocity a - eps; the network regresses that
    velocity, and sampling integrates dx/dtau = v(x, tau) with a few Euler steps."""
    TIME_SCALE = 100.0  # tau in [0, 1] -> [0, 100] so the sinusoidal embedding resolves it
    PREFIX_FREE_SHARE = 0.5  # training-time RTC: the share of chunks learned with no given prefix (compute_loss)

    def __init__(self, cond_dim, action_dim, chunk_size, hidden_dim=128, num_blocks=3, num_steps=10, prefix_max_delay=0,
                 prefix_min_delay=1, prefix_noise=0.05, noise_scale=1.0):
        super().__init__()
        self.action_dim, self.chunk_size, self.num_steps = action_dim, chunk_size, num_steps
        self.prefix_max_delay, self.prefix_noise, self.noise_scale = prefix_max_delay, prefix_noise, noise_scale
        self.prefix_min_delay = prefix_min_delay
        self.net = Denoiser(action_dim, cond_dim, hidden_dim, num_blocks)

    def compute_loss(self, cond, target, mask=None):
        """prefix_max_delay > 0 is training-time real-time chunking (Black, Ren, Equi & Levine 2025): the first d
        actions of a chunk are given (flow time 1 on those steps), as the steps that execute during inference will
        be, and only the rest is learned. Half the chunks get d = 0 (every episode's first chunk has no plan to
        continue), the others d ~ U{prefix_min_delay..prefix_max_delay}, and a given prefix is the demonstration's
        plus noise of std prefix_noise: at inference it is the policy's own earlier plan, a little off, and a head
        that learned to copy exact prefixes follows that plan's errors (on PushT: 0.06 success with d ~ U{0..8} and
        clean prefixes; more noise trades the continuation for the chunk from nothing: RESULTS.md)."""
        B, T, target = target.shape[0], target.shape[1], hold_last_valid(target, mask)
        tau = torch.rand(B, device=target.device)
        noise = torch.randn_like(target)
        if self.prefix_max_delay:
            d = torch.randint(self.prefix_min_delay, self.prefix_max_delay + 1, (B, 1), device=target.device)
            d = torch.where(torch.rand(B, 1, device=target.device) < self.PREFIX_FREE_SHARE, 0, d)
            given = torch.arange(T, device=target.device)[None] < d  # (B, T)
            tau = torch.where(given, 1.0, tau[:, None])  # (B, T): a time per step
            mask = ~given if mask is None else element_mask(mask, target).bool() & ~given[..., None]
        x = tau.view(B, -1, 1) * target + (1 - tau.view(B, -1, 1)) * noise
        if self.prefix_max_delay:
            x = torch.where(given[..., None], target + self.prefix_noise * torch.randn_like(target), x)
        v = self.net(x, tau * self.TIME_SCALE, cond.flatten(1))
        return dict(loss=masked_mean((v - (target - noise)) ** 2, mask))

    def forward(self, cond, noise=None, num_steps=None, guide=None):
        """guide: real-time chunking's target for the chunk's first steps (see rtc_guided_estimate), or None. A
        head trained with prefix_max_delay takes the steps that execute during inference (weight 1) as given.
        noise_scale < 1 samples at a lower temperature (as Glow does, Kingma & Dhariwal 2018): the paths start nearer
        the noise's mode, so the chunks come from the dense middle of what the demonstrations did at this
        observation, not from its tails. The flow still picks one way to push, which a regression head averages."""
        n = num_steps or self.num_steps
        c = cond.flatten(1)
        x = noise if noise is not None else self.noise_scale * torch.randn(
            cond.shape[0], self.chunk_size, self.action_dim, device=cond.device, dtype=cond.dtype)
        if guide is not None and self.prefix_max_delay:
            return dict(action=self.sample_after_prefix(x, c, guide, n).clamp(-1, 1))
        for i in range(n):  # Euler: x <- x + dtau * v(x, tau)
            tau = i / n
            t = torch.full((x.shape[0],), tau, device=x.device) * self.TIME_SCALE
            if guide is None:
                x = x + self.net(x, t, c) / n
            else:  # the guided clean estimate a1 = x + (1 - tau) v sets the velocity: v = (a1 - x) / (1 - tau)
                a1 = rtc_guided_estimate(lambda z: z + (1 - tau) * self.net(z, t, c), x, tau, guide)
                x = x + (a1 - x) / (1 - tau) / n
        return dict(action=x.clamp(-1, 1))

    def sample_after_prefix(self, x, c, guide, n):
        """Training-time RTC's sampler: the d executing steps are the plan's, held at flow time 1; Euler integrates
        the rest. No gradient through the network, unlike the guided sampler."""
        d = int((guide['weights'][0, :, 0] >= 1).sum())
        prefix, steps = guide['target'][:, :d].to(x.dtype), torch.arange(x.shape[1], device=x.device)
        for i in range(n):
            x = torch.cat([prefix, x[:, d:]], 1)
            t = torch.where(steps < d, 1.0, i / n).expand(x.shape[0], -1) * self.TIME_SCALE
            x = x + self.net(x, t, c) / n
        return torch.cat([prefix, x[:, d:]], 1)


def rtc_guided_estimate(estimate, x, tau, guide):
    """Real-time chunking (Black et al. 2025, "Real-Time Execution of Action Chunking Flow Policies", Alg. 1):
    while the robot executes the previous chunk's next steps, the new chunk is sampled to agree with them.
    estimate(x) is the sampler's clean chunk a1 from the noisy chunk x at flow time tau (0 = noise, 1 = data).
    The error to guide['target'] on the steps that guide['weights'] (B, T, A) marks (1 on the frozen steps that
    execute during inference, decaying over the rest of the overlap, 0 after) pulls a1 through the sampler's
    Jacobian (pseudo-inverse guidance, PiGDM, Song et al. 2023): a1 + (1 - tau) w J^T e, the weight w clipped at
    guide['max_weight'] (the paper's beta = 5) where tau -> 0 would make it infinite. -> guided a1 (no grad)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        a1 = estimate(x)
        err = (guide['target'] - a1) * guide['weights']
        grad, = torch.autograd.grad(a1, x, err)
    r2 = (1 - tau) ** 2 / (tau ** 2 + (1 - tau) ** 2)  # the variance of a1 around the data, for straight paths
    w = guide['max_weight'] if tau == 0 else min(guide['max_weight'], (1 - tau) / (tau * r2))
    return (a1 + (1 - tau) * w * grad).detach()


class TransformerActionHead(nn.Module):
    """ACT's decoder (Zhao et al. 2023): one learned query per chunk step; the queries attend to each
    other and cross-attend to the backbone tokens, then a linear layer reads out each step's action.
    (ACT's CVAE style variable is left out: it is dropped at inference anyway.)"""

    def __init__(self, cond_dim, action_dim, chunk_size, hidden_dim=128, num_layers=2, num_heads=4, loss="l1"):
        super().__init__()
        self.loss = loss
        self.memory_proj = nn.Linear(cond_dim, hidden_dim)
        self.queries = nn.Parameter(0.02 * torch.randn(chunk_size, hidden_dim))  # (T, H)
        layer = nn.TransformerDecoderLayer(hidden_dim, num_heads, 4 * hidden_dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(hidden_dim))
        self.out = nn.Linear(hidden_dim, action_dim)

    def forward(self, cond):  # cond (B, N, D)
        memory = self.memory_proj(cond)  # (B, N, H)
        queries = self.queries.unsqueeze(0).expand(cond.shape[0], -1, -1)  # (B, T, H)
        return dict(action=self.out(self.decoder(queries, memory)))  # (B, T, A)

    def compute_loss(self, cond, target, mask=None):
        return dict(loss=masked_mean(regression_loss(self(cond)["action"], target, self.loss), mask))
