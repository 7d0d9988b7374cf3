"""
What every train_*.py script shares, written once (as nanochat shares its checkpoint manager); each script
keeps its own loop and decides WHAT goes into its checkpoints.

    ddp, rank, world_size, device = init_distributed(device)
    with autocast(device_type, mixed_precision): loss = model(batch)['loss']   # a no-op on the CPU
    record_if_missing(path, lambda tmp: envs.record_demonstrations(task, n, tmp), 'recording n episodes')
    optimizer = adamw(model, learning_rate, weight_decay, betas)
    lr = cosine_lr(it, learning_rate, min_lr, warmup_iters, decay_iters)
    grad_norm = optimizer_step(optimizer, scaler, model.parameters(), max_grad_norm)  # unscale, clip, step
    update_ema(ema_model, model, ema_decay)
    tensors, param_groups = training_tensors(model, ema_model, optimizer, device_type)  # weights, EMA, moments, RNG
    save_state(out_dir, 'training_state', step, tensors, meta)   # -> <name>-<step>-<id>.safetensors + <name>.json
    meta, tensors = load_state(out_dir, 'training_state')
    ns = script_functions('train_gail.py', ['gae'], torch=torch)  # a stage's math, for tests and benchmarks

Crash consistency: the tensors go to a NEW file named by the step, then <name>.json (the step, that file's
name and sha256, the script's metadata) is replaced in one rename -- the commit point -- and only then are
older tensor files deleted. A kill at any instant leaves the JSON naming a complete tensor file of its
own step, so a resume never mixes steps; a file changed afterwards fails its checksum.
"""
import ast
import contextlib
import ctypes
import hashlib
import json
import math
import os
import shutil
import sys
import time
import uuid

import torch
from safetensors.torch import save_file

FORMAT_VERSION = 2


def keep_freed_memory():
    """glibc's malloc returns large freed blocks to the OS (munmap, heap trimming), so a CPU training step
    page-faults all its activations and gradients in again, every step: with the human PushT preset's model,
    ~20k page faults and 15-25% of every step (bench/bench_train.py --glibc_default compares). Tell malloc to keep
    them: blocks up to 32 MiB (glibc's largest mmap threshold) come from the heap, which grows 1 GiB at a time
    (address space; pages are used only when touched) and is trimmed only above 2 GiB of free memory. The effect
    of MALLOC_MMAP_THRESHOLD_ & co. in the environment, or of preloading jemalloc. -> whether malloc took it
    (Linux with glibc; elsewhere nothing changes)."""
    if not sys.platform.startswith('linux'):
        return False
    libc = ctypes.CDLL(None)  # the symbols already loaded in this process, libc's among them
    if not hasattr(libc, 'mallopt'):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
    settings = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, (1 << 31) - 1), (M_TOP_PAD, 1 << 30))
    return all([libc.mallopt(param, value) == 1 for param, value in settings])  # a list: every setting is applied


def init_distributed(device):
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK: then join the process group (NCCL on GPUs, gloo on CPUs)
    and take this rank's GPU. -> (ddp, rank, world_size, device), device resolved from 'auto'. Training on the
    CPU also keeps freed memory in the process (keep_freed_memory: up to ~1.3x faster steps)."""
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    if device == 'cpu':
        keep_freed_memory()
    if int(os.environ.get('RANK', -1)) == -1:
        return False, 0, 1, device
    import torch.distributed as dist
    from datetime import timedelta
    backend = 'nccl' if device.startswith('cuda') else 'gloo'
    dist.init_process_group(backend=backend, timeout=timedelta(hours=2))  # rank 0 may record data / evaluate
    if device.startswith('cuda'):
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    return True, dist.get_rank(), dist.get_world_size(), device


def autocast(device_type, mixed_precision):
    """bf16 / fp16 autocast of the forward passes on a GPU; on the CPU (or with 'no') a context that does nothing."""
    if mixed_precision not in ('no', 'bf16', 'fp16'):
        raise SystemExit(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {mixed_precision!r}")
    if device_type == 'cpu' or mixed_precision == 'no':
        return contextlib.nullcontext()
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[mixed_precision]
    return torch.autocast(device_type=device_type, dtype=dtype)


def record_if_missing(path, record, what):
    """A dataset folder made once: record(tmp) writes it under <path>.tmp and one rename makes it visible whole, so
    a crash never leaves half a dataset at `path`. A folder at `path` without meta/info.json (an interrupted copy)
    is refused, not written over. what: the message, e.g. 'recording 200 expert episodes'. -> whether it recorded."""
    if os.path.exists(os.path.join(path, 'meta', 'info.json')):
        return False
    if os.path.exists(path):  # say so now, not after the whole recording fails to rename onto it
        raise SystemExit(f"{path} exists but holds no dataset (no meta/info.json; an interrupted copy?): delete or "
                         f"move it to record anew, or pass --dataset=<a LeRobot dataset folder>")
    print(f"no dataset at {path}: {what} (done once)", flush=True)
    t0 = time.time()
    shutil.rmtree(path + '.tmp', ignore_errors=True)
    record(path + '.tmp')
    os.replace(path + '.tmp', path)
    print(f"recorded {path} in {time.time() - t0:.0f}s", flush=True)
    return True


def adamw(model, learning_rate, weight_decay, betas, fused=False):
    """AdamW (Loshchilov & Hutter 2019) with weight decay on matrices only: decaying biases and norm gains
    toward 0 only hurts (nanoGPT's grouping). Frozen parameters are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW([{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
                              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}],
                             lr=learning_rate, betas=betas, fused=fused)


