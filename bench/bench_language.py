"""
Does the policy follow language it was not trained on? PushT scenes in which only the words tell the task: the
pusher must go to one of four sides of the block (left, right, top, bottom of the image), and a scripted controller
drives it straight there (the action is that point). Each training episode is conditioned on one instruction drawn
from templates ("move the pusher to the left of the block", ...); train_bc.py learns all four sides from ONE dataset
with one set of statistics. Then the policy is driven in the simulator, on held-out seeds, by:
  - training instructions,
  - validation paraphrases (to choose a recipe: text encoder, its settings) and held-out TEST paraphrases, which no
    training instruction contains: new sentences, half of them naming the side with words the templates never use
    (west, east, above, below, ...),
  - instructions of no side (another task's, an unrelated sentence, an empty one): reported, with how close each is
    to the trained instructions (policy.instruction_check: all-MiniLM-L6-v2's cosine).
Each episode ends at the side its pusher is nearest (within NEAR px) or 'none'.

    python bench/bench_language.py --out=out/lang/scratch                                   # byte-level LM from scratch
    python bench/bench_language.py --out=out/lang/minilm --train_args="--text_encoder=minilm"
    python bench/bench_language.py --out=out/lang/smollm2 --train_args="--text_encoder=smollm2"
    python bench/bench_language.py --out=out/lang/smollm2_dial --augment=20 --train_args="--text_encoder=smollm2"
    python bench/bench_language.py --out=out/lang/smollm2_side --text_prompt=side --train_args="--text_encoder=smollm2"

--augment=N is instruction augmentation (DIAL, Xiao et al. 2023): SmolLM2-135M-Instruct rewrites each training
instruction N ways (few-shot prompt, sampled), all-MiniLM-L6-v2 keeps a rewrite only if it is nearer its source's side
than the source template's other three sides (the rewrites of a 135M LM flip left and right often), and no rewrite
that contains a validation or test paraphrase, or is contained in one, is kept. Each episode then takes its
instruction from that larger pool.

The dataset is recorded once into --data (shared by the runs). Prints one table (instruction, kind, the share of
episodes at each side, cosine to the nearest trained instruction) and the summary line, and writes
<out>/language.json.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import envs  # noqa: E402
import pusht  # noqa: E402

SIDES = {'left': (-1, 0), 'right': (1, 0), 'top': (0, -1), 'bottom': (0, 1)}  # image axes: y grows downward
TEMPLATES = ["move the pusher to the {} of the block", "go to the {} side of the T",
             "put the pusher on the block's {} side", "the pusher should end up on the {} of the block",
             "drive to the {} of the T-shaped block", "bring the pusher to the {} of the block"]
VAL_PARAPHRASES = {  # chose the recipe (never in training)
    "head west of the block": 'left', "position the pusher at the block's left-hand side": 'left',
    "go east of the T": 'right', "I want the pusher on the right-hand side of the block": 'right',
    "move above the block": 'top', "go up past the block": 'top',
    "get below the T": 'bottom', "go beneath the block": 'bottom'}
TEST_PARAPHRASES = {  # reported; never in training, not used to choose anything
    "steer the pusher so it sits left of the T": 'left', "wait on the western side of the block": 'left',
    "the block's left flank is where you should be": 'left',
    "steer the pusher so it sits right of the T": 'right', "wait on the eastern side of the block": 'right',
    "the block's right flank is where you should be": 'right',
    "park the pusher just over the block": 'top', "wait on the upper side of the T": 'top',
    "the space above the block is your destination": 'top',
    "park the pusher just under the block": 'bottom', "wait on the lower side of the T": 'bottom',
    "the space beneath the block is your destination": 'bottom'}
NO_SIDE = ["pick up the red cube and lift it", "push the T-shaped block onto the T-shaped target",
           "the weather is lovely today", ""]
REWRITES = 'instruction_rewrites.json'
# --text_prompt=side: SmolLM2's sentence prompt asks the question the task turns on, with four TRAINING instructions
# answered in context (one per side, each from another template); the vector is the state from which the LM would
# write its answer. Few-shot prompting (Brown et al. 2020) applied to PromptEOL's last-state vectors (Jiang et al. 2023)
SIDE_PROMPT = ("Which side of the block does each instruction name: left, right, top or bottom?\n\n"
               + "".join(f"Instruction: {TEMPLATES[k].format(side)}\nSide: {side}\n\n"
                         for k, side in [(0, 'left'), (1, 'bottom'), (2, 'right'), (3, 'top')])
               + "Instruction: {}\nSide:")
OFFSET, STEPS, NEAR = 110.0, 25, 50.0  # goal = block origin + 110 px toward the side; 25 steps; 'at' = within 50 px


def goals(env):
    """-> {side: xy}: beside the block's origin, inside the 512 x 512 table."""
    block = pusht.get_state(env)[4:6]
    return {side: np.clip(block + OFFSET * np.array(d), 20, 492).astype(np.float32) for side, d in SIDES.items()}


def training_instructions():
    return [(t.format(side), side) for side in SIDES for t in TEMPLATES]


