"""
GAIL: Generative Adversarial Imitation Learning (Ho & Ermon 2016), with PPO (Schulman et al. 2017).

    python train_gail.py --task=pusht                      # state features (fast on a CPU)
    python train_gail.py --task=pusht --obs_mode=pixels --init_from=out/pusht_gauss   # images, a VLA Gaussian policy
    python train_gail.py --task=pusht --action_steps=8     # the policy acts in chunks of 8 targets, as BC's do
    python train_gail.py --task=lift --out_dir=out/lift_gail   # any task: its module's gail_features

A discriminator D(s, a) learns to tell expert pairs (label 1) from the policy's (label 0); the
policy is trained by reinforcement learning to make D believe it, with reward
r(s, a) = -log(1 - D(s, a)). At the optimum the policy's state-action distribution matches the
expert's (GAIL minimizes their Jensen-Shannon divergence), so, unlike BC, it learns what to do in
the states its own mistakes lead to, from rollouts alone, without querying the expert (DAgger).

The policy gradient is PPO's clipped surrogate with a learned value baseline and generalized
advantage estimation (GAE, Schulman et al. 2016), plus optional BC regularization to the
demonstrations, which keeps the policy from forgetting while D is still weak.

obs_mode='state' (default) uses the task module's state features (PushT: agent and block pose) and small MLPs:
this is the configuration whose success we report. obs_mode='pixels' trains a ManipulationVLA with
a Gaussian head from images + agent position (much slower on a CPU).
"""
import json
import math
import os
import shutil
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

# -----------------------------------------------------------------------------
# default config values
task = 'pusht'
obs_mode = 'state'  # 'state' (the task module's gail_features) | 'pixels' (images + robot state, VLA policy)
init_from = ''  # pixels mode: a train_bc.py checkpoint with action_head_type='gaussian' ('' = BC-pretrain here)
out_dir = 'out/pusht_gail'
expert_episodes = 20  # expert demonstrations recorded with simulator state (seeds [0, expert_episodes))
bc_iters = 3000  # behavior-cloning pretraining of the policy on the demonstrations (0 = start random)
ppo_iters = 30  # rounds of: collect rollouts -> update discriminator -> PPO update
steps_per_iter = 2048  # environment steps collected per round
action_steps = 1  # target positions per decision: the policy emits a chunk of this many and executes all of it, as
# BC policies do (issue 15: re-planning every step drops them 0.28 -> 0.06); PPO sees the chunk as one action
ppo_epochs = 4
minibatch_size = 256
clip_eps = 0.2  # PPO ratio clip
gamma = 0.99
gae_lambda = 0.95
entropy_coef = 0.0
value_coef = 0.5
max_std = 0.0  # cap on the policy's std, in action units (px on PushT); 0 = none. BC fits the std to the spread of the
#               expert's actions (~10 px per target over a chunk of 8), and rollouts that noisy rarely succeed
bc_coef = 0.1  # weight of the BC (expert log-likelihood) regularizer in the policy loss
disc_steps = 5  # discriminator updates per round
grad_penalty = 10.0  # R1 penalty on expert inputs keeps D smooth (Mescheder et al. 2018)
learning_rate = 3e-4
disc_learning_rate = 3e-4
hidden_dim = 256
max_grad_norm = 0.5
eval_episodes = 50  # held-out test seeds before and after
eval_interval = 10  # rounds between evaluations on validation seeds
seed = 1337
resume = False
_task_presets = False  # --task names the simulator; config/<task>.py holds BC presets
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
import train_common  # noqa: E402
import data  # noqa: E402
import envs  # noqa: E402
from heads import GaussianActionHead  # noqa: E402

if obs_mode not in ('state', 'pixels'):
    raise SystemExit(f"obs_mode must be 'state' or 'pixels', got {obs_mode!r}")
if not (isinstance(action_steps, int) and action_steps >= 1):
    raise SystemExit(f"action_steps must be an int >= 1, got {action_steps!r}")
