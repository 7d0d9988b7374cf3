"""
A trained checkpoint as a controller, the one execution logic that eval.py (in simulation) and deploy.py (on a robot)
run: frame in, action out, once per control step.

    from policy import load_policy
    settings, pol = load_policy('out/pusht')                               # weights + JSON, this repo's model code
    settings, pol = load_policy('out/pusht', chunk_join='rtc', inference_delay=4)   # a 4-step inference latency

How chunks execute (VLAPolicy): action chunking with a queue or ACT's temporal ensembling, and asynchronous
inference, where the next chunk is computed while the current one executes and joins it by a switch, an ensemble,
a cross-fade or real-time chunking. Which words the policy follows: instruction_check measures an instruction
against the trained ones, so an unfamiliar one is reported, never silently mapped to a trained behaviour.
"""
import os
from collections import deque

import numpy as np
import torch

import data  # frame -> model input (no simulator: deploy.py runs on a robot computer)

CHUNK_JOINS = ('switch', 'ensemble', 'blend', 'rtc')  # how a new chunk meets the executing one (VLAPolicy)


class VLAPolicy:
    """A trained ManipulationVLA as a closed-loop controller: frame in, action out, one call per control step.

    Action chunking (Zhao et al. 2023, ACT): a chunk of H actions predicted from the observation of step t covers
    steps t..t+H-1, and the synchronous loop executes its first n_action_steps = n. Asynchronously, a chunk becomes
    available inference_delay = d steps after its observation (simulated latency, exact: eval.py and deploy.py's
    --inference_delay), or when the inference thread is done (threaded=True, deploy.py --async_inference; at least d
    steps), and meanwhile the plan made of the earlier chunks keeps executing: the robot never waits for the
    policy (asynchronous inference, as LeRobot's PolicyServer / RobotClient). The next chunk is asked for n - d
    steps after the last (at least 1; one inference at a time), early enough that it arrives when the previous one
    has run n steps from its observation: no action is older than in the synchronous loop while d <= n / 2 (LeRobot's
    queue threshold does the same). The new chunk's steps from d on join the plan (its first d are history by then),
    by `join`:
      'switch'   they replace the plan (d = 0: plain action chunking, the synchronous loop)
      'ensemble' ACT's temporal ensembling: each step averages every chunk that predicted it, with weights
                 exp(-coeff * i), i = 0 the oldest (n_action_steps = 1, d = 0: ACT exactly)
      'blend'    a linear cross-fade from the plan to the new chunk over their overlap
      'rtc'      real-time chunking (Black et al. 2025): the new chunk is SAMPLED to agree with the plan's steps
                 that execute during inference (a diffusion / flow head, guided: heads.rtc_guided_estimate),
                 then switched to
    The first chunk of an episode is waited for (the robot is at rest). A plan that runs out before the next chunk
    arrives (a threaded policy slower than the chunk) yields None: the shield holds and counts it (`starved`).
    Observation history: every step's frame enters a queue of the model's n_obs_steps last frames (the first
    frame of an episode fills it, as the dataset pads), so a prediction always sees the steps t-n+1..t.
    camera_size: the side of the simulator camera its training data was recorded at (None = the task's), at which
    eval.py, DAgger and deploy.py's simulator render for it.
    """

    raise_on_nonfinite = True

    def __init__(self, model, instruction, n_action_steps, temporal_ensemble_coeff=None,
                 image_keys=('observation.image',), state_key='observation.state', task_index=None,
                 chunk_join='', inference_delay=0, threaded=False, rtc_max_weight=5.0, camera_size=None):
        self.model, self.instruction, self.rtc_max_weight = model, instruction, rtc_max_weight
        self.camera_size = camera_size
        self.image_keys, self.state_key = list(image_keys), state_key
        self.task_index = task_index  # which of a multi-task model's tasks (its statistics, head, action dims)
        cfg = getattr(model, 'config', None)
        self.n_obs_steps = getattr(cfg, 'n_obs_steps', 1)
        self.image_hw = cfg.image_hw if cfg is not None else None
        self.image_crop = getattr(cfg, 'image_crop', ())  # the training frames' crop: live frames are cut alike
        self.device = next(model.parameters()).device
        self.text = None
        self.configure_execution(n_action_steps, temporal_ensemble_coeff, chunk_join, inference_delay, threaded,
                                 getattr(cfg, 'action_chunk_size', None),
                                 getattr(cfg, 'action_head_type', '') in ('diffusion', 'flow'))

    def configure_execution(self, n_action_steps, ensemble_coeff, join, inference_delay, threaded, chunk_size,
                            can_guide):
        """Check the chunk schedule against the chunk it slices, then start an episode."""
        join = join or ('ensemble' if ensemble_coeff is not None else 'switch')  # '' = as trained
        if join not in CHUNK_JOINS:
            raise ValueError(f"chunk_join={join!r}: use one of {CHUNK_JOINS}")
        if join == 'rtc' and not can_guide:
            raise ValueError("chunk_join='rtc' steers a diffusion or flow sampler through the model's code: it needs a "
                             "checkpoint folder of a diffusion or flow head (use 'blend' otherwise)")
        if n_action_steps < 1 or inference_delay < 0 or (chunk_size is not None and max(
                n_action_steps, 2 * inference_delay) > chunk_size):
            raise ValueError(f"n_action_steps={n_action_steps} and inference_delay={inference_delay} do not fit a chunk "
                             f"of {chunk_size}: a chunk must last until the next one arrives, max(n_action_steps, "
                             f"2 * inference_delay) <= {chunk_size}")
        self.n_action_steps, self.join, self.inference_delay = n_action_steps, join, inference_delay
        self.ensemble_coeff = 0.01 if ensemble_coeff is None else ensemble_coeff  # ACT's default m
        self.threaded, self.executor = threaded, None
        self.reset()

    def reset(self):
        """New episode: forget the plan, a pending chunk and the observations; the instruction's text features are
        computed once."""
        self.close()
        self.plan = deque()  # the steps from now on: [sum of weight * action, sum of weights, number of chunks]
        self.history = deque(maxlen=self.n_obs_steps)
        self.pending, self.t, self.last_request = None, 0, -10 ** 9
        self.delays, self.starved = [], 0  # steps from each chunk's observation to its use; steps with no action
        if hasattr(self, 'model') and self.text is None:
            with torch.no_grad():
                self.text = self.model.encode_instruction([self.instruction])

    def close(self):
        """Stop the inference thread (waiting for a chunk in flight): no thread outlives an episode."""
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None
        self.pending = None

    def observe(self, frame):
        """Add one frame to the observation history -> (images, proprio) of the last n_obs_steps, batch of 1:
        (1, cams, 3, H, W) and (1, P), or (1, n_obs, cams, 3, H, W) and (1, n_obs, P)."""
        sample = data.frame_to_model_input(frame, self.image_keys, self.state_key, image_hw=self.image_hw,
                                           image_crop=self.image_crop)
        while len(self.history) < self.n_obs_steps - 1:
            self.history.append(sample)
        self.history.append(sample)
        if self.n_obs_steps == 1:
            return sample['images'][None], sample['proprio'][None]
        return (torch.stack([s['images'] for s in self.history])[None],
                torch.stack([s['proprio'] for s in self.history])[None])

    @torch.no_grad()
    def predict_chunk(self, images, proprio, guide=None):
        batch = {'images': images.to(self.device), 'proprio': proprio.to(self.device), 'instruction': [self.instruction]}
        if self.task_index is not None:
            batch['task_index'] = self.task_index
        return self.model.predict_action(batch, instruction_cache=self.text, guide=guide)[0].float().cpu().numpy()

    def _chunk(self, obs, guide=None):
        """Predict a chunk; NaN/inf stops an evaluation, while on a robot (deploy.py sets
        raise_on_nonfinite=False) it flows on to the safety shield, which holds and counts it."""
        chunk = self.predict_chunk(*obs, guide=guide)
        if self.raise_on_nonfinite and not np.isfinite(chunk).all():
            raise RuntimeError("the policy predicted NaN/inf actions: the checkpoint is broken (training diverged?)")
        return chunk

    def rtc_guide(self, d):
        """RTC's target: the plan's next L steps, weight 1 on the d that execute while the new chunk is computed,
        then c (e^c - 1) / (e - 1) with c = (L - i) / (L - d + 1) down the rest of the overlap (the soft mask of
        Black et al. 2025): the new chunk may depart from the old one where it has time to. None with no plan."""
        if not self.plan:
            return None
        L = len(self.plan)
        i = np.arange(L)
        c = (L - i) / (L - d + 1)
        weights = np.where(i < d, 1.0, c * np.expm1(c) / np.expm1(1.0))
        target = np.stack([s / w for s, w, _ in self.plan])
        return dict(target=torch.as_tensor(target, dtype=torch.float32)[None], weights=weights.astype(np.float32),
                    max_weight=self.rtc_max_weight)

    def expected_delay(self):
        """Steps until a chunk asked for now arrives: the simulated delay, or the thread's last one if longer."""
        return max(self.inference_delay, self.delays[-1] if self.delays and self.threaded else 0)

    def _request(self, obs):
        """Ask for the chunk of this step's observation: computed now (simulated delay) or in the thread."""
        self.last_request = self.t
        guide = self.rtc_guide(self.expected_delay()) if self.join == 'rtc' else None
        if not self.threaded:
            self.pending = dict(t=self.t, chunk=self._chunk(obs, guide))
            return
        if self.executor is None:
            from concurrent.futures import ThreadPoolExecutor
            self.executor = ThreadPoolExecutor(1, thread_name_prefix='nanovla-inference')
        self.pending = dict(t=self.t, future=self.executor.submit(self._chunk, obs, guide))

    def _collect(self):
        """The pending chunk joins the plan once it is due (d steps old, and done in the thread). A crash in the
        inference thread is raised here, in the control loop, which stops the robot."""
        p = self.pending
        d = self.t - p['t']
        first = not self.delays  # the episode's first chunk is waited for
        if not first and (d < self.inference_delay or ('future' in p and not p['future'].done())):
            return
        chunk = p['chunk'] if 'chunk' in p else p['future'].result()
        self.pending = None
        self.delays.append(d)
        self.join_chunk(chunk[d:])

    def join_chunk(self, new):
        """Merge a chunk's actions (from this step on) into the plan, by self.join."""
        old = list(self.plan)
        if self.join == 'ensemble':  # ACT: the new chunk is the youngest, weight exp(-coeff * chunks before it)
            merged = []
            for i, a in enumerate(new):
                s, w, n = old[i] if i < len(old) else (0.0, 0.0, 0)
                wi = np.exp(-self.ensemble_coeff * n)
                merged.append([s + wi * a, w + wi, n + 1])
        elif self.join == 'blend':
            m = min(len(old), len(new))
            merged = [[(1 - (i + 1) / (m + 1)) * old[i][0] / old[i][1] + (i + 1) / (m + 1) * a, 1.0, 1] if i < m
                      else [a, 1.0, 1] for i, a in enumerate(new)]
        else:  # 'switch', 'rtc'
            merged = [[a, 1.0, 1] for a in new]
        self.plan = deque(merged)

    def __call__(self, frame, env=None):
        """frame: {image key: uint8 (H, W, 3), state key: (D,)} -> action (A,) in raw units, or None when the plan
        ran out before the next chunk arrived (threaded only)."""
        obs = self.observe(frame)
        if self.pending is not None:
            self._collect()
        due = self.t - self.last_request >= max(1, self.n_action_steps - self.expected_delay())
        if self.pending is None and (due or not self.plan):
            self._request(obs)
            self._collect()  # due at once without a delay (and the first chunk of an episode is waited for)
        self.t += 1
        if not self.plan:
            self.starved += 1
            return None
        s, w, _ = self.plan.popleft()
        return s / w

    def execution_stats(self):
        """-> chunk delays (steps from observation to use) and steps without an action, for reports."""
        return dict(mean_chunk_delay=float(np.mean(self.delays)) if self.delays else 0.0,
                    max_chunk_delay=int(max(self.delays, default=0)), starved_steps=self.starved)


