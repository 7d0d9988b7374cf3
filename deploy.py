"""
Deployment: run a trained policy on a robot at a fixed rate behind a safety shield, or export it to one file.

    python deploy.py run --policy=out/pusht --robot=sim --rate=10 --episodes=10       # a checkpoint folder
    python deploy.py export --ckpt=out/pusht --out=out/pusht/policy.pt                 # TorchScript
    python deploy.py export --ckpt=out/pusht --out=out/pusht/policy.pt2 --format=export # torch.export

`run` loads a checkpoint folder: model.safetensors + JSON, weights only, run with this repository's
model code, so a policy file from anywhere cannot execute anything. An exported .pt/.pt2 is a
program (TorchScript, or a pickle inside torch.export's archive): loading one can run arbitrary code,
so `run` refuses it unless --trust_exported_code=True, which is for files you exported yourself.

The exported file maps (images uint8 (1, [n_obs,] cams, 3, H, W), proprioception (1, [n_obs,] P)) to RAW
actions (1, chunk, A): the instruction's language features are computed once at export and stored as
buffers, the normalization statistics are the model's buffers, so nothing else is needed to run
it: `torch.jit.load(path)` (or `torch.export.load(path).module()`) without this repository.
A Hugging Face backbone cannot be scripted (dynamic Python inside), so we TRACE the per-step
function ManipulationVLA.act for batch 1: the traced graph is exactly the ops one step runs.

The control loop: observe -> policy (policy.VLAPolicy: action chunks through a queue, ACT temporal ensembling)
-> SafetyShield -> robot, paced to a fixed rate, with latency and missed-deadline statistics.
With --async_inference the policy computes its next chunk in a thread while the robot executes the current one
(the robot never waits for a slow model), and --chunk_join says how the two chunks meet:

    python deploy.py run --policy=out/pusht_flow --async_inference=True --chunk_join=rtc     # real-time chunking
    python deploy.py run --policy=out/pusht_flow --inference_delay=4 --chunk_join=switch     # a simulated 4-step delay

This file imports no simulator unless --robot=sim: a robot computer needs torch, numpy and the repo.
"""
import json
import logging
import os
import sys
import time
import warnings
from collections import deque

import numpy as np
import torch

import tasks
from policy import VLAPolicy, describe_instruction, load_policy  # the execution logic eval.py runs too

# -----------------------------------------------------------------------------
# config (python deploy.py <export|run> --key=value)
ckpt = ''  # export: checkpoint folder written by a train_*.py script (out_dir or its best/)
out = ''  # export: output file ('' = <ckpt>/policy.pt or policy.pt2)
format = 'torchscript'  # export: 'torchscript' (.pt, torch.jit.load) | 'export' (.pt2, torch.export.load)
policy = ''  # run: a checkpoint folder (weights + JSON, run with this repo's model code), or an exported file
trust_exported_code = False  # run: an exported .pt/.pt2 is a PROGRAM (TorchScript / pickle): loading one can run
#                              arbitrary code. True runs it; only for files you exported yourself and kept safe
robot = 'sim'  # run: 'sim' (the task's simulator) | 'ros2' (a robot behind ROS 2 topics: ros2.py)
ros_namespace = '/nanovla'  # robot=ros2: the namespace of its topics (ros2.py lists them)
ros_remap = ''  # robot=ros2: ROS remapping rules 'from:=to,...', e.g. 'joint_states:=/arm/joint_states'
ros_reliability = 'reliable'  # robot=ros2: QoS of the camera, state and command topics | 'best_effort'
ros_qos_depth = 1  # robot=ros2: QoS history depth (1: only the newest message matters to a controller)
task = ''  # export/run: which task of a multi-task checkpoint ('' = its only task; run: the exported file's)
instruction = ''  # run: '' = the stored one; other words need a checkpoint folder (an exported file bakes its text in)
min_instruction_cosine = 0.4  # run: refuse an instruction farther than this from every trained one (instruction_check;
#                              on the language benchmark paraphrases scored 0.44-0.94, unrelated text 0.08-0.32)
rate = 10.0  # control rate in Hz (PushT's simulator runs at 10 Hz); 0 = as fast as possible
episodes = 1
start_seed = 200_000  # held-out seeds, the same as eval.py's test seeds
max_steps = 0  # 0 = the task's step limit
n_action_steps = 0  # 0 = the value stored at export
temporal_ensemble_coeff = -1.0  # < 0 = the value stored at export
chunk_join = ''  # how the next chunk joins the executing one: 'switch' | 'ensemble' | 'blend' | 'rtc' ('' = as trained)
async_inference = False  # run the policy in a thread beside the loop: the robot keeps moving while it thinks
inference_delay = 0  # a new chunk is used no earlier than this many steps after its observation (simulated latency)
rtc_max_weight = 5.0  # real-time chunking's guidance clip beta (Black et al. 2025 use 5)
max_step_change = 0.0  # shield: max change of the command per control step (raw units; 0 = the task's, tasks.py)
watchdog_timeout = 1.0  # shield: seconds after which an observation counts as stale
threads = 1  # torch threads: batch 1 gains little from more, and they stall when another process shares the CPU
_task_presets = False  # --task names the simulator here, it does not load config/<task>.py
# -----------------------------------------------------------------------------
log = logging.getLogger('nanovla.deploy')
META_FILE = 'nanovla.json'  # metadata stored inside the exported file