if not (isinstance(max_std, (int, float)) and max_std >= 0):
    raise SystemExit(f"max_std must be a number >= 0 (action units; 0 = no cap), got {max_std!r}")
if task not in envs.TASKS:
    raise SystemExit(f"unknown task {task!r}; known tasks: {', '.join(envs.TASKS)}")
spec = envs.TASKS[task]
if obs_mode == 'pixels' and (spec.get('action_mode', 'absolute') != 'absolute'
                              or spec['state_dim'] != spec['action_dim']):
    raise SystemExit(f"obs_mode='pixels' reads the robot's state in action units (PushT's pusher, ALOHA's joints); "
                     f"{task}'s state is not its action space: use --obs_mode=state")
torch.manual_seed(seed)
rng = np.random.default_rng(seed)
os.makedirs(out_dir, exist_ok=True)
LOW, HIGH = (np.asarray(spec[k], np.float32) for k in ('action_low', 'action_high'))  # scalars (PushT) or per dim
HALF_RANGE = np.broadcast_to((HIGH - LOW) / 2, (spec['action_dim'],))  # action units per unit of [-1, 1], per dim
camera_size = None  # the simulator's camera side: the task's, or in pixels mode the one the BC policy's data had
if obs_mode == 'pixels':  # check the checkpoint before spending minutes on demonstrations
    from model import ManipulationVLA, ManipulationVLAConfig, policy_task, read_json
    if not init_from:
        raise SystemExit("obs_mode='pixels' needs --init_from=<train_bc.py checkpoint with --action_head_type=gaussian>")
    bc_json = read_json(os.path.join(init_from, 'config.json'))  # no weights loaded yet
    bc_config = ManipulationVLAConfig(**bc_json['config'])
    try:  # the checkpoint's entry for this task (as DAgger reads it): its data's camera, at which GAIL renders
        camera_size = policy_task(bc_json['policy'], task, init_from)[1].get('camera_size')
    except ValueError as e:
        raise SystemExit(str(e)) from e
    if bc_config.action_head_type != 'gaussian':
        raise SystemExit(f"{init_from} has a {bc_config.action_head_type!r} head; GAIL needs log-probs: train with "
                         f"--action_head_type=gaussian")


def observe(env, obs):
    """What the policy and the discriminator see. state: the task module's gail_features (PushT: agent and block
    pose, (10,)); pixels: the env frame."""
    if obs_mode == 'state':
        return envs.task_module(task).gail_features(task, env)
    return envs.obs_to_frame(task, obs)


def to_env_actions(a):
    """A normalized chunk, flat (action_steps * A,) in [-1, 1] -> (action_steps, A) env actions (PushT: target
    positions in pixels)."""
    return (np.clip(np.asarray(a).reshape(-1, spec['action_dim']), -1, 1) + 1) / 2 * (HIGH - LOW) + LOW


def from_env_action(a):
    return 2 * (np.asarray(a, np.float32) - LOW) / (HIGH - LOW) - 1


def to_unit(x):
    """A tensor in action units (PushT: px) -> this script's [-1, 1], as from_env_action does for arrays."""
    low, high = torch.as_tensor(LOW), torch.as_tensor(HIGH)
    return 2 * (x - low) / (high - low) - 1


# -----------------------------------------------------------------------------
# networks: policy pi(a|s) (a Gaussian), value V(s), discriminator D(s, a)
def mlp(n_in, n_out):
    return nn.Sequential(nn.Linear(n_in, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, hidden_dim), nn.Tanh(),
                         nn.Linear(hidden_dim, n_out))


class ObsEncoder(nn.Module):
    """state: the features as they are; pixels: a small CNN of the image (its spatial-softmax
    keypoint token) concatenated with the agent position in [-1, 1]."""

    def __init__(self, obs_dim):
        super().__init__()
        self.out_dim = obs_dim
        if obs_mode == 'pixels':
            from model import ConvEncoder
            self.conv = ConvEncoder(3, 16, grid=1)
            self.out_dim = self.conv.out_dim + spec['state_dim']

    def forward(self, obs):
        if obs_mode == 'state':
            return obs
        img = obs['images'][:, 0].float() / 255  # (B, 3, H, W), camera 0
        return torch.cat([self.conv(img)[:, -1], to_unit(obs['proprio'])], -1)


