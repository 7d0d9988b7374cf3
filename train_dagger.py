"""
DAgger: Dataset Aggregation (Ross, Gordon & Bagnell 2011, "A Reduction of Imitation Learning
and Structured Prediction to No-Regret Online Learning").

    python train_dagger.py --task=pusht --init_from=out/pusht
    python train_dagger.py --task=pusht --init_from=out/pusht --num_workers=2   # label in 2 processes
    python train_dagger.py --task=pusht --init_from=out/multitask   # one task of a train_multitask.py policy
    python train_dagger.py --task=pusht --init_from=out/pusht --expert_branch=8 --beta=1   # the learner drives

Behavior cloning trains only on states the expert visits; at test time the learner's small
errors take it to states nobody demonstrated, where its errors grow (compounding error,
O(T^2 eps) over a horizon T). DAgger fixes the distribution: roll out the learner, ask the
expert what it would have done in every state the learner visited, add those labels to the
dataset, retrain, repeat. Iteration i executes the mixture pi_i = beta_i expert + (1 - beta_i)
learner, with beta_i = beta * beta_decay^i, so early rollouts stay near the expert's states and later
ones are the learner's own (error then O(T eps)).

Who drives is drawn once per segment of the policy's n_action_steps (the actions it executes open loop),
and what is recorded is the expert's stretches, each as an episode of its own: each starts in a state the
learner led to, and holds the expert's own consecutive actions, so the chunk a policy learns from is one
plan. Ross et al. draw per step and label every visited state (--expert_segment=0); with action chunks that
fails here: the expert and the learner undo each other's moves, and the chunk of labels after a state
stitches together first steps of different plans (RESULTS.md measures both). --expert_branch=B keeps the
learner driving throughout and runs the expert B steps from copies of the learner's states instead: the labels
are then on the learner's own state distribution (what DAgger is for), each chunk still one plan.

Per step, a label costs one expert plan (the learner drives the expert off its plan at almost every
step; bench/bench_dagger_labels.py measures it); in segments the expert mostly follows its own plan.
Rollouts are labelled in worker processes (eval.label_rollouts), and the PushT expert reuses its
simulated pushes while the block has not moved.

Each iteration writes a LeRobot dataset out_dir/data_iter<i> (the previous one plus the new
labels: inspect or reuse it), retrains with train_bc.py (fine-tuning the last policy or from
scratch) into out_dir/iter<i>, and evaluates it on held-out seeds. A crash loses at most the
iteration in progress: --resume=True continues after the last finished one.
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from tqdm import tqdm

# -----------------------------------------------------------------------------
# default config values
task = 'pusht'
init_from = 'out/pusht'  # checkpoint of train_bc.py or train_multitask.py (its train_config.json: recipe and data)
out_dir = 'out/pusht_dagger'
dagger_iters = 4  # rounds of roll out -> label -> aggregate -> retrain
episodes_per_iter = 10  # learner rollouts labelled by the expert per round
beta = 0.5  # probability of executing the expert's action in round 0 (Ross et al. use 1.0 from scratch)
beta_decay = 0.5  # beta_i = beta * beta_decay**i
max_steps = 0  # rollout length, 0 = the task's step limit
retrain = 'finetune'  # 'finetune' (continue from the last policy) | 'scratch' (new model on all data)
train_iters = 2000  # train_bc.py iterations per round
train_args = ''  # extra train_bc.py arguments, e.g. '--batch_size=32 --learning_rate=1e-4'
eval_episodes = 50  # held-out test episodes evaluated after each round (0 = skip)
rollout_seed = 50_000  # rollout seeds are training seeds: [rollout_seed, ...) inside [0, VAL_SEED)
num_workers = 1  # processes that roll out and label in parallel (one torch thread each); the expert's
#                 re-planning at every learner-visited state is what a label costs
expert_segment = -1  # who drives is drawn every expert_segment steps, and only the expert's stretches are recorded,
#                      each its own episode, so a chunk of labels is one plan; -1 = the policy's n_action_steps (it
#                      commits to that many actions too); 0 = drawn per step, every visited state labelled (Ross et
#                      al.). Per step, expert and learner undo each other (PushT: 5% of such rollouts succeed) and a
#                      chunk stitches first steps of different plans (RESULTS.md). Compare budgets in labels.
expert_branch = 0  # > 0: the learner drives every step, and at each of its decision points (every n_action_steps),
#                    with probability beta, the expert plays this many steps from a COPY of the state (the task's
#                    copy_state: PushT), recorded as an episode: labels on the learner's own states, each
#                    chunk one plan; the learner's rollout is not disturbed. 0 = off (segments or per step, above)
expert_kw = {}  # options of the labelling expert (make_expert's keywords), e.g. "--expert_kw={'max_step': 15.0}"
seed = 1337
resume = False
_task_presets = False  # --task names the simulator; BC presets are in the init_from checkpoint
# -----------------------------------------------------------------------------
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------
import train_common  # noqa: E402
import data  # noqa: E402
import dataset_writer  # noqa: E402
import envs  # noqa: E402
import eval  # noqa: E402  (DAgger's labelled rollouts, beside the evaluation's rollouts)
from model import policy_task, read_json  # noqa: E402

if retrain not in ('finetune', 'scratch'):
    raise SystemExit(f"retrain must be 'finetune' or 'scratch', got {retrain!r}")
if not 0.0 <= beta <= 1.0 or not 0.0 <= beta_decay <= 1.0:
    raise SystemExit(f"beta={beta} and beta_decay={beta_decay} must be probabilities in [0, 1]")
stored = read_json(os.path.join(init_from, 'config.json')).get('policy', {})  # no weights loaded
if any('limits' in t for t in stored.get('tasks') or []):  # train_bc.py --dataset without --task
    raise SystemExit(f"{init_from} was trained on the dataset {stored['tasks'][0]['task']}, which has no simulator: "
                     f"DAgger needs one (the learner drives it and the task's scripted expert labels its states)")
try:
    k, entry = policy_task(stored, task, init_from)  # DAgger aggregates labels into that task's dataset
except ValueError as e:
    raise SystemExit(str(e)) from e
ckpt_tasks = [t['task'] for t in stored['tasks']]
multi = len(ckpt_tasks) > 1  # a train_multitask.py policy: retrain it on every task's data, one task's aggregated
instruction = entry['instruction']  # the policy's text for this task labels the new frames too
cfg_path = os.path.join(init_from, 'train_config.json')
if not os.path.exists(cfg_path):
    raise SystemExit(f"{cfg_path} not found: DAgger retrains with the recipe that trained the policy, so --init_from "
                     f"takes a checkpoint of train_bc.py or train_multitask.py, their best/, a DAgger round or "
                     f"train_gail.py --obs_mode=pixels (train one first: python train_bc.py --task={task})")
with open(cfg_path) as f:
    bc_config = json.load(f)
if (bc_config['tasks'] if multi else [bc_config['task']]) != ckpt_tasks:
    raise SystemExit(f"{cfg_path} does not match {init_from}/config.json's tasks {ckpt_tasks}: the folder was edited")
spec = envs.TASKS[task]
max_steps = max_steps or spec['max_steps']
segment = expert_segment if expert_segment >= 0 and not expert_branch else int(bc_config.get('n_action_steps', 1))
if expert_branch < 0:
    raise SystemExit(f"expert_branch={expert_branch}: the expert's steps per branch, >= 1 (0 = no branches)")
if expert_branch:
    try:
        eval.check_branches(task)  # before any data is copied
    except ValueError as e:
        raise SystemExit(str(e))
if rollout_seed + dagger_iters * episodes_per_iter > envs.VAL_SEED:
    raise SystemExit(f"rollout seeds must stay below envs.VAL_SEED={envs.VAL_SEED} (training seeds only)")
os.makedirs(out_dir, exist_ok=True)


def beta_at(i):
    """Probability of executing the expert's action in round i (the label is always the expert's)."""
    return beta * beta_decay ** i


def train_round(i, dataset_path, prev_ckpt):
    """Retrain in a subprocess with the script that trained the policy (train_bc.py, or train_multitask.py for a
    multi-task policy, whose other tasks keep their datasets) and its WHOLE configuration (written out as a config
    file; only data, output, length, seed and evaluation differ); -> this task's metrics of its eval.json."""
    round_dir = os.path.join(out_dir, f'iter{i}')
    os.makedirs(round_dir, exist_ok=True)
    derived = ('dataset_path', 'dataset_paths', 'num_frames')  # facts about the BC run's data, not settings
    bc_file = os.path.join(round_dir, 'bc_config.py')
    with open(bc_file, 'w') as f:
        f.write(f"# the configuration of the run that trained {init_from} (its train_config.json)\n")
        f.writelines(f"{key} = {v!r}\n" for key, v in bc_config.items() if key not in derived)
    here = os.path.dirname(os.path.abspath(__file__))
    if multi:
        paths = [dataset_path if j == k else p for j, p in enumerate(bc_config['dataset_paths'])]
        cmd = [sys.executable, os.path.join(here, 'train_multitask.py'), bc_file, f"--datasets={paths!r}",
               f"--eval_episodes={eval_episodes}"]
    else:
        cmd = [sys.executable, os.path.join(here, 'train_bc.py'), bc_file, f"--dataset={dataset_path}",
               f"--final_eval_episodes={eval_episodes}"]
    cmd += [f"--out_dir={round_dir}", f"--max_iters={train_iters}", "--resume=False", "--eval_interval=0",
            f"--seed={seed + i}", f"--init_from={prev_ckpt if retrain == 'finetune' else ''}"]
    cmd += train_args.split()
    print(' '.join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return round_dir, (task_metrics(round_dir) if eval_episodes > 0 else None)


def task_metrics(run_dir):
    """This task's held-out metrics from a run's eval.json ({} if it has none); train_multitask.py's holds one
    entry per task."""
    path = os.path.join(run_dir, 'eval.json')
    if not os.path.exists(path):
        return {}
    m = json.load(open(path))
    return m[task] if multi else m


# -----------------------------------------------------------------------------
# state: which rounds are done; the aggregated dataset of round i is data_iter<i>
state_path = os.path.join(out_dir, 'dagger_state.json')
state = dict(done=-1, ckpt=init_from, dataset=bc_config['dataset_paths'][k] if multi else bc_config['dataset_path'],
             history=[])
if resume:
    if not os.path.exists(state_path):
        raise SystemExit(f"--resume=True but {state_path} does not exist")
    state = json.load(open(state_path))
    print(f"resuming after round {state['done']}")
elif os.path.exists(state_path):
    raise SystemExit(f"{out_dir} already holds a DAgger run: pass --resume=True or a new --out_dir")
if state['done'] < 0:
    base = data.LeRobotDataset(state['dataset'], camera_keys=[])
    bc_metrics = task_metrics(init_from)  # the BC run's final held-out evaluation, if it ran
    state['history'].append(dict(round=-1, labels=base.meta.total_frames, ckpt=init_from, beta=None,
                                 test_success=bc_metrics.get('success_rate'),
                                 test_max_reward=bc_metrics.get('avg_max_reward')))
    print(f"start: {init_from} trained on {base.meta.total_frames} expert labels from {state['dataset']}")

t_start = time.time()
for i in range(state['done'] + 1, dagger_iters):
    beta_i = beta_at(i)
    # 1) copy the last aggregate, then append labelled learner rollouts (temp name, renamed when complete)
    new_path = os.path.join(out_dir, f'data_iter{i}')
    tmp_path = new_path + '.tmp'
    shutil.rmtree(tmp_path, ignore_errors=True)
    shutil.copytree(state['dataset'], tmp_path)
    meta = data.LeRobotDatasetMetadata(tmp_path)
    writer = dataset_writer.LeRobotDatasetWriter(tmp_path, fps=meta.fps, features=meta.features)
    first = rollout_seed + i * episodes_per_iter
    t0, eps = time.time(), []
    rollouts = eval.label_rollouts(task, state['ckpt'], range(first, first + episodes_per_iter), beta_i, max_steps,
                                   rng_seed=[seed, i], num_workers=num_workers, expert_kw=expert_kw,
                                   segment=segment, branch=expert_branch)
    for ep in tqdm(rollouts, total=episodes_per_iter, desc='dagger rollouts', leave=False):
        for frames, labels in ep.pop('episodes'):
            for frame, label in zip(frames, labels):
                writer.add_frame({**frame, 'action': label}, task=instruction)
            writer.save_episode()
        eps.append(ep)
    writer.finalize()
    label_seconds = time.time() - t0
    shutil.rmtree(new_path, ignore_errors=True)
    os.replace(tmp_path, new_path)
    labels = data.LeRobotDatasetMetadata(new_path).total_frames
    rollout_success = float(np.mean([e['success'] for e in eps]))
    new_labels = sum(e['labels'] for e in eps)
    driver = 'learner' if expert_branch else 'mixed-policy'
    print(f"round {i}: beta={beta_i:.3f}, {new_labels} new labels ({labels} total) in {label_seconds:.0f}s "
          f"({num_workers} worker{'s' if num_workers > 1 else ''}), {driver} rollout success {rollout_success:.2f}")
    # 2) retrain on the aggregate and evaluate on held-out seeds
    round_dir, metrics = train_round(i, new_path, state['ckpt'])
    test_success = metrics['success_rate'] if metrics else None
    test_max_reward = metrics['avg_max_reward'] if metrics else None
    state.update(done=i, ckpt=round_dir, dataset=new_path)
    state['history'].append(dict(round=i, labels=labels, ckpt=round_dir, beta=beta_i, rollout_success=rollout_success,
                                 expert_fraction=float(np.mean([e['expert_fraction'] for e in eps])),
                                 label_seconds=label_seconds, new_labels=new_labels, test_success=test_success,
                                 test_max_reward=test_max_reward, minutes=(time.time() - t_start) / 60))
    train_common.write_json(state_path, state)
    print(f"round {i}: test success {test_success} over {eval_episodes} held-out episodes")

print("\nlabels  test_success  test_max_reward  (round -1 = the BC policy we started from)")
for h in state['history']:
    print(f"{h['labels']:6d}  {h['test_success']}  {h.get('test_max_reward')}   round {h['round']}")