# -----------------------------------------------------------------------------
# export


class StepPolicy(torch.nn.Module):
    """The per-step function of a ManipulationVLA with its instruction (and, multi-task, its task) baked in:
    (images, proprio) -> raw action chunk of the task's own action dims. Text features are buffers."""

    def __init__(self, model, instruction, task_index=0):
        super().__init__()
        self.model, self.task_index = model, task_index
        self.action_dim = int(model.task_action_dim[task_index])
        with torch.no_grad():
            text = model.encode_instruction([instruction])
        self.register_buffer('text_embeds', text['text_embeds'].detach().clone())
        self.register_buffer('text_mask', text['text_mask'].detach().clone())

    def forward(self, images, proprio):
        ti = self.task_index if self.model.config.num_tasks > 1 else None
        return self.model.act(images, proprio, self.text_embeds, self.text_mask, task_index=ti)[..., :self.action_dim]


def example_inputs(model, state_dim=None):
    """Batch-1 inputs with the shapes the model was built for (uint8 images, float proprio of the task's
    state_dim: a multi-task model pads shorter states itself)."""
    c = model.config
    steps = (c.n_obs_steps,) if c.n_obs_steps > 1 else ()  # history: (1, n_obs, cams, 3, H, W), (1, n_obs, P)
    images = torch.randint(0, 256, (1, *steps, c.num_cameras, 3, *c.image_hw), dtype=torch.uint8)
    return images, torch.rand(1, *steps, state_dim or c.proprioception_dim) * 100


def export_policy(model, instruction, path, metadata, fmt='torchscript', task_index=0):
    """Trace (TorchScript) or torch.export the model's step function and write it atomically."""
    if fmt not in ('torchscript', 'export'):
        raise ValueError(f"format must be 'torchscript' or 'export', got {fmt!r}")
    if model.config.use_depth:
        raise NotImplementedError("export of depth models is not implemented: the step function takes images + proprio")
    step = StepPolicy(model.eval(), instruction, task_index).eval()
    inputs = example_inputs(model, metadata.get('proprioception_dim'))
    extra = {META_FILE: json.dumps(metadata)}
    tmp = path + '.tmp'
    with torch.no_grad():
        if fmt == 'torchscript':
            with warnings.catch_warnings():  # tracer warnings about Python control flow are expected: the
                warnings.simplefilter('ignore', torch.jit.TracerWarning)  # batch-1 graph is fixed by design
                module = torch.jit.trace(step, inputs, check_trace=False)
            torch.jit.save(module, tmp, _extra_files=extra)
        else:
            program = torch.export.export(step, inputs, strict=False)
            torch.export.save(program, tmp, extra_files=extra)
    os.replace(tmp, path)
    return path