def cap_std(log_std):
    """Clamp the policy's log-std at log(max_std) in this script's [-1, 1] action units. Sampling and PPO's
    log-probabilities both read the capped value, so the ratio stays that of the distribution that acted."""
    if not max_std:
        return log_std
    cap = torch.log(torch.as_tensor(2 * max_std / (HIGH - LOW), dtype=log_std.dtype)).reshape(-1)  # per action dim
    return torch.minimum(log_std, cap.repeat(log_std.shape[-1] // cap.numel()))


class StatePolicy(nn.Module):
    """State features -> a Gaussian over the next action_steps target positions (heads.GaussianActionHead)."""

    def __init__(self, obs_dim, action_dim):
        super().__init__()
        self.body = mlp(obs_dim, hidden_dim)
        self.head = GaussianActionHead(hidden_dim, action_dim, chunk_size=action_steps, hidden_dim=hidden_dim)

    def distribution(self, obs):  # -> mean, log_std (B, action_steps * A): the chunk is one action to PPO
        mean, log_std = self.head.distribution(self.body(obs))
        return mean.flatten(1), cap_std(log_std.flatten(1))


class PixelPolicy(nn.Module):
    """A ManipulationVLA with a Gaussian head; obs is a batch in the model convention. The chunk's
    first action_steps actions are the ones executed, so their probability is the one PPO needs."""

    def __init__(self, vla, instruction):
        super().__init__()
        self.vla, self.instruction = vla, instruction

    def distribution(self, obs):
        cache = self.vla.encode_instruction([self.instruction])
        cond = self.vla.features(obs['images'], obs['proprio'], cache['text_embeds'], cache['text_mask'])
        mean, log_std = self.vla.head.distribution(cond)  # normalized by the dataset's action min/max
        # re-express in this script's [-1, 1] of the whole arena: an affine map, so log_std shifts by log(scale)
        scale = (self.vla.action_max - self.vla.action_min) / torch.as_tensor(HIGH - LOW)
        raw = self.vla.unnormalize_action((mean + self.vla.action_origin(obs['proprio']))[:, :action_steps])
        log_std = (log_std[:, :action_steps] + torch.log(scale)).flatten(1)
        return to_unit(raw).flatten(1), cap_std(log_std)


class Discriminator(nn.Module):
    """D(s, a) -> logit of 'this pair is the expert's'."""

    def __init__(self, obs_dim, action_dim):
        super().__init__()
        self.encoder = ObsEncoder(obs_dim)
        self.net = mlp(self.encoder.out_dim + action_dim, 1)

    def forward(self, obs, a):
        return self.net(torch.cat([self.encoder(obs), a], -1)).squeeze(-1)


def log_prob(mean, log_std, a):
    """log N(a; mean, diag(std^2)) summed over action dims -> (B,)."""
    return (-0.5 * ((a - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def batch_obs(obs_list):
    """A list of observations -> the networks' input batch."""
    if obs_mode == 'state':
        return torch.from_numpy(np.stack(obs_list))
    samples = [data.frame_to_model_input(o, spec['image_keys'], spec['state_key'], bc_config.image_hw,
                                         bc_config.image_crop) for o in obs_list]  # as the BC policy saw frames
    return {'images': torch.stack([s['images'] for s in samples]), 'proprio': torch.stack([s['proprio'] for s in samples])}


def index_obs(obs, idx):
    return obs[idx] if torch.is_tensor(obs) else {k: v[idx] for k, v in obs.items()}


# -----------------------------------------------------------------------------
# expert demonstrations, recorded with the simulator state (the LeRobot dataset holds only pixels)
def record_expert(n):
    """-> (observations, actions in [-1, 1], episode index of each pair) from the successful ones of n expert
    episodes on training seeds."""
    env, expert = envs.make_env(task, image_size=camera_size), envs.make_expert(task)
    obs_list, act_list, episode, ok = [], [], [], 0
    for s in tqdm(range(n), desc='expert demos'):
        obs, info = env.reset(seed=s)
        expert.reset()
        ep_obs, ep_act = [], []
        for t in range(spec['max_steps']):
            a = expert.get_action(env)
            ep_obs.append(observe(env, obs))
            ep_act.append(from_env_action(a))
            obs, r, term, trunc, info = env.step(a)
            if envs.is_success(info) or term or trunc:
                break
        if envs.is_success(info):
            obs_list += ep_obs
            act_list += ep_act
            episode += [ok] * len(ep_act)
            ok += 1
    env.close()
    print(f"expert: {ok}/{n} episodes succeeded, {len(act_list)} state-action pairs")
    return batch_obs(obs_list), torch.from_numpy(np.stack(act_list)), torch.tensor(episode)


def expert_chunks(actions, episode, k):
    """Per-step expert actions (N, A) -> the chunk each state's policy should emit: the next k actions of the same
    episode, flat (N, k * A). Past the episode's end the last action repeats: the pusher holds where it finished
    (LeRobot pads chunks the same way)."""
    idx = torch.arange(len(actions))[:, None] + torch.arange(k)[None]  # (N, k)
    last = torch.searchsorted(episode, episode, right=True) - 1  # each pair's episode's last step (episodes in order)
    return actions[torch.minimum(idx, last[:, None])].flatten(1)


def disc_reward(obs, a):
    """r = -log(1 - D(s, a)) = softplus(logit): high where the pair looks like the expert's."""
    return F.softplus(discriminator(obs, a))


def step_chunk(env, chunk, t):
    """Execute a normalized chunk's targets (the whole chunk, as the BC policies run) until the episode ends:
    success, termination, or the task's step limit at step t. -> (obs, best env reward, info, t, success, term, ended)."""
    best = 0.0
    for target in to_env_actions(chunk):
        obs, r, term, trunc, info = env.step(target)
        t, best = t + 1, max(best, float(r))
        success = envs.is_success(info)
        ended = success or term or trunc or t >= spec['max_steps']
        if ended:
            break
    return obs, best, info, t, success, term, ended


@torch.no_grad()
def evaluate(n_episodes, start_seed):
    """Success rate, mean discriminator reward and mean over episodes of the best env reward (PushT: goal
    coverage, a graded measure where success is rare) of the deterministic (mean) policy."""
    env = envs.make_env(task, image_size=camera_size)
    successes, rewards, best = [], [], []
    for s in range(start_seed, start_seed + n_episodes):
        obs, info = env.reset(seed=s)
        best.append(0.0)
        t, ended = 0, False
        while not ended:  # step_chunk ends it at the task's step limit too
            o = batch_obs([observe(env, obs)])
            mean, _ = policy.distribution(o)
            rewards.append(disc_reward(o, mean).item())
            obs, r, info, t, _, _, ended = step_chunk(env, mean[0].numpy(), t)
            best[-1] = max(best[-1], r)
        successes.append(envs.is_success(info))
    env.close()
    return float(np.mean(successes)), float(np.mean(rewards)), float(np.mean(best))


@torch.no_grad()
def collect(env, n_steps, carry):
    """Roll out the stochastic policy for n_steps environment steps (across episode ends). carry = (obs, t, seed)
    continues the episode in progress. One transition per decision: a chunk of action_steps targets is one
    action of a semi-MDP, and its discriminator reward is the reward of that step (Sutton et al. 1999's options,
    discounted per decision). -> dict of tensors, the new carry, the successes of the episodes that ended."""
    obs_l, act_l, logp_l, std_l, done_l, trunc_l, next_obs_l, successes = [], [], [], [], [], [], [], []
    raw_obs, t, ep_seed = carry
    steps = 0
    while steps < n_steps:
        o = observe(env, raw_obs)
        mean, log_std = policy.distribution(batch_obs([o]))
        a = mean + log_std.exp() * torch.randn_like(mean)  # (1, action_steps * A) a sample of pi(.|s)
        t0 = t
        raw_obs, _, info, t, success, term, ended = step_chunk(env, a[0].numpy(), t)
        steps += t - t0
        trunc = ended and not (success or term)
        obs_l.append(o)
        act_l.append(a[0])
        logp_l.append(log_prob(mean, log_std, a)[0])
        std_l.append(log_std[0].exp())
        next_obs_l.append(observe(env, raw_obs))
        done_l.append(float(success or term))  # terminal: no bootstrap after success
        trunc_l.append(float(trunc))  # time limit: bootstrap from V(next state) (Pardo et al. 2018)
        if ended:
            successes.append(success)
            ep_seed += 1
            raw_obs, _ = env.reset(seed=ep_seed)
            t = 0
    batch = dict(obs=batch_obs(obs_l), action=torch.stack(act_l), logp=torch.stack(logp_l), std=torch.stack(std_l),
                 next_obs=batch_obs(next_obs_l), done=torch.tensor(done_l), trunc=torch.tensor(trunc_l))
    return batch, (raw_obs, t, ep_seed), successes


def gae(rewards, values, next_values, done, trunc, gamma, lam):
    """Generalized advantage estimation: A_t = sum_k (gamma lam)^k delta_{t+k} with
    delta_t = r_t + gamma V(s_{t+1}) (1 - done_t) - V(s_t); the sum restarts at every episode end
    (done: terminal, no bootstrap; trunc: time limit, bootstrap from V(s_{t+1})). -> advantages, returns."""
    adv = torch.zeros_like(rewards)
    running = 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_values[t] * (1 - done[t]) - values[t]
        running = delta + gamma * lam * (1 - torch.maximum(done[t], trunc[t])) * running
        adv[t] = running
    return adv, adv + values


def discriminator_loss(disc, e_obs, e_act, p_obs, p_act, grad_penalty):
    """BCE with expert pairs -> 1 and policy pairs -> 0, plus an R1 penalty |grad_a D(expert)|^2 that
    keeps D smooth where the expert is. -> (loss, accuracy)."""
    e_act = e_act.clone().requires_grad_(True)
    e_logit, p_logit = disc(e_obs, e_act), disc(p_obs, p_act)
    loss = F.binary_cross_entropy_with_logits(e_logit, torch.ones_like(e_logit)) + \
        F.binary_cross_entropy_with_logits(p_logit, torch.zeros_like(p_logit))
    if grad_penalty > 0:
        g, = torch.autograd.grad(e_logit.sum(), e_act, create_graph=True)
        loss = loss + grad_penalty * g.pow(2).sum(-1).mean()
    acc = ((e_logit > 0).float().mean() + (p_logit < 0).float().mean()) / 2
    return loss, acc.item()


def ppo_policy_loss(new_logp, old_logp, adv, clip_eps):
    """PPO's clipped surrogate -E[min(rho A, clip(rho, 1-eps, 1+eps) A)], rho = pi(a|s) / pi_old(a|s):
    a policy-gradient step that cannot move the probability ratio far from 1 (Schulman et al. 2017)."""
    ratio = (new_logp - old_logp).exp()
    return -torch.min(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv).mean()


def update_discriminator(batch):
    """disc_steps minibatch updates of D on expert vs. the latest rollouts."""
    accs, losses = [], []
    for _ in range(disc_steps):
        ei = torch.randint(len(expert_act), (minibatch_size,))
        pi = torch.randint(len(batch['action']), (minibatch_size,))
        loss, acc = discriminator_loss(discriminator, index_obs(expert_obs, ei), expert_act[ei],
                                       index_obs(batch['obs'], pi), batch['action'][pi], grad_penalty)
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
        losses.append(loss.item())
        accs.append(acc)
    return float(np.mean(losses)), float(np.mean(accs))


def ppo_update(batch, adv, returns):
    """ppo_epochs passes over the rollouts: clipped surrogate + value regression + BC regularizer."""
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    for _ in range(ppo_epochs):
        for idx in torch.randperm(len(adv)).split(minibatch_size):
            mean, log_std = policy.distribution(index_obs(batch['obs'], idx))
            pg_loss = ppo_policy_loss(log_prob(mean, log_std, batch['action'][idx]), batch['logp'][idx], adv[idx], clip_eps)
            v_loss = F.mse_loss(value_fn(index_obs(batch['obs'], idx)).squeeze(-1), returns[idx])
            entropy = log_std.sum(-1).mean()  # Gaussian entropy up to a constant
            loss = pg_loss + value_coef * v_loss - entropy_coef * entropy
            if bc_coef > 0:
                ei = torch.randint(len(expert_act), (len(idx),))
                m, ls = policy.distribution(index_obs(expert_obs, ei))
                loss = loss - bc_coef * log_prob(m, ls, expert_act[ei]).mean()
            opt_pi.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(list(policy.parameters()) + list(value_fn.parameters()), max_grad_norm)
            opt_pi.step()


def bc_pretrain(n_iters):
    """Maximum likelihood on the demonstrations: the GAIL policy starts from BC (as in Ho & Ermon)."""
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    for it in tqdm(range(n_iters), desc='BC pretrain'):
        idx = torch.randint(len(expert_act), (minibatch_size,))
        mean, log_std = policy.distribution(index_obs(expert_obs, idx))
        loss = -log_prob(mean, log_std, expert_act[idx]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


# -----------------------------------------------------------------------------
# checkpoints: networks + optimizers + RNG as gail_state-<round>-<id>.safetensors, the round and history in
# gail_state.json,
# committed crash-consistently by train_common.py
def save_checkpoint(it, history, carry_seed):
    tensors = {f'{name}.{k}': v for name, m in (('policy', policy), ('value', value_fn), ('disc', discriminator))
               for k, v in m.state_dict().items()}
    groups = {}
    for name, opt in (('opt_pi', opt_pi), ('opt_d', opt_d)):
        optim, groups[name] = train_common.optimizer_tensors(opt, name)
        tensors.update(optim)
    tensors['rng.torch'] = torch.get_rng_state()
    train_common.save_state(out_dir, 'gail_state', it, tensors,
                          dict(iter=it, history=history, param_groups=groups, next_seed=carry_seed, config=config))


def load_checkpoint():
    meta, tensors = train_common.load_state(out_dir, 'gail_state')
    for name, m in (('policy', policy), ('value', value_fn), ('disc', discriminator)):
        m.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + '.')})
    for name, opt in (('opt_pi', opt_pi), ('opt_d', opt_d)):
        train_common.load_optimizer(opt, tensors, name, meta['param_groups'][name])
    torch.set_rng_state(tensors['rng.torch'])
    return meta


# -----------------------------------------------------------------------------
# build: demonstrations, policy, value, discriminator
expert_path = os.path.join(out_dir, f'expert_steps_{expert_episodes}ep.safetensors')  # per step, any action_steps
if obs_mode == 'state' and os.path.exists(expert_path):
    saved = load_file(expert_path)
    expert_obs, expert_step_act, expert_episode = saved['obs'], saved['action'], saved['episode']
else:
    expert_obs, expert_step_act, expert_episode = record_expert(expert_episodes)
    if obs_mode == 'state':
        save_file({'obs': expert_obs, 'action': expert_step_act, 'episode': expert_episode}, expert_path + '.tmp')
        os.replace(expert_path + '.tmp', expert_path)
expert_act = expert_chunks(expert_step_act, expert_episode, action_steps)  # (N, action_steps * A)
obs_dim = expert_obs.shape[1] if obs_mode == 'state' else 0
if obs_mode == 'state':
    policy = StatePolicy(obs_dim, spec['action_dim'])
else:
    policy = PixelPolicy(ManipulationVLA.from_pretrained(init_from), spec['instruction'])
    if action_steps > policy.vla.config.action_chunk_size:
        raise SystemExit(f"action_steps={action_steps} exceeds {init_from}'s action_chunk_size "
                         f"({policy.vla.config.action_chunk_size}): pass --action_steps=<at most that>")
value_encoder = ObsEncoder(obs_dim)
value_fn = nn.Sequential(value_encoder, mlp(value_encoder.out_dim, 1))
discriminator = Discriminator(obs_dim, spec['action_dim'] * action_steps)
opt_pi = torch.optim.Adam(list(policy.parameters()) + list(value_fn.parameters()), lr=learning_rate)
opt_d = torch.optim.Adam(discriminator.parameters(), lr=disc_learning_rate)

history, start_it, next_seed = [], 0, 10_000  # rollouts use training seeds from 10000 (demos: [0, expert_episodes))
state_path = os.path.join(out_dir, 'gail_state.json')
if resume:
    if not os.path.exists(state_path):
        raise SystemExit(f"--resume=True but {state_path} does not exist")
    meta = load_checkpoint()
    history, start_it, next_seed = meta['history'], meta['iter'], meta['next_seed']
    print(f"resumed from {out_dir} at round {start_it}")
else:
    if obs_mode == 'state' and bc_iters > 0:
        print(f"BC pretraining: final NLL {bc_pretrain(bc_iters):.3f}")
    if eval_episodes > 0:
        s, r, c = evaluate(eval_episodes, envs.TEST_SEED)
        history.append(dict(iter=0, test_success=s, mean_reward=r, test_max_reward=c))
        print(f"before GAIL: test success {s:.2f} over {eval_episodes} episodes, avg max reward {c:.3f}, "
              f"mean D reward {r:.3f}")

# -----------------------------------------------------------------------------
# GAIL: rollouts -> discriminator -> PPO on the discriminator's reward
env = envs.make_env(task, image_size=camera_size)
raw_obs, _ = env.reset(seed=next_seed)
carry = (raw_obs, 0, next_seed)
t0 = time.time()
for it in range(start_it, ppo_iters):
    batch, carry, ep_success = collect(env, steps_per_iter, carry)
    d_loss, d_acc = update_discriminator(batch)
    with torch.no_grad():
        rewards = disc_reward(batch['obs'], batch['action'])
        values = value_fn(batch['obs']).squeeze(-1)
        next_values = value_fn(batch['next_obs']).squeeze(-1)
    adv, returns = gae(rewards, values, next_values, batch['done'], batch['trunc'], gamma, gae_lambda)
    ppo_update(batch, adv, returns)
    rec = dict(iter=it + 1, disc_loss=d_loss, disc_acc=d_acc, mean_reward=rewards.mean().item(),
               rollout_success=float(np.mean(ep_success)) if ep_success else None,
               policy_std=float((batch['std'] * torch.as_tensor(np.tile(HALF_RANGE, action_steps))).mean()),
               minutes=(time.time() - t0) / 60)
    if eval_interval > 0 and (it + 1) % eval_interval == 0 and it + 1 < ppo_iters:
        rec['val_success'], _, rec['val_max_reward'] = evaluate(min(eval_episodes, 20), envs.VAL_SEED)
    history.append(rec)
    print(json.dumps(rec), flush=True)
    save_checkpoint(it + 1, history, carry[2] + 1)
env.close()
if eval_episodes > 0:
    s, r, c = evaluate(eval_episodes, envs.TEST_SEED)
    history.append(dict(iter=ppo_iters, test_success=s, mean_reward=r, test_max_reward=c))
    save_checkpoint(ppo_iters, history, carry[2] + 1)
    print(f"after GAIL: test success {s:.2f} over {eval_episodes} episodes, avg max reward {c:.3f}, "
          f"mean D reward {r:.3f}")
if obs_mode == 'pixels':  # the improved VLA in the one checkpoint format: eval.py, deploy.py and DAgger read it
    policy.vla.save_pretrained(out_dir)  # keeps the BC checkpoint's tasks / instruction / execution settings
    if os.path.exists(os.path.join(init_from, 'train_config.json')):  # the BC recipe, for DAgger's retraining
        shutil.copyfile(os.path.join(init_from, 'train_config.json'), os.path.join(out_dir, 'train_config.json'))
    print(f"wrote the GAIL policy to {out_dir} (python eval.py --ckpt={out_dir})")