def cosine_lr(it, learning_rate, min_lr, warmup_iters, decay_iters):
    """Linear warmup, then cosine decay to min_lr at decay_iters, then min_lr (nanoGPT; Loshchilov & Hutter 2017)."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def optimizer_step(optimizer, scaler, params, max_grad_norm):
    """Unscale (fp16), clip the global gradient norm (0 = no clipping), step, clear the gradients.
    -> the gradient norm before clipping (nan when not clipping), for the log."""
    grad_norm = float('nan')
    if max_grad_norm > 0:
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm).item()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


@torch.no_grad()
def update_ema(ema_model, model, decay):
    """ema <- decay * ema + (1 - decay) * weights: a running average of the weights that evaluates better
    than the last iterate (Polyak averaging; Diffusion Policy and ACT evaluate the EMA too)."""
    torch._foreach_lerp_(list(ema_model.parameters()), list(model.parameters()), 1.0 - decay)


def write_json(path, obj):
    """Write JSON to a temp name, then rename: readers see the old file or the new one, never half."""
    with open(path + '.tmp', 'w') as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(path + '.tmp', path)


def save_best(model, out_dir):
    """out_dir/best: the policy that validated best, with the run's train_config.json beside it (the recipe
    DAgger's --init_from retrains with); each file appears whole, under a temp name first."""
    best = os.path.join(out_dir, 'best')
    model.save_pretrained(best)
    shutil.copyfile(os.path.join(out_dir, 'train_config.json'), os.path.join(best, 'train_config.json.tmp'))
    os.replace(os.path.join(best, 'train_config.json.tmp'), os.path.join(best, 'train_config.json'))


def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def save_state(out_dir, name, step, tensors, meta):
    """tensors {str: tensor}, meta a JSON-able dict -> committed as step `step` (see above)."""
    file = f'{name}-{step:08d}-{uuid.uuid4().hex[:8]}.safetensors'  # unique: re-saving a step never touches
    #                                                                 the file the committed JSON names
    path = os.path.join(out_dir, file)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, path + '.tmp')
    os.replace(path + '.tmp', path)
    write_json(os.path.join(out_dir, f'{name}.json'),
               dict(meta, format_version=FORMAT_VERSION, step=step, tensors=file, sha256=sha256(path)))  # the commit
    for f in os.listdir(out_dir):  # older states and leftovers of an interrupted save
        if f.startswith(f'{name}-') and f != file:
            os.remove(os.path.join(out_dir, f))


def load_state(out_dir, name):
    """-> (meta dict, tensors dict) of the last committed step; SystemExit with the fix if there is none."""
    from model import read_json, read_safetensors
    meta_path = os.path.join(out_dir, f'{name}.json')
    if not os.path.exists(meta_path):
        raise SystemExit(f"--resume=True but {meta_path} does not exist: train without --resume first")
    meta = read_json(meta_path)
    if meta.get('format_version') != FORMAT_VERSION:
        raise SystemExit(f"{meta_path} has format_version {meta.get('format_version')}, this code reads "
                         f"{FORMAT_VERSION}: resume with the version that wrote it, or train anew")
    path = os.path.join(out_dir, meta['tensors'])
    if not os.path.exists(path) or sha256(path) != meta['sha256']:
        raise SystemExit(f"{path} is missing or does not match the sha256 in {meta_path}: the checkpoint was "
                         f"changed after it was written; restore the folder or train anew")
    return meta, read_safetensors(path)