def load_exported(path):
    """-> (callable module, metadata dict). Needs torch only (the repo's model code is not used)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: write it with `python deploy.py export --ckpt=<train_bc out_dir>`")
    extra = {META_FILE: ''}
    if path.endswith('.pt2'):
        module = torch.export.load(path, extra_files=extra).module()
    else:
        module = torch.jit.load(path, map_location='cpu', _extra_files=extra)
    if not extra[META_FILE]:
        raise ValueError(f"{path} has no {META_FILE}: it was not written by deploy.py export")
    return module, json.loads(extra[META_FILE])


def export_main():
    """python deploy.py export --ckpt=DIR [--out=FILE] [--format=torchscript|export]"""
    from model import ManipulationVLA, policy_task
    if not ckpt or not os.path.exists(os.path.join(ckpt, 'config.json')):
        raise SystemExit(f"--ckpt={ckpt!r} is not a checkpoint folder (no config.json): "
                         f"pass the out_dir of a train_*.py script, e.g. --ckpt=out/pusht")
    model = ManipulationVLA.from_pretrained(ckpt).eval()
    try:
        i, tc = policy_task(model.policy_info, task, ckpt)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    info = model.policy_info
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise SystemExit(f"refusing to export {ckpt}: non-finite (NaN/inf) values in {bad[:5]}"
                         f"{' ...' if len(bad) > 5 else ''}; the run diverged: export an earlier checkpoint (best/)")
    c = model.config
    meta = dict(task=tc['task'], instruction=tc['instruction'], image_keys=tc['image_keys'],
                state_key=tc['state_key'], action_dim=tc['action_dim'], proprioception_dim=tc['state_dim'],
                image_size=c.image_size, image_hw=list(c.image_hw), image_crop=list(c.image_crop),
                n_obs_steps=c.n_obs_steps, num_cameras=c.num_cameras, chunk_size=c.action_chunk_size,
                n_action_steps=info['n_action_steps'], temporal_ensemble_coeff=info.get('temporal_ensemble_coeff'),
                action_head_type=c.action_head_type, source=os.path.abspath(ckpt),
                **({'limits': tc['limits']} if 'limits' in tc else {}),  # a dataset's policy: its shield's limits
                **({'camera_size': tc['camera_size']} if tc.get('camera_size') else {}))  # its simulator's camera
    path = out or os.path.join(ckpt, 'policy.pt' if format == 'torchscript' else 'policy.pt2')
    export_policy(model, tc['instruction'], path, meta, format, task_index=i)
    module, _ = load_exported(path)  # check the file against the eager model before declaring success
    inputs = example_inputs(model, tc['state_dim'])
    with torch.no_grad():  # the same seed before each: a generative head draws noise
        torch.manual_seed(0)
        eager = StepPolicy(model, tc['instruction'], i)(*inputs)
        torch.manual_seed(0)
        exported = module(*inputs)
    if not (torch.isfinite(eager).all() and torch.isfinite(exported).all()):
        os.remove(path)
        raise SystemExit(f"refusing to export {ckpt}: the policy outputs NaN/inf on a test input; removed {path}")
    err = (eager - exported).abs().max().item()
    print(f"wrote {path} ({format}, head={c.action_head_type}); max |exported - eager| = {err:.2e} raw action units")


# -----------------------------------------------------------------------------
# safety shield


class SafetyShield:
    """The last layer between a learned policy and the motors; it trusts nothing and fails closed.

    filter(action, observation) returns a command that is (1) finite, (2) inside the box
    [low, high] = joint limits intersected with workspace bounds, and (3) within max_step_change
    per control step in every dimension (a velocity limit: max_step_change * rate per s).
    Two kinds of action dimension (the task spec's action_mode):
      'absolute': a target position; the limit applies to the change of the command, and holding
                  means re-sending the last safe command (the robot stays where it was sent);
      'delta':    a velocity / displacement per step (robosuite's OSC deltas); the limit applies to
                  the delta itself, and holding means 0 (no motion), never re-sending a past delta.
    A NaN/inf/missing action is held and counted. A stale observation (older than watchdog_timeout s),
    an observation without a finite timestamp, one stamped in the future, or emergency_stop() trips a
    latched stop: the shield holds until reset(). Every intervention is counted in .counts; the
    latest MAX_EVENTS are kept in .events (a bounded log: a long run cannot fill memory).
    """
    MAX_EVENTS = 1000
    CLOCK_SKEW = 0.05  # s: a timestamp further in the future than this is from a broken clock

    def __init__(self, action_dim, max_step_change, workspace_bounds=None, joint_limits=None, watchdog_timeout=1.0,
                 clock=time.monotonic, action_mode='absolute'):
        self.action_dim, self.watchdog_timeout, self.clock = action_dim, watchdog_timeout, clock
        self.max_step = np.broadcast_to(np.asarray(max_step_change, np.float64), (action_dim,)).copy()
        if not (self.max_step > 0).all() or not np.isfinite(self.max_step).all():
            raise ValueError(f"max_step_change must be finite and > 0, got {max_step_change}")
        if not (np.isfinite(watchdog_timeout) and watchdog_timeout >= 0):
            raise ValueError(f"watchdog_timeout must be a finite number of seconds >= 0 (0 = off), got {watchdog_timeout}")
        self.delta = tasks.delta_dims(action_mode, action_dim)
        self.low, self.high = np.full(action_dim, -np.inf), np.full(action_dim, np.inf)
        for name, bounds in (('workspace_bounds', workspace_bounds), ('joint_limits', joint_limits)):
            if bounds is not None:
                lo, hi = (np.broadcast_to(np.asarray(b, np.float64), (action_dim,)) for b in bounds)
                if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
                    raise ValueError(f"{name} must be finite numbers, got low {lo} high {hi} (leave it None for no bound)")
                if (lo > hi).any():
                    raise ValueError(f"{name}: low {lo} exceeds high {hi}")
                self.low, self.high = np.maximum(self.low, lo), np.minimum(self.high, hi)
        if (self.low > self.high).any():
            raise ValueError("workspace_bounds and joint_limits do not overlap")
        if (self.delta & ((self.low > 0) | (self.high < 0))).any():
            raise ValueError("the bounds of a 'delta' action dimension must contain 0 (zero motion is the hold)")
        self.counts = dict(invalid=0, clamped=0, rate_limited=0, stale=0, estop=0, held_while_stopped=0)
        self.events = deque(maxlen=self.MAX_EVENTS)  # (time, kind, detail) of the latest interventions
        self.reset()

    def reset(self, hold=None):
        """Clear a stop. hold: the robot's current command (absolute dims; delta dims hold 0), the
        reference of the first step. It must be finite and of action_dim values."""
        self.stopped, self.stop_reason = False, ''
        if hold is None:
            self.last = None
            return
        h = np.asarray(hold, np.float64).reshape(-1)
        if h.shape[0] != self.action_dim or not np.isfinite(h).all():
            raise ValueError(f"reset(hold=...) needs {self.action_dim} finite values, got {np.asarray(hold)}: "
                             f"pass the robot's current command")
        self.last = np.where(self.delta, 0.0, np.clip(h, self.low, self.high))

    def emergency_stop(self, reason='emergency stop'):
        self._intervene('estop', reason)
        self.stopped, self.stop_reason = True, reason

    def _intervene(self, kind, detail):
        self.counts[kind] += 1
        self.events.append((self.clock(), kind, detail))
        (log.warning if kind in ('estop', 'stale') else log.debug)(f"shield {kind}: {detail}")

    def _hold(self):
        """Absolute dims: the last safe command; delta dims: zero motion."""
        if self.last is None:
            if self.delta.all():
                return np.zeros(self.action_dim)
            raise RuntimeError("the shield has no safe command to hold yet: call reset(hold=<current command>) first")
        return np.where(self.delta, 0.0, self.last)

    def _check_observation(self, observation):
        """The watchdog: -> a reason to stop, or ''. Fails closed on anything it cannot read."""
        if self.watchdog_timeout <= 0:
            return ''
        stamp = None if observation is None else observation.get('timestamp')
        try:
            stamp = float(stamp)
        except (TypeError, ValueError):
            return f"observation has no usable 'timestamp' ({stamp!r})"
        if not np.isfinite(stamp):
            return f"observation timestamp is {stamp}"
        age = self.clock() - stamp
        if age < -self.CLOCK_SKEW:
            return f"observation timestamp is {-age:.3f}s in the future (clock fault)"
        if age > self.watchdog_timeout:
            return f"observation is {age:.3f}s old (> {self.watchdog_timeout}s)"
        return ''

    def filter(self, action, observation=None):
        """-> the command to send (float64 array of action_dim). Raises only on a wrong action shape."""
        if not self.stopped:
            problem = self._check_observation(observation)
            if problem:
                self._intervene('stale', problem)
                self.stopped, self.stop_reason = True, 'stale observation'
        if self.stopped:
            self.counts['held_while_stopped'] += 1
            return self._hold()
        if action is None:
            self._intervene('invalid', 'missing action')
            return self._hold()
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape[0] != self.action_dim:
            raise ValueError(f"the policy sent {a.shape[0]} action values, the robot takes {self.action_dim}")
        if not np.isfinite(a).all():
            self._intervene('invalid', f"non-finite action {a}")
            return self._hold()
        clipped = np.clip(a, self.low, self.high)
        if not np.array_equal(clipped, a):
            self._intervene('clamped', f"{a} -> {clipped}")
        # the rate limit: absolute dims may change by max_step from the last command, delta dims are a
        # change already and are limited themselves (the box is convex and holds 0, so results stay in it)
        ref = np.where(self.delta, 0.0, self.last if self.last is not None else clipped)
        limited = ref + np.clip(clipped - ref, -self.max_step, self.max_step)
        if not np.array_equal(limited, clipped):
            self._intervene('rate_limited', f"step {clipped - ref} limited to {self.max_step}")
        self.last = limited
        return limited.copy()


# -----------------------------------------------------------------------------
# robots: get_observation() -> frame dict with 'timestamp', send_action(a), close(). envs.SimRobot is a simulator
# (deploy.py imports no simulator until --robot=sim asks for one).

# ros2.Ros2Robot is a robot behind ROS 2 topics (--robot=ros2; rclpy from PyPI's wheels, see ros2.py).


# -----------------------------------------------------------------------------
# control loop


class ExportedPolicy(VLAPolicy):
    """An exported step function behind VLAPolicy's execution logic (chunk schedule, joins, the inference thread):
    only predict_chunk differs, and it needs no model code (so no real-time chunking: its sampler is sealed)."""

    def __init__(self, module, meta, n_action_steps=0, temporal_ensemble_coeff=-1.0, chunk_join='', inference_delay=0,
                 threaded=False):
        self.module, self.meta = module, meta
        coeff = meta.get('temporal_ensemble_coeff') if temporal_ensemble_coeff < 0 else temporal_ensemble_coeff
        self.image_keys, self.state_key = meta['image_keys'], meta['state_key']
        self.n_obs_steps = meta.get('n_obs_steps', 1)
        self.image_hw = tuple(meta['image_hw']) if meta.get('image_hw') else None  # frames are resized to it
        self.image_crop = tuple(meta.get('image_crop') or ())  # after this crop (older files: none)
        self.camera_size = meta.get('camera_size')  # a simulator renders at it (older files: the task's size)
        self.configure_execution(n_action_steps or meta['n_action_steps'], coeff, chunk_join, inference_delay,
                                 threaded, meta.get('chunk_size'), can_guide=False)  # older files: no chunk_size, unchecked

    @torch.no_grad()
    def predict_chunk(self, images, proprio, guide=None):  # guide is always None: configure_execution refuses rtc
        return self.module(images, proprio)[0].float().numpy()


def control_loop(policy, robot, shield, rate, max_steps, hold=None):
    """Run one episode at a fixed rate. -> dict(steps, success, latency p50/p99 ms, missed deadlines, chunk delays).
    Latency = observe + policy + shield (what must fit in the period); the robot's own step is not counted.
    hold: the robot's current command, the shield's first reference (None: the state, for tasks whose
    state is the commanded position). A NaN from the policy, or no action (an asynchronous plan that ran out),
    reaches the shield, which holds and counts it; a policy that raises (its inference thread crashed) trips the
    shield's stop: the robot holds, the loop ends and reports why."""
    period = 1.0 / rate if rate > 0 else 0.0
    latencies, missed, steps = [], 0, 0
    first = robot.get_observation()
    for _ in range(2):  # warm up: the first calls of a TorchScript module optimize its graph (slow)
        policy.predict_chunk(*policy.observe(first))
    policy.reset()
    policy.raise_on_nonfinite = False
    shield.reset(hold=first[policy.state_key][:robot.action_dim] if hold is None else hold)
    deadline = time.perf_counter()
    try:
        for steps in range(1, max_steps + 1):
            t0 = time.perf_counter()
            obs = robot.get_observation()
            try:
                action = policy(obs)
            except Exception as e:  # fail closed: a policy that cannot act stops the robot, and the report says why
                log.exception("the policy raised: stopping the robot")
                shield.emergency_stop(f"policy error: {type(e).__name__}: {e}")
                action = None
            command = shield.filter(action, obs)
            latencies.append(time.perf_counter() - t0)
            robot.send_action(command)
            if shield.stopped or getattr(robot, 'done', False):
                break
            if period:
                deadline += period
                slack = deadline - time.perf_counter()
                if slack < 0:
                    missed, deadline = missed + 1, time.perf_counter()  # late: start the next period now
                else:
                    time.sleep(slack)
    finally:
        policy.close()  # no inference thread outlives the episode
    ms = np.array(latencies) * 1e3
    return dict(steps=steps, success=bool(getattr(robot, 'success', False)), stopped=shield.stop_reason,
                p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)), missed_deadlines=missed,
                **policy.execution_stats())