SIMILARITY_ENCODER = 'minilm'  # all-MiniLM-L6-v2, trained for sentence similarity: what instruction_check measures with


def instruction_check(model, instruction, trained, min_cosine):
    """How close `instruction` is to the ones the policy was trained on -> dict(instruction, nearest_trained,
    cosine, familiar). The cosine is all-MiniLM-L6-v2's, a model trained for sentence similarity, whatever the
    policy reads with: SmolLM2's prompt vectors put an empty instruction (0.96) nearer the trained ones than
    their paraphrases (0.95; RESULTS.md). A byte-level LM trained from scratch (no text_encoder) has no notion
    of paraphrase: only its exact training instructions are familiar to it."""
    if instruction in trained:
        return dict(instruction=instruction, nearest_trained=instruction, cosine=1.0, familiar=True)
    if not model.config.text_encoder:
        return dict(instruction=instruction, nearest_trained=None, cosine=None, familiar=False)
    from model import sentence_encoder
    e = sentence_encoder(SIMILARITY_ENCODER)([instruction] + list(trained))
    cos = e[1:] @ e[0]
    return dict(instruction=instruction, nearest_trained=trained[int(cos.argmax())], cosine=float(cos.max()),
                familiar=float(cos.max()) >= min_cosine)


def describe_instruction(check):
    """The line eval.py and deploy.py print about the instruction a policy runs under."""
    if check['instruction'] == check['nearest_trained']:
        return f"instruction {check['instruction']!r}: one the policy was trained on"
    if check['cosine'] is None:
        return (f"instruction {check['instruction']!r} is UNFAMILIAR: not one the policy was trained on, and its "
                f"byte-level LM (no text_encoder) has no notion of paraphrase")
    return (f"instruction {check['instruction']!r} is {'near' if check['familiar'] else 'FAR from'} the trained ones: "
            f"nearest {check['nearest_trained']!r}, cosine {check['cosine']:.3f} ({SIMILARITY_ENCODER})")


