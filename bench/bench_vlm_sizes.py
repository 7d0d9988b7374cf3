"""
Memory and step time per model size and training mode, for stage 1 (train_vlm.py's answer loss) and
stage 2 (train_bc.py's action loss). The hub-sized model is SigLIP-base (google/siglip-base-patch16-224)
+ Qwen2-0.5B (Qwen/Qwen2-0.5B-Instruct) built from those configs' dimensions with random weights and
saved to --cache (no download): the same classes and shapes, so the same FLOPs and bytes as the real
thing, loaded through the code path a user's hub id takes (from_pretrained on a folder).

    python bench/bench_vlm_sizes.py                                  # CPU, batch 2: one table (~10 min)
    python bench/bench_vlm_sizes.py --device=cuda --batch_size=16    # on a GPU
    python bench/bench_vlm_sizes.py --save=bench/vlm_sizes.json ; ... --compare=bench/vlm_sizes.json
    python bench/bench_vlm_sizes.py --sizes=default,text-minilm,text-smollm2,effnet-lite0 --stages=bc --batch_size=64

Sizes: default = the offline policy (CNN + 2-layer LM from scratch); text-minilm / text-smollm2 = the same with a
frozen pretrained text encoder (all-MiniLM-L6-v2 / SmolLM2-135M from their pip packages: one sentence vector per
instruction, cached, so its cost is outside the step); effnet-lite0 = the ImageNet EfficientNet-Lite0 as the image
encoder; smollm2 = SmolLM2-135M as the backbone itself (image tokens through the pretrained LM: the GPU path).

Modes: full = every weight trains (a text encoder is frozen in every mode); frozen-vision = the pretrained image tower
is frozen, the rest trains; projector = LLaVA's stage 1 (vision tower and LM frozen); lora = frozen
tower and LM with LoRA adapters (r=8) on the LM; lora+ckpt = the same with gradient checkpointing. Each row runs in a fresh process,
so its peak memory is its own: peak resident memory on the CPU (weights, optimizer state, activations and
the Python/torch runtime), torch's peak allocation on a GPU.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_common  # noqa: E402
from model import ByteTokenizer, ManipulationVLA, ManipulationVLAConfig, hf_from_pretrained  # noqa: E402

MODES = {'full': {}, 'frozen-vision': dict(freeze_vision=True), 'projector': dict(freeze_vision=True, freeze_llm=True),
         'lora': dict(freeze_vision=True, freeze_llm=True, use_lora=True),
         'lora+ckpt': dict(freeze_vision=True, freeze_llm=True, use_lora=True, gradient_checkpointing=True)}
SIZES = {'default': {}, 'text-minilm': dict(text_encoder='minilm'), 'text-smollm2': dict(text_encoder='smollm2'),
         'effnet-lite0': dict(vision_encoder='efficientnet-lite0'), 'smollm2': dict(vlm_backbone='smollm2'),
         'siglip-base+qwen2-0.5b': {}}  # (the last: folders made by hub_sized_folders)
SIZE_MODES = {'default': ['full'], 'text-minilm': ['full'], 'text-smollm2': ['full'],
              'effnet-lite0': ['full', 'frozen-vision']}  # the rest: every mode but frozen-vision
QUESTION, ANSWER = 'where is the block relative to the goal?', 'upper left'


def hub_sized_folders(cache):
    """Random-weight SigLIP-base and Qwen2-0.5B saved with save_pretrained (built once, ~2.5 GB)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig,
                              SiglipVisionModel)
    lm_dir, vision_dir = os.path.join(cache, 'qwen2-0.5b-sized'), os.path.join(cache, 'siglip-base-sized')
    if not os.path.exists(os.path.join(vision_dir, 'config.json')):
        SiglipVisionModel(SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                             num_attention_heads=12, image_size=224, patch_size=16)
                          ).save_pretrained(vision_dir)
    if not os.path.exists(os.path.join(lm_dir, 'config.json')):
        # Qwen2-0.5B's config.json: 24 layers of width 896, 14 query / 2 key-value heads, tied embeddings
        Qwen2ForCausalLM(Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                     num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                                     rope_theta=1e6, tie_word_embeddings=True)).save_pretrained(lm_dir)
        # a word-level tokenizer over the question's words stands in for Qwen's BPE (151k ids, not downloadable)
        tok = Tokenizer(models.WordLevel(unk_token='[UNK]'))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator([QUESTION + ' ' + ANSWER + ' push the T-shaped block onto the target'],
                                trainers.WordLevelTrainer(special_tokens=['[PAD]', '[UNK]', '<eos>']))
        PreTrainedTokenizerFast(tokenizer_object=tok, unk_token='[UNK]', eos_token='<eos>',
                                pad_token='[PAD]').save_pretrained(lm_dir)
    return vision_dir, lm_dir


