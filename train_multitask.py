"""
Multi-task behavioral cloning: ONE language-conditioned VLA policy for several tasks, told by its
instruction which task to do (the recipe of RT-1, Brohan et al. 2022, and Octo, Ghosh et al. 2024).

    python train_multitask.py                                  # lift + pusht + aloha_transfer_cube on one CPU
    python train_multitask.py --task_weights="[0.2, 0.4, 0.4]" --curriculum=True
    python train_multitask.py --multi_head=True                # a separate action head per task

Different robots disagree on everything but the camera: PushT's action is a 2-D target (pixels),
Lift's a 3-D Cartesian step + gripper command, ALOHA's 14 joint targets (radians). So each task's actions and states are normalized with ITS OWN
statistics (actions to [-1, 1], states to zero mean / unit std), then zero-padded to the largest
action_dim / state_dim; a per-task mask keeps the padded action dims out of the loss, and at
inference the policy returns only the task's own dims, un-normalized with the task's statistics.
Cameras are resized to one image_size. Each batch holds a number of samples per task drawn from
task_weights; a task's sub-batch shares its instruction, so the LM encodes it once (model.py).

curriculum=True adds tasks in the order listed (easiest first): task k joins at iteration
k * curriculum_interval, after which sampling follows task_weights over the tasks admitted so far.
"""
import copy
import json
import math
import os
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

# -----------------------------------------------------------------------------
# default config values
tasks = ['lift', 'pusht', 'aloha_transfer_cube']  # keys of envs.TASKS, in curriculum order (easiest first)
datasets = []  # per task: a LeRobot dataset folder or hub id; [] or '' = data/<task>_<N>ep, recorded if missing
dataset_episodes = {'lift': 50, 'pusht': 200, 'aloha_transfer_cube': 50}  # to record when a dataset is missing (else 50)
task_weights = []  # per task sampling weight ([] = equal); renormalized over the tasks in the curriculum
instructions = []  # per task; [] or '' = the dataset's own task string, else envs.TASKS' template
curriculum = False
curriculum_interval = 2000  # iterations between admitting the next task (curriculum=True)
multi_head = False  # one action head per task on the shared backbone (True) or one shared head (False)
out_dir = 'out/multitask'
image_size = 96  # every camera is resized to this
log_interval = 25
eval_episodes = 20  # final per-task evaluation on held-out test seeds (0 = none)
ckpt_interval = 500
resume = False
augment = True
# model (fields of model.ManipulationVLAConfig)
vision_encoder = 'cnn'
vlm_backbone = 'tiny-qwen2'
action_head_type = 'mlp'
action_chunk_size = 16
n_action_steps = 8
# training
max_iters = 6000
batch_size = 64
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 200
weight_decay = 1e-4
betas = (0.9, 0.95)
max_grad_norm = 1.0
ema_decay = 0.995
device = 'auto'
seed = 1337
_task_presets = False  # config/<task>.py presets are single-task: --tasks names several
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
import checkpoint  # noqa: E402
import data  # noqa: E402
import envs  # noqa: E402
from eval import ManipulationEvaluator, VLAPolicy  # noqa: E402
from model import ManipulationVLA, ManipulationVLAConfig  # noqa: E402

unknown = [t for t in tasks if t not in envs.TASKS]
if unknown or not tasks:
    raise SystemExit(f"tasks {unknown or tasks} unknown or empty; known tasks: {', '.join(envs.TASKS)}")
for name, value in (('datasets', datasets), ('task_weights', task_weights), ('instructions', instructions)):
    if value and len(value) != len(tasks):
        raise SystemExit(f"{name} has {len(value)} entries but there are {len(tasks)} tasks ({tasks}): give one per task")
if task_weights and (min(task_weights) < 0 or sum(task_weights) <= 0):
    raise SystemExit(f"task_weights must be >= 0 with a positive sum, got {task_weights}")