def load_policy(ckpt_dir, device='cpu', n_action_steps=0, temporal_ensemble_coeff=-1.0, task='', instruction='',
                min_instruction_cosine=0.4, chunk_join='', inference_delay=0, threaded=False, rtc_max_weight=5.0,
                flow_noise_scale=-1.0):
    """A checkpoint folder -> (settings dict, VLAPolicy). Loads weights, not code: model.safetensors and
    config.json, with this repository's model code. config.json's `policy` says which tasks, instructions,
    cameras and how many actions of a chunk to execute; `task` picks one of a multi-task checkpoint's tasks;
    `instruction` ('' = the stored one) conditions the policy on other words, checked by instruction_check;
    chunk_join, inference_delay, threaded and rtc_max_weight set how chunks execute (VLAPolicy); flow_noise_scale
    >= 0 replaces a flow head's sampling temperature (ManipulationVLAConfig.flow_noise_scale), < 0 keeps the stored one.
    settings = the task's entry + n_action_steps + temporal_ensemble_coeff (as stored) + instruction_check."""
    from model import ManipulationVLA, policy_task
    if not os.path.exists(os.path.join(ckpt_dir, 'config.json')):
        raise FileNotFoundError(f"{ckpt_dir}/config.json is missing: pass a checkpoint folder written by a "
                                f"train_*.py script (e.g. out/pusht or out/pusht/best)")
    model = ManipulationVLA.from_pretrained(ckpt_dir).to(device).eval()
    if flow_noise_scale >= 0:
        if model.config.action_head_type != 'flow':
            raise ValueError(f"flow_noise_scale={flow_noise_scale}: {ckpt_dir} has a {model.config.action_head_type} "
                             f"head; the sampling temperature belongs to a flow head")
        model.config.flow_noise_scale = flow_noise_scale
        for head in (model.heads if model.config.multi_head else [model.head]):
            head.noise_scale = flow_noise_scale
    i, entry = policy_task(model.policy_info, task, ckpt_dir)
    info = model.policy_info
    text = instruction or entry['instruction']
    check = instruction_check(model, text, entry['instructions'], min_instruction_cosine)
    settings = dict(entry, instruction=text, instruction_check=check,
                    n_action_steps=n_action_steps or info['n_action_steps'],
                    temporal_ensemble_coeff=info.get('temporal_ensemble_coeff') if temporal_ensemble_coeff < 0
                    else temporal_ensemble_coeff)
    pol = VLAPolicy(model, text, settings['n_action_steps'], settings['temporal_ensemble_coeff'],
                    image_keys=entry['image_keys'], state_key=entry['state_key'],
                    task_index=i if model.config.num_tasks > 1 else None, chunk_join=chunk_join,
                    inference_delay=inference_delay, threaded=threaded, rtc_max_weight=rtc_max_weight,
                    camera_size=entry.get('camera_size'))
    return settings, pol
