"""
Stage 1, vision-language alignment (LLaVA, Liu et al. 2023): teach the policy's image tokens to speak the
LM's language BEFORE behavioral cloning, by next-token prediction of answers to questions about the image.

    python train_vlm.py --task=pusht                                   # renders VQA data if missing, ~CPU minutes
    python train_bc.py --task=pusht --init_from=out/vlm_pusht          # stage 2: BC from the aligned backbone
    python train_vlm.py --vlm_backbone=Qwen/Qwen2-0.5B-Instruct --vision_encoder=google/siglip-base-patch16-224 \
        --freeze_llm=True --freeze_vision=True                          # LLaVA's stage 1 proper: the projector only
    ... --freeze_llm=True --use_lora=True --gradient_checkpointing=True  # + LoRA on the LM, activations recomputed
    python bench/bench_vlm_sizes.py                                    # memory and step time of these per size

The questions are about things the simulator knows exactly, so every answer is checkable (PushT):
    frame + "where is the block relative to the goal?"        -> "upper left" (a quadrant, or "at the goal")
          + "how is the block rotated relative to the goal?"  -> "45 degrees clockwise" (8 bins of 45 degrees)
          + "where is the pusher?"                            -> "lower right" (quadrant of the table)
          + "does the block cover the goal?"                  -> "yes" (coverage of the goal > 50%)
Lift (--task=lift): is the cube lifted (2 cm off the table)? is the gripper holding it (both pads touch it)? is the
gripper open? where is the gripper relative to the cube (above it / at it / away)? ALOHA (--task=aloha_transfer_cube):
which arm holds the cube (its fingers touch it off the table: the left / the right / both / neither)? is the cube
on the table? does the right / the left gripper touch it?
The model is ManipulationVLA itself (vision encoder -> vision_proj -> Qwen2 body), plus an LM head that is not
part of the policy: for the offline tiny-qwen2 it is tied to the input embeddings (no new weights), for a hub LM
its own lm_head (frozen). The sequence and loss:
    [image tokens Ni][question tokens][answer tokens][eos]    cross-entropy on the answer + eos only
The checkpoint is the one format (model.safetensors + config.json, policy = {'stage': 'vlm', ...}), so
train_bc.py --init_from loads it; its action head and readouts are untrained, BC trains them.

Data: a LeRobot v3.0 dataset, one EPISODE per rendered frame and one ROW per question about it: the row's task
text is "question? answer" (split at the first '? '), 'observation.image' the frame (repeated per question) and
'observation.environment_state' the answers' truth (PushT: agent xy, block xy angle, goal xy angle; pusht.vqa_state).
With internet, --dataset=<hub id> takes an image-text dataset in the same layout from the hub (data.py downloads
it into the hub cache); a row whose text has no '? ' is a caption, the answer to caption_prompt. Held-out accuracy
is still measured on the task's simulator frames (resized to the dataset's frame size): what the simulator can check.
"""
import os
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# default config values (PushT on one CPU)
# I/O
task = 'pusht'  # 'pusht' | 'lift' | 'aloha_transfer_cube': the tasks whose module asks questions (VQA, vqa_answers)
out_dir = ''  # '' = out/vlm_<task>
dataset = ''  # VQA or caption LeRobot dataset: a folder or hub id; '' = data/vqa_<task>_<vqa_frames>, recorded if missing
image_key = 'observation.image'  # the dataset's camera
caption_prompt = 'what does the image show?'  # the question of a row whose text is a caption (no '? ' in it)
vqa_frames = 2000  # frames to render when recording (8 per expert rollout, seeds 0..; ~5 min): 4 questions each
eval_frames = 200  # held-out frames for answer accuracy, rendered in memory from validation seeds (envs.VAL_SEED..)
eval_interval = 500  # iterations between accuracy evaluations (0 = only before and after training)
log_interval = 25
ckpt_interval = 500  # iterations between training states (weights, optimizer, sampler; atomic) for --resume
resume = False  # continue from out_dir's last training state
# model (fields of model.ManipulationVLAConfig; the offline tiny models are random, so by default all of it trains)
vision_encoder = 'cnn'  # 'cnn' | 'tiny-siglip' | a SigLIP hub id or folder
vlm_backbone = 'tiny-qwen2'  # 'tiny-qwen2' (tied LM head) | a causal-LM hub id or folder (its own lm_head)
freeze_vision = False  # True with a pretrained tower (LLaVA stage 1 trains the projector only)
freeze_llm = False  # True with a pretrained LM; use_lora=True then adds low-rank adapters to it
use_lora = False
gradient_checkpointing = False  # recompute the LM's (and a trained tower's) layers in backward: for big backbones
# training
max_iters = 3000
lr_decay_iters = 0  # iterations of the cosine decay (0 = max_iters)
batch_size = 64
learning_rate = 1e-3  # LLaVA's stage 1 uses 1e-3 (for the projector)
min_lr = 1e-4
warmup_iters = 100
weight_decay = 0.0
betas = (0.9, 0.95)
max_grad_norm = 1.0  # 0 = no clipping
max_answer_tokens = 32  # greedy decoding stops here or at eos
# system
device = 'auto'  # 'auto' | 'cpu' | 'cuda' | 'mps'
mixed_precision = 'no'  # 'no' | 'bf16' | 'fp16' (autocast on GPU only)
seed = 1337
_task_presets = False  # --task names the simulator; config/<task>.py holds BC recipes, not this script's keys
# every other ManipulationVLAConfig field is a key too: the stage-2 run keeps this checkpoint's architecture
from model import (ByteTokenizer, ManipulationVLA, ManipulationVLAConfig, config_defaults,  # noqa: E402
                   hf_from_pretrained, policy_info)