def measure(size, mode, stage, args):
    """One row, in this process: -> dict(params, trainable, step_s, peak_gb)."""
    torch.manual_seed(0)
    fields = dict(action_head_type='mlp', image_size=96, proprioception_dim=2, action_dim=2, **MODES[mode], **SIZES[size])
    if size == 'siglip-base+qwen2-0.5b':
        fields['vision_encoder'], fields['vlm_backbone'] = hub_sized_folders(args.cache)
    model = ManipulationVLA(ManipulationVLAConfig(**fields)).to(args.device)
    dtype = {'fp32': None, 'bf16': torch.bfloat16}[args.dtype]
    autocast = torch.autocast(args.device.split(':')[0], dtype=dtype, enabled=dtype is not None)
    B = args.batch_size
    images = torch.randint(0, 256, (B, 96, 96, 3), dtype=torch.uint8, device=args.device)
    if stage == 'vlm':
        vlm = train_common.script_functions('train_vlm.py', np=np, torch=torch, F=F, ByteTokenizer=ByteTokenizer,
                                            hf_from_pretrained=hf_from_pretrained)  # its answer loss
        lm_head = vlm['build_lm_head'](model)
        lm_head = lm_head.to(args.device) if lm_head is not None else None
        ids, mask, answer = (t.to(args.device) for t in vlm['text_batch'](model.tokenizer, [QUESTION] * B, [ANSWER] * B))

        def loss_fn():
            return vlm['vqa_loss'](model, lm_head, images, ids, mask, answer)
    else:
        batch = dict(images=images.permute(0, 3, 1, 2)[:, None], proprio=torch.rand(B, 2, device=args.device),
                     instruction=['push the T-shaped block onto the target'] * B,
                     action=torch.rand(B, 16, 2, device=args.device),
                     action_is_pad=torch.zeros(B, 16, dtype=torch.bool, device=args.device))

        def loss_fn():
            return model(batch)['loss']
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-5)
    model.train()
    times = []
    for i in range(args.warmup + args.steps):
        if args.device.startswith('cuda'):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if args.device.startswith('cuda'):
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        if not torch.isfinite(loss):
            raise SystemExit(f"{size} {mode} {stage}: loss is {loss.item()}")
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith('cuda') else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    return dict(params=sum(p.numel() for p in model.parameters()), trainable=sum(p.numel() for p in trainable),
                step_s=float(np.median(times)), peak_gb=peak)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--sizes', default='default,siglip-base+qwen2-0.5b')
    p.add_argument('--modes', default=','.join(MODES))
    p.add_argument('--stages', default='vlm,bc')
    p.add_argument('--batch_size', type=int, default=2)
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--device', default='cpu')
    p.add_argument('--dtype', default='fp32', choices=['fp32', 'bf16'], help='bf16 = autocast (GPU)')
    p.add_argument('--cache', default=os.path.join(REPO, 'bench', '.cache'), help='where the hub-sized models go')
    p.add_argument('--save', default='')
    p.add_argument('--compare', default='')
    p.add_argument('--one', default='', help=argparse.SUPPRESS)  # size,mode,stage: measure one row, print JSON
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one.split(','), args)))
        return
    baseline = json.load(open(args.compare)) if args.compare else {}
    results = {}
    print(f"one optimizer step (forward, backward, AdamW), batch {args.batch_size}, {args.device}, {args.dtype}, "
          f"{torch.get_num_threads()} threads; peak = {'GPU allocation' if 'cuda' in args.device else 'resident memory'}")
    print(f"{'size':<24} {'mode':<13} {'stage':<6} {'params':>8} {'trainable':>10} {'s/step':>8} {'peak GiB':>9}"
          + (f" {'baseline s':>10} {'change':>8}" if baseline else ''))
    for size in args.sizes.split(','):
        for mode in args.modes.split(','):
            if mode not in SIZE_MODES.get(size, [m for m in MODES if m != 'frozen-vision']):
                continue  # e.g. the offline default is random: all of it trains
            for stage in args.stages.split(','):
                key = f'{size}/{mode}/{stage}'
                argv = [sys.executable, os.path.abspath(__file__), f'--one={size},{mode},{stage}'] + \
                    [a for a in sys.argv[1:] if not a.startswith(('--save', '--compare'))]
                r = subprocess.run(argv, capture_output=True, text=True)
                if r.returncode != 0:
                    raise SystemExit(f"{key} failed:\n{r.stderr[-3000:]}")
                row = results[key] = json.loads(r.stdout.strip().splitlines()[-1])
                line = (f"{size:<24} {mode:<13} {stage:<6} {row['params'] / 1e6:>7.1f}M {row['trainable'] / 1e6:>9.2f}M "
                        f"{row['step_s']:>8.3f} {row['peak_gb']:>9.2f}")
                if key in baseline:
                    line += f" {baseline[key]['step_s']:>10.3f} {100 * (row['step_s'] / baseline[key]['step_s'] - 1):>+7.1f}%"
                print(line, flush=True)
    if args.save:
        json.dump(results, open(args.save, 'w'), indent=2)


if __name__ == '__main__':
    main()