device = ('cuda' if torch.cuda.is_available() else 'cpu') if device == 'auto' else device
torch.manual_seed(seed)
rng = np.random.default_rng(seed)
os.makedirs(out_dir, exist_ok=True)
weights = np.asarray(task_weights or [1.0] * len(tasks), dtype=np.float64)
labels = [t if tasks.count(t) == 1 else f'{t}#{i}' for i, t in enumerate(tasks)]  # names in logs and eval.json

# -----------------------------------------------------------------------------
# data: one LeRobot dataset per task, each normalized with its own statistics
task_data = []
for i, task in enumerate(tasks):
    spec = envs.TASKS[task]
    n_eps = dataset_episodes.get(task, 50)
    given = datasets[i] if datasets else ''
    path = given or os.path.join('data', f'{task}_{n_eps}ep')
    if not given and not os.path.exists(os.path.join(path, 'meta', 'info.json')):
        print(f"no dataset at {path}: recording {n_eps} {task} expert episodes (done once)")
        shutil.rmtree(path + '.tmp', ignore_errors=True)
        envs.record_demonstrations(task, n_eps, path + '.tmp', seed=0, num_workers=os.cpu_count())
        os.replace(path + '.tmp', path)
    ds = data.ManipulationDataset(path, image_keys=spec['image_keys'][:1], state_key=spec['state_key'],
                                  chunk_size=action_chunk_size, augment=augment)
    stats = ds.ds.meta.stats
    text = (instructions[i] if instructions else '') or ds.ds.meta.tasks.get(0) or spec['instruction']
    task_data.append(dict(
        task=task, path=path, ds=ds, instruction=text, action_dim=len(stats['action']['min']),
        state_dim=len(stats[spec['state_key']]['mean']), image_key=spec['image_keys'][0],
        action_min=np.asarray(stats['action']['min'], np.float32), action_max=np.asarray(stats['action']['max'], np.float32),
        state_mean=np.asarray(stats[spec['state_key']]['mean'], np.float32),
        state_std=np.asarray(stats[spec['state_key']]['std'], np.float32)))
    print(f"task {i} {task}: {len(ds)} frames from {path}, instruction {text!r}")
if len({d['instruction'] for d in task_data}) < len(tasks):
    raise SystemExit("two tasks share an instruction, so the policy could not tell them apart: set --instructions")
A = max(d['action_dim'] for d in task_data)
S = max(d['state_dim'] for d in task_data)
STATS_KEYS = ('action_min', 'action_max', 'state_mean', 'state_std')
norm = [{k: torch.from_numpy(d[k]).to(device) for k in STATS_KEYS} for d in task_data]