globals().update({k: v for k, v in config_defaults().items() if k not in globals()})
# -----------------------------------------------------------------------------
# VQA data from the simulator's state: each task module's questions (VQA, vqa_state, vqa_answers, vqa_image)


def task_frames(task, n_frames, seed):
    """-> n_frames of (image uint8 (S, S, 3), state float32): the task's expert runs from random starts (seeds
    seed, seed+1, ...) and we keep the module's VQA per_episode random steps of its first horizon: starts, motions in
    progress and finished states, so every answer occurs. gym-pusht draws every step anyway; the MuJoCo tasks step without
    images (~30x faster) and render only the kept frames, through the camera their observations use."""
    import envs
    module = envs.task_module(task)
    vqa = module.VQA[task]
    rng, out, ep = np.random.default_rng(seed), [], seed
    env, expert = envs.make_env(task, obs_type=vqa['obs_type']), envs.make_expert(task, seed=seed)
    while len(out) < n_frames:
        obs, _ = env.reset(seed=ep)
        expert.reset()
        keep = set(rng.choice(vqa['horizon'], vqa['per_episode'], replace=False).tolist())
        for t in range(max(keep) + 1):
            if t in keep:  # the frame the policy would see: the observation's camera at its size
                out.append((module.vqa_image(task, env, obs), module.vqa_state(task, env)))
            obs, _, done, truncated, _ = env.step(expert.get_action(env))
            if done and vqa['stop_at_success'] or truncated:  # PushT ends at success; the arms go on
                break
        ep += 1
    env.close()
    return out[:n_frames]


def record_vqa(task, n_frames, out_dir, seed=0):
    """Render n_frames and write their QA pairs as a LeRobot v3.0 dataset (format: see the top of this file)."""
    import dataset_writer
    import envs
    module = envs.task_module(task)
    names = module.VQA[task]['state_names']
    frames = task_frames(task, n_frames, seed)
    h, w = frames[0][0].shape[:2]
    features = {'observation.image': {'dtype': 'image', 'shape': (h, w, 3), 'names': ['height', 'width', 'channels']},
                'observation.environment_state': {'dtype': 'float32', 'shape': (len(names),), 'names': names}}
    writer = dataset_writer.LeRobotDatasetWriter(out_dir, fps=envs.TASKS[task]['fps'], features=features)
    for image, state in frames:
        for q, a in module.vqa_answers(task, state).items():
            writer.add_frame({'observation.image': image, 'observation.environment_state': state}, task=f'{q} {a}')
        writer.save_episode()
    writer.finalize()


def split_qa(text, prompt):
    """'question? answer' -> ('question?', 'answer'); a caption (a hub image-text dataset) answers `prompt`."""
    if '? ' not in text:
        return prompt, text
    q, a = text.split('? ', 1)
    return q + '?', a


# -----------------------------------------------------------------------------
# the LM on [image][question][answer]: tokens, loss, greedy decoding


def encode(tok, text):
    """text -> token ids, no special tokens (ByteTokenizer: byte + 1)."""
    if isinstance(tok, ByteTokenizer):
        return [b + 1 for b in text.encode('utf-8')]
    return tok(text, add_special_tokens=False)['input_ids']


def eos_id(tok):
    """The end-of-answer token: the LM's eos, or the newline byte for the byte tokenizer (which has no eos)."""
    return ord('\n') + 1 if isinstance(tok, ByteTokenizer) else tok.eos_token_id


