"""
Multi-task behavioral cloning: ONE language-conditioned VLA policy for several tasks, told by its
instruction which task to do (the recipe of RT-1, Brohan et al. 2022, and Octo, Ghosh et al. 2024).

    python train_multitask.py                                  # lift + pusht + aloha_transfer_cube on one CPU
    python train_multitask.py --task_weights="[0.2, 0.4, 0.4]" --curriculum=True
    python train_multitask.py --multi_head=True                # a separate action head per task
    python train_dagger.py --task=pusht --init_from=out/multitask   # DAgger on one task (rounds use --init_from)
    torchrun --standalone --nproc_per_node=4 train_multitask.py --device=cuda --mixed_precision=bf16

Different robots disagree on everything but the camera: PushT's action is a 2-D target (pixels),
Lift's a 3-D Cartesian step + gripper command, ALOHA's 14 joint targets (radians). So the model keeps
normalization statistics PER TASK (actions to [-1, 1], states to zero mean / unit std) and zero-pads
every task's actions and states to the largest dims; the padded action dims stay out of the loss, and
at inference the task's own dims come back in its raw units (model.py: task_index). Cameras are resized
to one image_size. Each batch holds a number of samples per task drawn from task_weights; a task's
sub-batch shares its instruction, so the LM encodes it once (model.py).

curriculum=True adds tasks in the order listed (easiest first): task k joins at iteration
k * curriculum_interval, after which sampling follows task_weights over the tasks admitted so far.
The checkpoint is the one format every stage writes: eval.py --ckpt=out/multitask --task=pusht runs a task.
"""
import copy
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
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
init_from = ''  # a multi-task checkpoint folder: fine-tune it (architecture, weights, per-task statistics); DAgger does
image_size = 96  # every camera is resized to this
log_interval = 25
eval_interval = 0  # iterations between per-task evaluations on validation seeds, kept in best/ (0 = only at the end)
eval_episodes = 20  # per task: periodic evaluation (validation seeds) and the final one (held-out test seeds); 0 = none
eval_max_steps = 0  # steps per evaluation episode: 0 = each task's limit (what published success rates count)
ckpt_interval = 500
resume = False
augment = True  # random crop / color jitter / small affine on training images (data.augment_batch)
# model (fields of model.ManipulationVLAConfig; every other field is a key too, see below)
vision_encoder = 'cnn'
vlm_backbone = 'tiny-qwen2'
action_head_type = 'mlp'
action_chunk_size = 16
n_action_steps = 8
# training
max_iters = 6000
lr_decay_iters = 0  # iterations of the cosine decay (0 = max_iters)
batch_size = 64
gradient_accumulation_steps = 1
learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 200
weight_decay = 1e-4
betas = (0.9, 0.95)
max_grad_norm = 1.0
ema_decay = 0.995
device = 'auto'
mixed_precision = 'no'  # 'no' | 'bf16' | 'fp16' (autocast on GPU only)
compile = False
seed = 1337
_task_presets = False  # config/<task>.py presets are single-task: --tasks names several
from model import config_defaults  # noqa: E402
globals().update({k: v for k, v in config_defaults().items() if k not in globals()})
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
import data  # noqa: E402
import envs  # noqa: E402
import train_common  # noqa: E402
from eval import ManipulationEvaluator, VLAPolicy  # noqa: E402
from model import DATASET_FIELDS, ManipulationVLA, ManipulationVLAConfig, policy_info  # noqa: E402

unknown = [t for t in tasks if t not in envs.TASKS]
if unknown or not tasks:
    raise SystemExit(f"tasks {unknown or tasks} unknown or empty; known tasks: {', '.join(envs.TASKS)}")
for name, value in (('datasets', datasets), ('task_weights', task_weights), ('instructions', instructions)):
    if value and len(value) != len(tasks):
        raise SystemExit(f"{name} has {len(value)} entries but there are {len(tasks)} tasks ({tasks}): give one per task")
if task_weights and (min(task_weights) < 0 or sum(task_weights) <= 0):
    raise SystemExit(f"task_weights must be >= 0 with a positive sum, got {task_weights}")
if image_size < 1:
    raise SystemExit(f"image_size={image_size}: every camera is resized to image_size x image_size, so it must be >= 1")