def make_shield(task_name, action_dim, limits=None):
    """-> (SafetyShield with the task's limits and action modes, the robot's command at rest or None). limits: a
    policy trained on a dataset with no task table entry carries its own, measured on its data (data.action_limits:
    the range of its actions and 1.5x its largest step); its actions are taken as targets (absolute)."""
    if limits is not None:
        spec = limits
    else:
        spec = tasks.TASKS[task_name]
    step = max_step_change or spec.get('max_step_change', 0.0)
    if np.any(np.asarray(step) <= 0):  # a number, or one per action dim (a dataset's limits)
        raise SystemExit(f"no default shield velocity limit for task {task_name!r}: pass --max_step_change")
    shield = SafetyShield(action_dim, step, workspace_bounds=(spec['action_low'], spec['action_high']),
                          watchdog_timeout=watchdog_timeout, action_mode=spec.get('action_mode', 'absolute'))
    return shield, spec.get('rest_action')


def load_runnable(path):
    """--policy -> (policy with the VLAPolicy interface, metadata dict). A checkpoint folder loads weights
    only; an exported file is code and needs --trust_exported_code=True."""
    if os.path.isdir(path):
        try:
            tc, pol = load_policy(path, n_action_steps=n_action_steps, temporal_ensemble_coeff=temporal_ensemble_coeff,
                                  task=task, instruction=instruction, min_instruction_cosine=min_instruction_cosine,
                                  chunk_join=chunk_join, inference_delay=inference_delay, threaded=async_inference,
                                  rtc_max_weight=rtc_max_weight)
        except ValueError as e:
            raise SystemExit(str(e)) from e
        return pol, tc
    if not os.path.exists(path):
        raise SystemExit(f"--policy={path} does not exist: pass a checkpoint folder (e.g. out/pusht)")
    if not trust_exported_code:
        raise SystemExit(f"refusing to load {path}: an exported .pt/.pt2 file is a program, and loading it can run "
                         f"arbitrary code (torch.export.load unpickles; TorchScript can write files). Pass the "
                         f"checkpoint folder instead (model.safetensors + JSON: weights only, run with this repo's "
                         f"model code), or, for a file you exported yourself and kept safe, --trust_exported_code=True")
    module, meta = load_exported(path)
    try:
        return ExportedPolicy(module, meta, n_action_steps, temporal_ensemble_coeff, chunk_join, inference_delay,
                              async_inference), meta
    except ValueError as e:
        raise SystemExit(f"{path}: {e}") from e