def decode(tok, ids):
    """Token ids up to the first eos -> text."""
    ids = ids[:ids.index(eos_id(tok))] if eos_id(tok) in ids else ids
    if isinstance(tok, ByteTokenizer):
        return bytes(i - 1 for i in ids if 0 < i < 257).decode('utf-8', errors='replace').strip()
    return tok.decode(ids, skip_special_tokens=True).strip()


def text_batch(tok, questions, answers=None):
    """-> ids (B, L), attention mask (B, L), answer mask (B, L): which tokens the loss supervises (the answer
    and its eos). LEFT padded, so generated tokens append at the same column for every row."""
    rows = [encode(tok, q) for q in questions]
    sup = [[0] * len(r) for r in rows]
    if answers is not None:
        for r, s, a in zip(rows, sup, answers):
            ans = encode(tok, ' ' + a) + [eos_id(tok)]
            r += ans
            s += [1] * len(ans)
    L, pad = max(map(len, rows)), 0 if isinstance(tok, ByteTokenizer) else tok.pad_token_id
    ids = torch.tensor([[pad] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    answer = torch.tensor([[0] * (L - len(s)) + s for s in sup]).bool()
    return ids, mask, answer


def image_tokens(model, images):
    """uint8 frames (B, H, W, 3) -> (B, Ni, D) through the policy's own encoder + vision_proj
    (with n_obs_steps > 1 the still frame fills every history step)."""
    x = images.permute(0, 3, 1, 2)[:, None, None]  # (B, 1 step, 1 camera, 3, H, W)
    return model._image_tokens(x.expand(-1, model.config.n_obs_steps, -1, -1, -1, -1))


def lm_hidden(model, img, ids, mask):
    """[image tokens][text] -> last hidden states (B, Ni + L, D). Text padding sits between the two and is masked;
    positions count real tokens only, so a padded row computes exactly what it would alone."""
    txt = model.llm.get_input_embeddings()(ids)
    x = torch.cat([img, txt.to(img.dtype)], dim=1)
    m = torch.cat([mask.new_ones(img.shape[:2]), mask], dim=1)
    return model.llm(inputs_embeds=x, attention_mask=m, position_ids=(m.cumsum(-1) - 1).clamp(min=0)).last_hidden_state


def build_lm_head(model):
    """The LM head that turns hidden states into next-token logits; not part of the policy (or its checkpoint).
    None = tied to the input embeddings, logits = h E^T (Press & Wolf 2017): the offline tiny-qwen2 and hub LMs
    that tie them (Qwen2-0.5B). Otherwise the hub LM's own lm_head, frozen: stage 1 moves images to the words."""
    if model.config.vlm_backbone == 'tiny-qwen2' or model.llm.config.tie_word_embeddings:
        return None  # known from the loaded LM's config: no second copy of the LM is loaded
    from transformers import AutoModelForCausalLM
    from model import pretrained_source
    folder, gguf = pretrained_source(model.config.vlm_backbone)  # 'smollm2': the installed package's GGUF file
    lm = hf_from_pretrained(AutoModelForCausalLM, folder, dtype=torch.float32, **(dict(gguf_file=gguf) if gguf else {}))
    head = lm.get_output_embeddings()
    if head.weight is lm.get_input_embeddings().weight:
        return None
    return head.requires_grad_(False)


def lm_logits(model, lm_head, h):
    """(..., D) hidden states -> (..., V) next-token logits."""
    return lm_head(h) if lm_head is not None else h @ model.llm.get_input_embeddings().weight.T


def vqa_loss(model, lm_head, images, ids, mask, answer):
    """Next-token cross-entropy on the answer tokens only: image and question are context (LLaVA)."""
    img = image_tokens(model, images)
    h = lm_hidden(model, img, ids, mask)[:, img.shape[1] - 1:-1]  # (B, L, D): position p predicts token p + 1
    return F.cross_entropy(lm_logits(model, lm_head, h[answer]).float(), ids[answer])


@torch.no_grad()
def generate(model, lm_head, tok, images, questions, max_new_tokens):
    """Greedy decoding -> one answer string per question. No KV cache: answers are a few tokens long."""
    ids, mask, _ = text_batch(tok, questions)
    ids, mask = ids.to(images.device), mask.to(images.device)
    img, new = image_tokens(model, images), []
    for _ in range(max_new_tokens):
        nxt = lm_logits(model, lm_head, lm_hidden(model, img, ids, mask)[:, -1]).argmax(-1)  # (B,)
        new.append(nxt)
        ids, mask = torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, mask.new_ones(len(nxt), 1)], 1)
        if (torch.stack(new, 1) == eos_id(tok)).any(1).all():
            break
    return [decode(tok, row) for row in torch.stack(new, 1).tolist()]