if use_depth:  # model.py can encode depth, but nothing here feeds it: refuse now instead of at the first forward pass
    raise SystemExit("use_depth=True: no dataset or simulator task here provides depth frames yet (train, eval and "
                     "deploy pass camera images and state only); leave use_depth=False")

# distributed setup as in train_bc.py: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK
ddp, rank, world_size, device = train_common.init_distributed(device)
master_process = rank == 0
device_type = device.split(':')[0]
torch.manual_seed(seed + rank)
rng = np.random.default_rng([seed, rank])  # each rank draws its own samples
autocast = train_common.autocast(device_type, mixed_precision)
if master_process:
    os.makedirs(out_dir, exist_ok=True)
weights = np.asarray(task_weights or [1.0] * len(tasks), dtype=np.float64)
labels = [t if tasks.count(t) == 1 else f'{t}#{i}' for i, t in enumerate(tasks)]  # names in logs and eval.json


def print0(*args):
    if master_process:
        print(*args, flush=True)


# -----------------------------------------------------------------------------
# data: one LeRobot dataset per task (the model normalizes each with its own statistics)
task_data = []
for i, task in enumerate(tasks):
    spec = envs.TASKS[task]
    n_eps = dataset_episodes.get(task, 50)
    given = datasets[i] if datasets else ''
    path = given or os.path.join('data', f'{task}_{n_eps}ep')
    if master_process and not given:
        train_common.record_if_missing(path, lambda tmp: envs.record_demonstrations(
            task, n_eps, tmp, seed=0, num_workers=os.cpu_count()), f"recording {n_eps} {task} expert episodes")
    if ddp:
        dist.barrier()
    ds = data.ManipulationDataset(path, image_keys=spec['image_keys'][:1], state_key=spec['state_key'],
                                  chunk_size=action_chunk_size, instruction=(instructions[i] if instructions else '') or None,
                                  n_obs_steps=n_obs_steps, image_size=(image_size, image_size))  # resized once, decoding
    text = ds.tasks()[0]
    stats = ds.ds.meta.stats
    task_data.append(dict(task=task, path=path, ds=ds, stats=stats, instruction=text, instructions=ds.tasks(),
                          image_key=spec['image_keys'][0], state_key=spec['state_key'],
                          action_dim=len(stats['action']['min']), state_dim=len(stats[spec['state_key']]['mean'])))
    print0(f"task {i} {task}: {len(ds)} frames from {path}, instruction {text!r}")
if len({d['instruction'] for d in task_data}) < len(tasks):
    raise SystemExit("two tasks share an instruction, so the policy could not tell them apart: set --instructions")
samples_seen = np.zeros(len(tasks), dtype=np.int64)  # per task, logged: the weights and curriculum at work