def run_main():
    """python deploy.py run --policy=CKPT_DIR --robot=sim [--episodes=N] [--rate=HZ]"""
    torch.set_num_threads(threads)
    pol, meta = load_runnable(policy)
    task_name = task or meta['task']
    if instruction and instruction != meta['instruction']:
        raise SystemExit(f"--instruction={instruction!r} differs from the one the exported file was made with "
                         f"({meta['instruction']!r}): its text features are baked in; pass the checkpoint folder "
                         f"to run other words")
    check = meta.get('instruction_check')
    if check and check['instruction'] != check['nearest_trained']:
        print(describe_instruction(check), flush=True)
        if not check['familiar']:
            raise SystemExit(f"refusing to run an unfamiliar instruction on a robot (cosine below "
                             f"--min_instruction_cosine={min_instruction_cosine}); evaluate it in simulation first: "
                             f"python eval.py --ckpt={policy} --instruction=...")
    results = []
    try:
        for seed in range(start_seed, start_seed + episodes):
            if robot not in ('sim', 'ros2'):
                raise SystemExit(f"--robot={robot!r}: choose 'sim' (the task's simulator) or 'ros2' (ROS 2 topics); "
                                 f"another robot implements envs.SimRobot's get_observation/send_action/close")
            if robot == 'ros2':
                import ros2
                bot = ros2.Ros2Robot(meta['image_keys'], meta['state_key'], meta['action_dim'], seed, ros_namespace,
                                     ros_remap, ros_reliability, ros_qos_depth, timeout=watchdog_timeout)
                step_limit = max_steps or tasks.TASKS.get(task_name, {}).get('max_steps', 0)
                if not step_limit:
                    raise SystemExit(f"{task_name} has no step limit in tasks.py: pass --max_steps")
                shield, rest = make_shield(task_name, bot.action_dim, limits=meta.get('limits'))
            else:
                import envs
                if 'limits' in meta:
                    raise SystemExit(f"{policy} was trained on the dataset {task_name}, which has no simulator: "
                                     f"--robot=sim has nothing to run it in. Run it on the robot that recorded it "
                                     f"(--robot=ros2, or a class with envs.SimRobot's interface)")
                bot = envs.SimRobot(task_name, seed, max_steps, image_size=meta.get('camera_size'))
                step_limit = bot.max_steps
                if bot.action_dim != meta['action_dim']:
                    raise SystemExit(f"the policy outputs {meta['action_dim']} action values but the robot takes "
                                     f"{bot.action_dim}: export a policy trained for this robot")
                shield, rest = make_shield(task_name, bot.action_dim)
            try:
                r = control_loop(pol, bot, shield, rate, step_limit, hold=rest)
            finally:
                bot.close()
            r.update(seed=seed, interventions=dict(shield.counts))
            results.append(r)
            print(f"seed {seed}: {'success' if r['success'] else 'fail'} in {r['steps']} steps, "
                  f"latency p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms, missed {r['missed_deadlines']}, "
                  f"chunk delay mean {r['mean_chunk_delay']:.1f} max {r['max_chunk_delay']} steps, "
                  f"starved {r['starved_steps']}, shield {shield.counts}"
                  + (f", stopped: {r['stopped']}" if r['stopped'] else ''), flush=True)
    except KeyboardInterrupt:
        print("\nstopped by Ctrl-C; the robot was closed")
    if results:
        ok = np.mean([r['success'] for r in results])
        print(f"success {ok:.2f} over {len(results)} episodes (seeds {start_seed}..); latency p50 "
              f"{np.median([r['p50_ms'] for r in results]):.2f} ms, p99 {max(r['p99_ms'] for r in results):.2f} ms; "
              f"missed deadlines {sum(r['missed_deadlines'] for r in results)} at {rate} Hz")
    return results


if __name__ == '__main__':
    commands = {'export': export_main, 'run': run_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: python deploy.py <{'|'.join(commands)}> --key=value ... (got {sys.argv[1:2]})")
    command = sys.argv.pop(1)
    logging.basicConfig(level=logging.WARNING, format='%(message)s')
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    if command == 'run' and not policy:
        raise SystemExit("pass --policy=<checkpoint folder, e.g. out/pusht>")
    commands[command]()