def to_common(i, images, proprio, action=None):
    """Task i's raw batch -> the shared model's space: images resized to image_size, state standardized
    and zero-padded to S dims, actions scaled to [-1, 1] and zero-padded to A dims."""
    n = norm[i]
    if images.shape[-1] != image_size or images.shape[-2] != image_size:
        B, cams = images.shape[:2]
        images = F.interpolate(images.flatten(0, 1).float(), size=(image_size, image_size), mode='bilinear',
                               antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
        images = images.view(B, cams, 3, image_size, image_size)
    proprio = F.pad((proprio - n['state_mean']) / n['state_std'].clamp(min=1e-6), (0, S - proprio.shape[-1]))
    if action is not None:
        action = 2 * (action - n['action_min']) / (n['action_max'] - n['action_min']).clamp(min=1e-6) - 1
        action = F.pad(action, (0, A - action.shape[-1]))
    return images, proprio, action


samples_seen = np.zeros(len(tasks), dtype=np.int64)  # per task, logged: the weights and curriculum at work


def active_tasks(it):
    """Tasks admitted by the curriculum at iteration it (all of them without a curriculum)."""
    return len(tasks) if not curriculum else min(len(tasks), 1 + it // curriculum_interval)


def sample_batch(it):
    """A batch as per-task sub-batches: counts ~ Multinomial(batch_size, weights over admitted tasks)."""
    k = active_tasks(it)
    p = weights[:k] / weights[:k].sum()
    counts = rng.multinomial(batch_size, p)
    samples_seen[:k] += counts
    subs = []
    for i in np.flatnonzero(counts):
        b = task_data[i]['ds'].get_batch(rng.integers(0, len(task_data[i]['ds']), counts[i]))
        b = {key: v.to(device) if torch.is_tensor(v) else v for key, v in b.items()}
        images, proprio, action = to_common(i, b['images'], b['proprio'], b['action'])
        dims = torch.arange(A, device=device) < task_data[i]['action_dim']  # (A,) real action dims of task i
        mask = (~b['action_is_pad'].bool())[:, :, None] & dims  # (n, T, A): valid steps x real dims
        subs.append((int(i), dict(images=images, proprio=proprio, action=action, mask=mask)))
    return subs


# -----------------------------------------------------------------------------
# model: the shared backbone + one head, or one head per task (multi_head)
model_config = ManipulationVLAConfig(**{k: v for k, v in config.items() if k in ManipulationVLAConfig.__dataclass_fields__
                                        and k != 'image_size'}, image_size=image_size, num_cameras=1,
                                     proprioception_dim=S, action_dim=A)
model = ManipulationVLA(model_config)  # normalization buffers stay identity: to_common normalizes per task
heads = None
if multi_head:
    heads = torch.nn.ModuleList([model._build_head(model.readout.shape[-1]) for _ in tasks])
    model.head = None  # the per-task heads replace the shared one
policy = torch.nn.ModuleDict(dict(vla=model, **({'heads': heads} if multi_head else {}))).to(device)
ema = copy.deepcopy(policy).requires_grad_(False) if ema_decay > 0 else policy
params = [p for p in policy.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
                               {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}],
                              lr=learning_rate, betas=betas)
print(f"model: {sum(p.numel() for p in policy.parameters()) / 1e6:.2f}M parameters, action_dim {A}, state_dim {S}, "
      f"{'one head per task' if multi_head else 'one shared head'} ({action_head_type})")


def head_of(pol, i):
    return pol['heads'][i] if multi_head else pol['vla'].head


def task_loss(i, b):
    """Loss of task i's sub-batch: its instruction is encoded once and shared by the sub-batch."""
    vla = policy['vla']
    text = vla.encode_instruction([task_data[i]['instruction']])
    cond = vla.features(b['images'], b['proprio'], text['text_embeds'], text['text_mask'])
    return head_of(policy, i).compute_loss(cond, b['action'], b['mask'])['loss']


def get_lr(it):
    """Linear warmup then cosine decay to min_lr (nanoGPT)."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    ratio = min(1.0, (it - warmup_iters) / max(1, max_iters - warmup_iters))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


# -----------------------------------------------------------------------------
# checkpoints: weights (EMA = the policy we evaluate; raw + optimizer + RNG for --resume) as safetensors,
# everything else (config, tasks, instructions, per-task statistics) as JSON, committed by checkpoint.py


def save_checkpoint(it):
    tensors = {f'ema.{k}': v for k, v in ema.state_dict().items()}
    tensors.update({f'raw.{k}': v for k, v in policy.state_dict().items()})
    optim, param_groups = checkpoint.optimizer_tensors(optimizer, 'optim')
    tensors.update(optim)
    tensors['rng.torch'] = torch.get_rng_state()
    meta = dict(iter_num=it, config=config, model_config=model_config.__dict__, param_groups=param_groups,
                numpy_rng=rng.bit_generator.state, samples_seen=samples_seen.tolist(),
                tasks=[{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in d.items() if k != 'ds'}
                       for d in task_data])
    checkpoint.save_state(out_dir, 'multitask', it, tensors, meta)


iter_num = 0
if resume:
    meta, tensors = checkpoint.load_state(out_dir, 'multitask')
    if [d['task'] for d in meta['tasks']] != tasks or meta['config']['multi_head'] != multi_head:
        raise SystemExit(f"{out_dir} was trained on tasks {[d['task'] for d in meta['tasks']]} with multi_head="
                         f"{meta['config']['multi_head']}: resume with the same --tasks and --multi_head")
    policy.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith('raw.')})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith('ema.')})
    checkpoint.load_optimizer(optimizer, tensors, 'optim', meta['param_groups'], device)
    torch.set_rng_state(tensors['rng.torch'])
    rng.bit_generator.state = meta['numpy_rng']
    samples_seen[:] = meta['samples_seen']
    iter_num = meta['iter_num']
    checkpoint.truncate_log(os.path.join(out_dir, 'log.jsonl'), iter_num)
    print(f"resumed from {out_dir} at iteration {iter_num}")

# -----------------------------------------------------------------------------
# training loop
log_path = os.path.join(out_dir, 'log.jsonl')
pbar = tqdm(range(iter_num, max_iters), initial=iter_num, total=max_iters, desc='multitask', dynamic_ncols=True)
t_start = time.time()
for it in pbar:
    lr = get_lr(it)
    for group in optimizer.param_groups:
        group['lr'] = lr
    policy.train()
    losses = {}
    loss = 0.0
    for i, b in sample_batch(it):
        task_l = task_loss(i, b)
        loss = loss + task_l * b['action'].shape[0] / batch_size  # each sample weighs the same
        losses[labels[i]] = task_l.item()
    if not torch.isfinite(loss):
        raise SystemExit(f"loss is {loss.item()} at iteration {it} (per task {losses}): training diverged. "
                         f"Lower --learning_rate (now {learning_rate}); the last good checkpoint is in {out_dir}")
    loss.backward()
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not policy:
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(policy.parameters()), 1.0 - ema_decay)
    pbar.set_postfix(loss=f'{loss.item():.4f}', tasks=active_tasks(it))
    step = it + 1
    if step % log_interval == 0 or step == max_iters:
        with open(log_path, 'a') as f:
            f.write(json.dumps(dict(iter=step, loss=loss.item(), task_loss=losses, lr=lr, active_tasks=active_tasks(it),
                                    samples_seen=dict(zip(labels, samples_seen.tolist())),
                                    time=time.time() - t_start)) + '\n')
    if step % ckpt_interval == 0 or step == max_iters:
        save_checkpoint(step)
pbar.close()
print(f"trained {max_iters} iterations in {(time.time() - t_start) / 60:.1f} min")

# -----------------------------------------------------------------------------
# per-task evaluation, each in its own simulator, with the EMA weights


class TaskPolicyModel(torch.nn.Module):
    """The multi-task policy seen as task i's own single-task model (what eval.VLAPolicy drives):
    its state is normalized and padded, its head answers, and only its action dims come back, in
    its raw units."""

    def __init__(self, pol, i):
        super().__init__()
        self.pol, self.i = pol, i

    def encode_instruction(self, texts):
        return self.pol['vla'].encode_instruction(texts)

    @torch.no_grad()
    def predict_action(self, batch, instruction_cache=None):
        cache = instruction_cache or self.encode_instruction(batch['instruction'])
        images, proprio, _ = to_common(self.i, batch['images'], batch['proprio'])
        cond = self.pol['vla'].features(images, proprio, cache['text_embeds'], cache['text_mask'])
        a = head_of(self.pol, self.i)(cond)['action'].clamp(-1, 1)[..., :task_data[self.i]['action_dim']]
        n = norm[self.i]
        return (a + 1) / 2 * (n['action_max'] - n['action_min']) + n['action_min']


if eval_episodes > 0:
    ema.eval()
    results = {}
    for i, d in enumerate(task_data):
        pol = VLAPolicy(TaskPolicyModel(ema, i), instruction=d['instruction'], n_action_steps=n_action_steps,
                        image_keys=[d['image_key']], state_key=envs.TASKS[d['task']]['state_key'])
        m = ManipulationEvaluator(d['task'], n_episodes=eval_episodes, start_seed=envs.TEST_SEED).evaluate(pol)
        results[labels[i]] = {k: v for k, v in m.items() if k != 'episodes'}
        print(f"{d['task']}: success {m['success_rate']:.2f} over {eval_episodes} held-out episodes "
              f"(avg max reward {m['avg_max_reward']:.3f})")
    checkpoint.write_json(os.path.join(out_dir, 'eval.json'), results)