def active_tasks(it):
    """Tasks admitted by the curriculum at iteration it (all of them without a curriculum)."""
    return len(tasks) if not curriculum else min(len(tasks), 1 + it // curriculum_interval)


def sample_batch(it):
    """A batch as per-task sub-batches: counts ~ Multinomial(batch_size, weights over admitted tasks);
    each sub-batch is in the model's convention plus its task_index, images at image_size."""
    k = active_tasks(it)
    counts = rng.multinomial(batch_size, weights[:k] / weights[:k].sum())
    samples_seen[:k] += counts
    subs = []
    for i in np.flatnonzero(counts):
        b = task_data[i]['ds'].get_batch(rng.integers(0, len(task_data[i]['ds']), counts[i]))
        b = {key: v.to(device) if torch.is_tensor(v) else v for key, v in b.items()}
        if augment:
            b['images'] = data.augment_batch(b['images'])
        subs.append((int(i), dict(b, task_index=int(i))))
    return subs


class MultiTaskLoss(torch.nn.Module):
    """The sample-weighted mean of the per-task losses of one step, in ONE forward call, so that DDP
    synchronizes gradients once per step (it cannot across several forwards)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, subs):
        total, losses = 0.0, {}
        for i, b in subs:
            loss = self.model(b)['loss']
            total = total + loss * len(b['instruction']) / batch_size  # each sample weighs the same
            losses[labels[i]] = loss.detach()
        return total, losses


# -----------------------------------------------------------------------------
# model: a shared backbone, per-task statistics, one head or one per task (multi_head)
A = max(d['action_dim'] for d in task_data)
S = max(d['state_dim'] for d in task_data)
if init_from:  # fine-tune: architecture, weights and per-task statistics come from the checkpoint (as train_bc.py)
    model = ManipulationVLA.from_pretrained(init_from)
    stored = [t['task'] for t in model.policy_info.get('tasks', [])]
    if model.config.image_crop:
        raise SystemExit(f"{init_from} reads frames cropped to {model.config.image_crop} (train_bc.py --image_crop); "
                         f"train_multitask.py trains on whole frames: fine-tune it with train_bc.py --init_from")
    if stored != list(tasks) or model.config.image_hw != (image_size, image_size):
        raise SystemExit(f"{init_from} serves tasks {stored} at {model.config.image_hw} frames: fine-tune it with "
                         f"--tasks={stored} --image_size={model.config.image_size}")
    model_config = model.config
    print0(f"initialized from {init_from}; its config wins over model keys given here")
else:
    model_config = ManipulationVLAConfig(**{k: v for k, v in config.items()
                                            if k in ManipulationVLAConfig.__dataclass_fields__ and k not in DATASET_FIELDS},
                                         image_size=image_size, num_cameras=1, proprioception_dim=S, action_dim=A,
                                         num_tasks=len(tasks))
    model = ManipulationVLA(model_config)
    for i, d in enumerate(task_data):
        model.set_normalization_stats({'action': d['stats']['action'], 'observation.state': d['stats'][d['state_key']]}, i)
model.policy_info = policy_info([dict(d, image_keys=[d['image_key']]) for d in task_data], n_action_steps)
model.to(device)
raw_model = model
ema_model = copy.deepcopy(model).requires_grad_(False) if ema_decay > 0 else None
eval_model = ema_model or model
optimizer = train_common.adamw(model, learning_rate, weight_decay, betas, fused=device_type == 'cuda')
scaler = torch.amp.GradScaler(device_type, enabled=mixed_precision == 'fp16' and device_type == 'cuda')
if master_process:  # the recipe and the data it read: DAgger retrains with it (train_dagger.py)
    train_common.write_json(os.path.join(out_dir, 'train_config.json'),
                            dict(config, dataset_paths=[d['path'] for d in task_data]))
print0(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, action_dim {A}, state_dim {S}, "
       f"{'one head per task' if model_config.multi_head else 'one shared head'} ({model_config.action_head_type})")

# -----------------------------------------------------------------------------
# checkpoints: out_dir holds the EMA policy (model.safetensors + config.json, what eval.py / deploy.py read)
# and training_state (raw weights, EMA, optimizer, RNG, counters) for --resume, committed by train_common.py


def save_training_state(step, best_success):
    tensors, param_groups = train_common.training_tensors(raw_model, ema_model, optimizer, device_type)
    meta = dict(best_success=best_success, param_groups=param_groups, scaler=scaler.state_dict(), config=config,
                numpy_rng=rng.bit_generator.state, samples_seen=samples_seen.tolist())
    train_common.save_state(out_dir, 'training_state', step, tensors, meta)
    eval_model.save_pretrained(out_dir)


iter_num, best_success = 0, -1.0
log_path = os.path.join(out_dir, 'log.jsonl')
if resume:
    meta, tensors = train_common.load_state(out_dir, 'training_state')
    saved = meta['config']
    if saved.get('tasks') != tasks or saved.get('multi_head') != multi_head:
        raise SystemExit(f"{out_dir} was trained on tasks {saved.get('tasks')} with multi_head={saved.get('multi_head')}: "
                         f"resume with the same --tasks and --multi_head")
    train_common.restore_training_tensors(tensors, meta['param_groups'], raw_model, ema_model, optimizer, device)
    scaler.load_state_dict(meta['scaler'])
    rng.bit_generator.state = meta['numpy_rng']
    samples_seen[:] = meta['samples_seen']
    iter_num, best_success = meta['step'], meta['best_success']
    if master_process:
        train_common.truncate_log(log_path, iter_num)
    print0(f"resumed from {out_dir} at iteration {iter_num}")
loss_module = MultiTaskLoss(torch.compile(model) if compile else model)
train_module = DDP(loss_module, device_ids=[int(device.split(':')[1])] if device_type == 'cuda' else None,
                   find_unused_parameters=model_config.multi_head or curriculum) if ddp else loss_module


def evaluate(n_episodes, start_seed):
    """Each task in its own simulator, with the EMA weights -> {label: metrics without episodes}."""
    results = {}
    eval_model.eval()
    with torch.random.fork_rng(devices=[]):
        for i, d in enumerate(task_data):
            pol = VLAPolicy(eval_model, d['instruction'], n_action_steps, image_keys=[d['image_key']],
                            state_key=d['state_key'], task_index=i)
            m = ManipulationEvaluator(d['task'], n_episodes=n_episodes, start_seed=start_seed,
                                      max_steps=eval_max_steps).evaluate(pol)
            results[labels[i]] = {k: v for k, v in m.items() if k != 'episodes'}
    return results


# -----------------------------------------------------------------------------
# training loop
pbar = tqdm(range(iter_num, max_iters), initial=iter_num, total=max_iters, desc='multitask', dynamic_ncols=True,
            disable=not master_process)
t_start = time.time()
for it in pbar:
    lr = train_common.cosine_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters or max_iters)
    for group in optimizer.param_groups:
        group['lr'] = lr
    model.train()
    loss_sum, losses = 0.0, {}
    for micro_step in range(gradient_accumulation_steps):
        if ddp:  # only sync gradients on the last micro-step (nanoGPT)
            train_module.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        with autocast:
            loss, task_losses = train_module(sample_batch(it))
            loss = loss / gradient_accumulation_steps
        if not torch.isfinite(loss):
            raise SystemExit(f"loss is {loss.item()} at iteration {it} (per task {task_losses}): training diverged. "
                             f"Lower --learning_rate (now {learning_rate}); the last good checkpoint is in {out_dir}")
        scaler.scale(loss).backward()
        loss_sum += loss.item()
        losses.update({k: v.item() for k, v in task_losses.items()})
    grad_norm = train_common.optimizer_step(optimizer, scaler, raw_model.parameters(), max_grad_norm)
    if ema_model is not None:
        train_common.update_ema(ema_model, raw_model, ema_decay)
    pbar.set_postfix(loss=f'{loss_sum:.4f}', tasks=active_tasks(it))
    step = it + 1
    if master_process and (step % log_interval == 0 or step == max_iters):
        train_common.append_log(log_path, dict(iter=step, loss=loss_sum, task_loss=losses, lr=lr, grad_norm=grad_norm,
                                               active_tasks=active_tasks(it), time=time.time() - t_start,
                                               samples_seen=dict(zip(labels, samples_seen.tolist()))))
    if master_process and eval_interval > 0 and eval_episodes > 0 and step % eval_interval == 0 and step < max_iters:
        results = evaluate(eval_episodes, envs.VAL_SEED)  # validation seeds, not the test seeds
        success = float(np.mean([r['success_rate'] for r in results.values()]))
        train_common.append_log(log_path, dict(iter=step, eval_success=success, eval=results,
                                               time=time.time() - t_start))
        pbar.write(f"iter {step}: validation success (mean over tasks) {success:.2f}")
        if success > best_success:
            best_success = success
            train_common.save_best(eval_model, out_dir)
    if master_process and (step % ckpt_interval == 0 or step == max_iters):
        save_training_state(step, best_success)
pbar.close()
print0(f"trained {max_iters} iterations in {(time.time() - t_start) / 60:.1f} min")
if ddp:  # every rank must hold the same parameters after training; the process group closes here
    train_common.finish_ddp(raw_model, device, world_size)

# -----------------------------------------------------------------------------
# final per-task evaluation on held-out test seeds, each task in its own simulator
if master_process and eval_episodes > 0:
    results = evaluate(eval_episodes, envs.TEST_SEED)
    for label, m in results.items():
        print(f"{label}: success {m['success_rate']:.2f} over {eval_episodes} held-out episodes "
              f"(avg max reward {m['avg_max_reward']:.3f})")
    train_common.write_json(os.path.join(out_dir, 'eval.json'), results)