FEW_SHOT = [("put the cup on the shelf", "place the cup onto the shelf"),  # other tasks' words: no side is shown
            ("open the top drawer", "pull the upper drawer open"),
            ("move the sponge to the front of the sink", "slide the sponge toward the sink's front"),
            ("pick up the apple", "grab the apple and lift it")]


def augment_instructions(per_instruction, seed=0):
    """-> [(text, side)]: `per_instruction` distinct rewrites of each training instruction by SmolLM2-135M-Instruct
    (the installed package's weights), filtered. DIAL (Xiao et al. 2023) relabels demonstrations with a pretrained
    model's words, so that the policy learns the meaning shared by many phrasings rather than 24 fixed strings."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from model import pretrained_source, sentence_encoder
    from tqdm import tqdm
    folder, gguf = pretrained_source('smollm2')
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
    minilm = sentence_encoder('minilm')
    held_out = {t.lower() for t in [*VAL_PARAPHRASES, *TEST_PARAPHRASES]}
    seen = {t for t, _ in training_instructions()}
    pool, tried = [], 0
    torch.manual_seed(seed)
    for template in tqdm(TEMPLATES, desc='SmolLM2 rewrites instructions'):
        variants = [template.format(s) for s in SIDES]
        for side, src in zip(SIDES, variants):
            prompt = ("Each robot instruction is rewritten in other words with the same meaning.\n\n"
                      + "".join(f"Instruction: {a}\nRewritten: {b}\n\n" for a, b in FEW_SHOT)
                      + f"Instruction: {src}\nRewritten:")
            ids = tok(prompt, return_tensors='pt')
            kept = []
            for _ in range(8):  # rounds of 16 samples until enough are kept
                with torch.no_grad():
                    out = lm.generate(**ids, do_sample=True, temperature=0.8, top_p=0.95, max_new_tokens=24,
                                      num_return_sequences=16, pad_token_id=tok.eos_token_id)
                texts = {tok.decode(o[ids['input_ids'].shape[1]:], skip_special_tokens=True).split('\n')[0].strip()
                         for o in out}
                texts = [t for t in texts if 2 <= len(t.split()) <= 16 and t not in seen
                         and not any(h in t.lower() or t.lower() in h for h in held_out)]  # none contains another
                tried += len(texts)
                if texts:  # MiniLM's nearest of the four side variants of the source must be the source's side
                    near = (minilm(texts) @ minilm(variants).T).argmax(1).tolist()
                    for t, k in zip(texts, near):
                        if list(SIDES)[k] == side and len(kept) < per_instruction:
                            kept.append(t)
                            seen.add(t)
                if len(kept) == per_instruction:
                    break
            pool += [(t, side) for t in kept]
    print(f"instruction augmentation: kept {len(pool)} rewrites of {tried} new distinct samples")
    return pool


def record(root, episodes, pool=None):
    """Episode i on training seed i goes to side i % 4 under a template drawn at random for it (or, with `pool`,
    an instruction of that side drawn from the templates and their rewrites); the action is the goal (a position
    target for the pusher's PD controller)."""
    import dataset_writer
    features = {'observation.image': {'dtype': 'image', 'shape': [96, 96, 3], 'names': ['height', 'width', 'channels']},
                'observation.state': {'dtype': 'float32', 'shape': [2], 'names': ['x', 'y']},
                'action': {'dtype': 'float32', 'shape': [2], 'names': ['x', 'y']}}
    writer = dataset_writer.LeRobotDatasetWriter(root + '.tmp', fps=10, features=features)
    rng = np.random.default_rng(0)
    env = envs.make_env('pusht')
    for seed in range(episodes):
        side = list(SIDES)[seed % 4]
        if pool is None:
            text = TEMPLATES[rng.integers(len(TEMPLATES))].format(side)
        else:
            texts = [t for t, s in [*training_instructions(), *pool] if s == side]
            text = texts[rng.integers(len(texts))]
        obs, _ = env.reset(seed=seed)
        goal = goals(env)[side]
        for _ in range(STEPS):
            writer.add_frame({**envs.obs_to_frame('pusht', obs), 'action': goal}, task=text)
            obs, *_ = env.step(goal)
        writer.save_episode()
    env.close()
    writer.finalize()
    if pool:  # the rewrites, beside the dataset they label (inside it before it appears: both or neither)
        with open(os.path.join(root + '.tmp', 'meta', REWRITES), 'w') as f:
            json.dump([dict(text=t, side=side) for t, side in pool], f, indent=1)
    os.replace(root + '.tmp', root)


def outcome(policy, env, seed):
    """Drive the simulator with the policy for STEPS steps -> the side it ends at, or 'none'."""
    obs, _ = env.reset(seed=seed)
    g = goals(env)
    policy.reset()
    for _ in range(STEPS):
        obs, *_ = env.step(np.asarray(policy(envs.obs_to_frame('pusht', obs)), np.float32))
    dist = {side: float(np.hypot(*(obs['agent_pos'] - xy))) for side, xy in g.items()}
    side = min(dist, key=dist.get)
    return side if dist[side] < NEAR else 'none'


def main():
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--out', default='out/lang/scratch')
    p.add_argument('--data', default='data/language_pusht', help='the recorded dataset (recorded if missing)')
    p.add_argument('--episodes', type=int, default=1600, help='training episodes (a quarter per side)')
    p.add_argument('--iters', type=int, default=12000, help='training iterations (12000: the best on validation; RESULTS.md)')
    p.add_argument('--augment', type=int, default=0, help='SmolLM2 rewrites per training instruction (0: none)')
    p.add_argument('--text_prompt', default='', choices=['', 'side'],
                   help="'side': train with --text_prompt=SIDE_PROMPT (needs a causal --text_encoder in --train_args)")
    p.add_argument('--train_args', default='', help='more train_bc.py flags, e.g. "--text_encoder=minilm"')
    p.add_argument('--seeds', type=int, default=10, help='held-out test seeds per instruction')
    p.add_argument('--sets', default='trained,val,test,no_side', help='which instruction sets to evaluate')
    args = p.parse_args()
    info = os.path.join(args.data, 'meta', 'info.json')
    if not os.path.exists(info):
        t0 = time.time()
        pool = augment_instructions(args.augment) if args.augment else None
        record(args.data, args.episodes, pool)
        print(f"recorded {args.episodes} episodes into {args.data} in {time.time() - t0:.0f} s")
    elif json.load(open(info))['total_episodes'] != args.episodes:
        raise SystemExit(f"{args.data} holds {json.load(open(info))['total_episodes']} episodes, not --episodes="
                         f"{args.episodes}: pass --data=<another folder> to record them, or --episodes to match")
    elif os.path.exists(os.path.join(args.data, 'meta', REWRITES)) != bool(args.augment):
        raise SystemExit(f"{args.data} was recorded {'with' if args.augment == 0 else 'without'} instruction "
                         f"augmentation, unlike --augment={args.augment}: pass --data=<another folder>")
    ckpt = os.path.join(args.out, 'policy')
    if not os.path.exists(os.path.join(ckpt, 'model.safetensors')):
        subprocess.run([sys.executable, os.path.join(REPO, 'train_bc.py'), '--task=pusht', f'--dataset={args.data}',
                        f'--out_dir={ckpt}', f'--max_iters={args.iters}', '--eval_interval=0',
                        '--final_eval_episodes=0', *shlex.split(args.train_args),
                        *([f'--text_prompt={SIDE_PROMPT}'] if args.text_prompt == 'side' else [])], check=True, cwd=REPO)
    import deploy
    from policy import VLAPolicy, instruction_check
    from model import ManipulationVLA
    model = ManipulationVLA.from_pretrained(ckpt).eval()
    trained = model.policy_info['tasks'][0]['instructions']
    sets = {'trained': [(t, 'trained', side) for t, side in training_instructions()],
            'val': [(t, 'val paraphrase', side) for t, side in VAL_PARAPHRASES.items()],
            'test': [(t, 'test paraphrase', side) for t, side in TEST_PARAPHRASES.items()],
            'no_side': [(t, 'no side', None) for t in NO_SIDE]}
    rows = [r for name in args.sets.split(',') for r in sets[name]]
    seeds = range(envs.TEST_SEED, envs.TEST_SEED + args.seeds)
    env, results = envs.make_env('pusht'), []
    print(f"{'instruction':>52} {'kind':>15} {'asks':>6} " + ' '.join(f'{s:>6}' for s in [*SIDES, 'none']) + '  cosine')
    for text, kind, asks in rows:
        ends = [outcome(VLAPolicy(model, text, n_action_steps=8), env, s) for s in seeds]
        shares = {k: ends.count(k) / len(ends) for k in [*SIDES, 'none']}
        check = instruction_check(model, text, trained, min_cosine=deploy.min_instruction_cosine)
        cos = check['cosine']
        results.append(dict(instruction=text, kind=kind, asks=asks, nearest_trained=check['nearest_trained'],
                            cosine=cos, familiar=check['familiar'], **shares))
        print(f"{text[:50]!r:>52} {kind:>15} {asks or '-':>6} " + ' '.join(f'{shares[k]:>6.2f}' for k in shares)
              + (f'  {cos:.3f}' if cos is not None else '  -'), flush=True)
    env.close()
    path = os.path.join(args.out, 'language.json')  # rows of earlier calls with other --sets are kept
    if os.path.exists(path):
        done = {(r['instruction'], r['kind']) for r in results}
        results = [r for r in json.load(open(path))['rows'] if (r['instruction'], r['kind']) not in done] + results
    summary = {kind: float(np.mean([r[r['asks']] for r in results if r['kind'] == kind]))
               for kind in ('trained', 'val paraphrase', 'test paraphrase') if any(r['kind'] == kind for r in results)}
    for kind, hit in summary.items():
        print(f"{kind}: ends at the asked side in {hit:.3f} of episodes")
    if 'trained' in summary and 'test paraphrase' in summary:
        print(f"test paraphrases / trained = {summary['test paraphrase'] / max(summary['trained'], 1e-9):.2f}")
    with open(path, 'w') as f:
        json.dump(dict(args=vars(args), summary=summary, rows=results), f, indent=1)


if __name__ == '__main__':
    main()