def optimizer_tensors(optimizer, prefix):
    """An optimizer's per-parameter state as flat tensors '<prefix>.<param id>.<key>' (+ its param groups)."""
    sd = optimizer.state_dict()
    tensors = {f'{prefix}.{pid}.{k}': torch.as_tensor(v) for pid, st in sd['state'].items() for k, v in st.items()}
    return tensors, sd['param_groups']


def load_optimizer(optimizer, tensors, prefix, param_groups, device='cpu'):
    """Inverse of optimizer_tensors."""
    state = {}
    for k, v in tensors.items():
        if k.startswith(prefix + '.'):
            _, pid, key = k.split('.', 2)
            state.setdefault(int(pid), {})[key] = v.to(device) if key != 'step' else v
    optimizer.load_state_dict({'state': state, 'param_groups': param_groups})


def training_tensors(model, ema_model, optimizer, device_type):
    """What every stage's training state holds as tensors: the raw weights ('model.'), the EMA ('ema.', if any), the
    optimizer's moments ('optim.') and torch's random state ('rng.', CUDA's too: a resumed run draws the same noise).
    -> (tensors, the optimizer's param groups for the JSON)."""
    tensors = {f'model.{k}': v for k, v in model.state_dict().items()}
    if ema_model is not None:
        tensors.update({f'ema.{k}': v for k, v in ema_model.state_dict().items()})
    optim, param_groups = optimizer_tensors(optimizer, 'optim')
    tensors.update(optim)
    tensors['rng.torch'] = torch.get_rng_state()
    if device_type == 'cuda':
        tensors['rng.cuda'] = torch.cuda.get_rng_state()
    return tensors, param_groups


def restore_training_tensors(tensors, param_groups, model, ema_model, optimizer, device):
    """Inverse of training_tensors: weights, EMA, optimizer and random state back in place."""
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith('model.')})
    if ema_model is not None:
        ema_model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith('ema.')})
    load_optimizer(optimizer, tensors, 'optim', param_groups, device)
    torch.set_rng_state(tensors['rng.torch'])
    if 'rng.cuda' in tensors and device.startswith('cuda'):
        torch.cuda.set_rng_state(tensors['rng.cuda'])


def finish_ddp(model, device, world_size):
    """End the distributed part of a run, on every rank at once. After DDP training every rank must hold the
    same parameters (a silent divergence would save one rank's model and evaluate another's): compare a
    checksum of all of them across ranks. Then all ranks leave the process group together: a rank that
    tears down its gloo connections while a peer is still using them aborts the peer's process, which is
    why the group closes here and not after rank 0's (long) final evaluation."""
    import torch.distributed as dist
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(device)
    gathered = [torch.zeros_like(checksum) for _ in range(world_size)]
    dist.all_gather(gathered, checksum)
    identical = all(torch.equal(g, gathered[0]) for g in gathered)
    dist.barrier()
    dist.destroy_process_group()
    if not identical:
        raise SystemExit("DDP: parameters differ across ranks after training")


def append_log(log_path, record):
    """One JSON line per record (log.jsonl, what the plots read): a crash mid-run leaves every earlier line whole."""
    with open(log_path, 'a') as f:
        f.write(json.dumps(record) + '\n')


def truncate_log(log_path, step):
    """After a resume from `step`: drop what an interrupted run logged past it, so log.jsonl holds every
    iteration once (records carry 'iter')."""
    if not os.path.exists(log_path):
        return
    kept = [line for line in open(log_path) if line.strip() and json.loads(line)['iter'] <= step]
    with open(log_path + '.tmp', 'w') as f:
        f.writelines(kept)
    os.replace(log_path + '.tmp', log_path)


def script_functions(script, names=None, **namespace):
    """Exec only the top-level functions of a stage script (all, or those named), with the given globals: the
    scripts read top to bottom and train when run, so tests and benchmarks reuse a stage's math this way."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    nodes = [n for n in ast.parse(open(path).read()).body
             if isinstance(n, ast.FunctionDef) and (names is None or n.name in names)]
    missing = set(names or ()) - {n.name for n in nodes}
    if missing:
        raise ValueError(f"{script} has no top-level function {sorted(missing)}")
    exec(compile(ast.Module(nodes, type_ignores=[]), path, 'exec'), namespace)
    return namespace