def vqa_accuracy(model, lm_head, images, qas, batch_size, max_new_tokens, device):
    """Exact match of greedy answers against the simulator's truth: overall and per question."""
    model.eval()
    hits = {}
    for i in range(0, len(qas), batch_size):
        q, a = zip(*qas[i:i + batch_size])
        pred = generate(model, lm_head, model.tokenizer, torch.from_numpy(images[i:i + batch_size]).to(device),
                        list(q), max_new_tokens)
        for question, truth, p in zip(q, a, pred):
            hits.setdefault(question, []).append(p == truth)
    model.train()
    return dict(accuracy=float(np.mean(sum(hits.values(), []))), **{k: float(np.mean(v)) for k, v in hits.items()})


# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
import train_common  # noqa: E402
import data  # noqa: E402
import envs  # noqa: E402

if task not in envs.TASKS or task not in getattr(envs.task_module(task), 'VQA', {}):
    raise SystemExit(f"train_vlm.py --task={task}: no VQA generator for it; the tasks whose module asks questions "
                     f"(its VQA table): {[t for t in envs.TASKS if t in getattr(envs.task_module(t), 'VQA', {})]}")


def answers(state):
    """{question: answer} of one stored state, from the task's module."""
    return envs.task_module(task).vqa_answers(task, state)
out_dir = config['out_dir'] = out_dir or f'out/vlm_{task}'
if use_depth:
    raise SystemExit("use_depth=True: the VQA frames have no depth; stage 1 trains on RGB only")
if text_encoder:
    raise SystemExit(f"text_encoder={text_encoder!r}: stage 1 trains the backbone LM to answer in its own tokens, and a "
                     f"frozen text encoder gives one vector per instruction, not tokens; align a pretrained LM with "
                     f"--vlm_backbone=smollm2 (image tokens through it) and train BC with --text_encoder from scratch")
_, _, _, device = train_common.init_distributed(device)  # one process: stage 1 is short
device_type = device.split(':')[0]
torch.manual_seed(seed)
autocast = train_common.autocast(device_type, mixed_precision)
os.makedirs(out_dir, exist_ok=True)

# data: recorded once (aside, then renamed, like train_bc.py); held-out frames come from validation seeds
dataset_path = dataset or os.path.join('data', f'vqa_{task}_{vqa_frames}')
local = not dataset or not data.is_hub_id(dataset)  # the default folder is recorded here
if local:
    train_common.record_if_missing(dataset_path, lambda tmp: record_vqa(task, vqa_frames, tmp, seed=0),
                                   f"rendering {vqa_frames} VQA frames")
ds = data.LeRobotDataset(dataset_path, camera_keys=[image_key])  # a hub id downloads into the hub cache (data.py)
train_images = ds.frames[image_key]  # (N, H, W, 3) uint8
train_qas = [split_qa(ds.meta.tasks[int(i)], caption_prompt) for i in ds.columns['task_index']]
eval_frames_ = task_frames(task, eval_frames, envs.VAL_SEED)
eval_images = np.stack([f for f, s in eval_frames_ for _ in answers(s)])  # one row per question, like the data
eval_images = data.resize_images(torch.from_numpy(eval_images).permute(0, 3, 1, 2),  # to the dataset's frame size
                                 train_images.shape[1:3]).permute(0, 2, 3, 1).numpy()
eval_qas = [qa for _, s in eval_frames_ for qa in answers(s).items()]
majority = {q: Counter(a for q2, a in train_qas if q2 == q).most_common(1)[0][0] for q, _ in set(train_qas)}
baseline = float(np.mean([majority.get(q) == a for q, a in eval_qas]))  # the answer a blind model would give
print(f"dataset {dataset_path}: {len(train_qas)} QA rows from {ds.meta.total_episodes} frames; "
      f"{len(eval_qas)} held-out QA pairs (majority-answer baseline {baseline:.2f})")

# model: the policy's architecture, shaped for the task's BC data so train_bc.py --init_from takes it as is
spec = envs.TASKS[task]
h, w = train_images.shape[1:3]
model_fields = ManipulationVLAConfig.__dataclass_fields__
model_config = ManipulationVLAConfig(**{k: v for k, v in config.items() if k in model_fields},
                                     image_size=h, image_width=0 if h == w else w, num_cameras=1,
                                     proprioception_dim=spec['state_dim'], action_dim=spec['action_dim'])
