"""
A pretrained-size policy in deploy.py's real control loop on this CPU (issue 39 item 5): SigLIP-base + Qwen2-0.5B
sized (random weights, built as bench_vlm_sizes.py builds them: ~1.5 s per inference on 2 cores) with a flow head,
driving the PushT simulator at its 10 Hz through the safety shield, synchronously (the robot waits while the policy
thinks) and asynchronously (deploy.py --async_inference: the next chunk is computed in a thread while the current
one executes). Random weights make the motion meaningless; what is measured is time: missed deadlines, the chunk
delay (steps from an observation to the use of its chunk) and the steps left without an action.

    python bench/bench_async_deploy.py                        # prints one table (~3 min, builds ~2.5 GB once)
    python bench/bench_async_deploy.py --save=bench/async_deploy.json ; ... --compare=bench/async_deploy.json
"""
import argparse
import json
import os
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, 'bench'))
import envs  # noqa: E402
from bench_vlm_sizes import hub_sized_folders  # noqa: E402
from deploy import SafetyShield, control_loop  # noqa: E402
from model import ManipulationVLA, ManipulationVLAConfig  # noqa: E402
from policy import VLAPolicy  # noqa: E402

STATS = {'observation.state': {'mean': [256.0] * 2, 'std': [100.0] * 2},
         'action': {'min': [0.0] * 2, 'max': [512.0] * 2}}
# (name, threaded, join, chunk, executed steps): a 1.5 s inference is 15 steps at 10 Hz, so asynchronous execution
# needs chunks that last past it: 16 steps (the PushT presets' chunk) starve, 32 with 16 executed do not
ROWS = [('sync, chunk 16 / 8', False, 'switch', 16, 8), ('async switch, chunk 16 / 8', True, 'switch', 16, 8),
        ('async switch, chunk 32 / 16', True, 'switch', 32, 16), ('async rtc, chunk 32 / 16', True, 'rtc', 32, 16)]


def build(vision_dir, lm_dir, chunk):
    torch.manual_seed(0)
    model = ManipulationVLA(ManipulationVLAConfig(
        image_size=96, proprioception_dim=2, action_dim=2, action_head_type='flow', action_chunk_size=chunk,
        vision_encoder=vision_dir, vlm_backbone=lm_dir)).eval()
    model.set_normalization_stats(STATS)
    return model


def run(model, threaded, join, n_action_steps, steps, rate):
    instruction = envs.TASKS['pusht']['instruction']
    policy = VLAPolicy(model, instruction, n_action_steps, chunk_join=join, threaded=threaded)
    robot = envs.SimRobot('pusht', envs.TEST_SEED, max_steps=steps)
    spec = envs.TASKS['pusht']
    shield = SafetyShield(2, spec['max_step_change'], workspace_bounds=(spec['action_low'], spec['action_high']),
                          watchdog_timeout=0)  # no watchdog: a synchronous loop's stale frames are the point
    t0 = time.perf_counter()
    try:
        r = control_loop(policy, robot, shield, rate, steps)
    finally:
        robot.close()
    r.update(wall_s=time.perf_counter() - t0, held=shield.counts['invalid'])
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--steps', type=int, default=60, help='control steps per row (6 s of robot time at 10 Hz)')
    p.add_argument('--rate', type=float, default=10.0)
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--cache', default=os.path.join(REPO, 'out', 'bench_vlm_sizes'))
    p.add_argument('--save', default='')
    p.add_argument('--compare', default='')
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    vision_dir, lm_dir = hub_sized_folders(args.cache)
    models, results = {}, {}
    for name, threaded, join, chunk, n in ROWS:
        if chunk not in models:
            models[chunk] = build(vision_dir, lm_dir, chunk)
        results[name] = run(models[chunk], threaded, join, n, args.steps, args.rate)
        print(f"{name}: {results[name]}", flush=True)
    base = json.load(open(args.compare)) if args.compare else {}
    print(f"\nSigLIP-base + Qwen2-0.5B sized, flow head, PushT at {args.rate:g} Hz, {args.steps} steps per row, "
          f"{args.threads} torch threads")
    print("| loop | wall s | missed deadlines | step latency p50 / p99 ms | chunk delay mean / max (steps) "
          "| steps without an action (held) |" + (" missed (baseline) |" if base else ""))
    print("| --- | --- | --- | --- | --- | --- |" + (" --- |" if base else ""))
    for name, r in results.items():
        print(f"| {name} | {r['wall_s']:.1f} | {r['missed_deadlines']} / {r['steps']} | {r['p50_ms']:.0f} / "
              f"{r['p99_ms']:.0f} | {r['mean_chunk_delay']:.1f} / {r['max_chunk_delay']} | {r['starved_steps']} |"
              + (f" {base[name]['missed_deadlines']} |" if name in base else ""))
    if args.save:
        with open(args.save, 'w') as f:
            json.dump(results, f, indent=2)


if __name__ == '__main__':
    main()