model = ManipulationVLA(model_config).to(device)
lm_head = build_lm_head(model)
lm_head = lm_head.to(device) if lm_head is not None else None
print(f"LM head: {'tied to the input embeddings' if lm_head is None else f'the untied lm_head of {vlm_backbone}'}")
print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
      f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M trainable")
optimizer = train_common.adamw(model, learning_rate, weight_decay, betas, fused=device_type == 'cuda')
scaler = torch.amp.GradScaler(device_type, enabled=mixed_precision == 'fp16' and device_type == 'cuda')
log_path = os.path.join(out_dir, 'log.jsonl')
train_common.write_json(os.path.join(out_dir, 'train_config.json'), dict(config, dataset_path=dataset_path))


def save_training_state(step):
    """Commit what --resume needs (train_common.save_state): weights, optimizer, the batch sampler's state and
    the accuracy before training, so a resumed run draws the same batches and ends with the same weights."""
    tensors, param_groups = train_common.training_tensors(model, None, optimizer, device_type)
    train_common.save_state(out_dir, 'training_state', step, tensors,
                            dict(rng=rng.bit_generator.state, before=before, param_groups=param_groups,
                                 scaler=scaler.state_dict(), config=config))


def evaluate(step):
    """Held-out answer accuracy, logged and printed."""
    with autocast:
        m = vqa_accuracy(model, lm_head, eval_images, eval_qas, batch_size, max_answer_tokens, device)
    train_common.append_log(log_path, dict(iter=step, **m))
    print(f"iter {step}: held-out answer accuracy {m['accuracy']:.3f} " +
          ", ".join(f"{k[:-1]}: {v:.2f}" for k, v in m.items() if k != 'accuracy'))
    return m


# -----------------------------------------------------------------------------
# training loop: random batches of QA rows
rng = np.random.default_rng(seed)
start = 0
if resume:
    meta, tensors = train_common.load_state(out_dir, 'training_state')
    train_common.restore_training_tensors(tensors, meta['param_groups'], model, None, optimizer, device)
    scaler.load_state_dict(meta['scaler'])
    rng.bit_generator.state = meta['rng']
    before, start = meta['before'], meta['step']
    train_common.truncate_log(log_path, start)
    print(f"resumed from {out_dir} at iteration {start}")
else:
    open(log_path, 'w').close()
    before = evaluate(0)
t0 = time.time()
for it in range(start, max_iters):
    lr = train_common.cosine_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters or max_iters)
    for group in optimizer.param_groups:
        group['lr'] = lr
    idx = rng.integers(len(train_qas), size=batch_size)
    q, a = zip(*[train_qas[i] for i in idx])
    ids, mask, answer = (t.to(device) for t in text_batch(model.tokenizer, q, a))
    with autocast:
        loss = vqa_loss(model, lm_head, torch.from_numpy(train_images[idx]).to(device), ids, mask, answer)
    if not torch.isfinite(loss):
        raise SystemExit(f"loss is {loss.item()} at iteration {it}: lower --learning_rate (now {learning_rate})")
    scaler.scale(loss).backward()
    grad_norm = train_common.optimizer_step(optimizer, scaler, model.parameters(), max_grad_norm)
    step = it + 1
    if step % log_interval == 0 or step == max_iters:
        train_common.append_log(log_path, dict(iter=step, loss=loss.item(), lr=lr, grad_norm=grad_norm,
                                               time=time.time() - t0))
        print(f"iter {step}: loss {loss.item():.4f}, lr {lr:.2e}, {time.time() - t0:.0f}s")
    if eval_interval > 0 and step % eval_interval == 0 and step < max_iters:
        evaluate(step)
    if step % ckpt_interval == 0 or step == max_iters:
        save_training_state(step)
after = evaluate(max_iters)

# the one checkpoint format; policy marks it as stage 1 (train_bc.py --init_from then sets action statistics)
model.policy_info = policy_info([], stage='vlm', task=task, dataset=dataset_path, vqa_accuracy=after['accuracy'])
model.save_pretrained(out_dir)
train_common.write_json(os.path.join(out_dir, 'vqa_eval.json'),
                        dict(before=before, after=after, majority_baseline=baseline, eval_pairs=len(eval_qas)))
print(f"done: answer accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f} (majority baseline "
      f"{baseline:.2f}); checkpoint in {out_dir}; next: python train_bc.py --task={task} --init_from={out_dir}")
