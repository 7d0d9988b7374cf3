"""model.py: the full policy on the contract's batch, padding, instruction cache, normalization,
checkpoints, and the pretrained path (tiny HF models saved locally and loaded like a user would)."""
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from model import ManipulationVLA, ManipulationVLAConfig  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
HEADS = ["mlp", "gaussian", "mixture", "diffusion", "flow", "transformer"]
STATS = {"observation.state": {"mean": [256.0, 250.0], "std": [100.0, 90.0], "min": [0, 0], "max": [512, 512]},
         "action": {"mean": [256.0, 256.0], "std": [100.0, 100.0], "min": np.array([10.0, 20.0]),
                    "max": np.array([500.0, 480.0])}}


def tiny_config(**kw):
    base = dict(image_size=32, hidden_size=32, num_heads=2, cnn_width=8, vision_grid=2, num_readout_tokens=2,
                head_hidden_dim=32, denoiser_dim=16, action_chunk_size=4, diffusion_steps=20,
                diffusion_inference_steps=4, flow_steps=3, max_text_tokens=24)
    base.update(kw)
    return ManipulationVLAConfig(**base)


def make_batch(B=3, cams=1, size=32, T=4, seed=0, **extra):
    g = torch.Generator().manual_seed(seed)
    batch = dict(images=torch.randint(0, 256, (B, cams, 3, size, size), dtype=torch.uint8, generator=g),
                 proprio=torch.rand(B, 2, generator=g) * 512,
                 instruction=["push the T", "push the T onto the target", "go"][:B] + ["push"] * max(0, B - 3),
                 action=torch.rand(B, T, 2, generator=g) * 480 + 15,
                 action_is_pad=torch.zeros(B, T, dtype=torch.bool))
    batch["action_is_pad"][1, 2:] = True
    batch.update(extra)
    return batch


def make_model(**kw):
    torch.manual_seed(0)
    model = ManipulationVLA(tiny_config(**kw))
    model.set_normalization_stats(STATS)
    return model


def test_default_config_is_the_offline_cpu_recipe():
    cfg = ManipulationVLAConfig()
    assert (cfg.vision_encoder, cfg.vlm_backbone, cfg.image_size, cfg.action_head_type) == ("cnn", "tiny-qwen2", 96, "mlp")
    with pytest.raises(ValueError, match="action_head_type"):
        ManipulationVLAConfig(action_head_type="gmm")
    with pytest.raises(ValueError, match="freeze_llm=True"):
        ManipulationVLAConfig(use_lora=True)


@pytest.mark.parametrize("head", HEADS)
def test_forward_and_predict_every_head(head):
    model = make_model(action_head_type=head)
    batch = make_batch()
    out = model(batch)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.startswith("head."))
    assert model.vision_proj.weight.grad.abs().sum() > 0 and model.readout.grad.abs().sum() > 0
    action = model.predict_action({k: v for k, v in batch.items() if k not in ("action", "action_is_pad")})
    assert action.shape == (3, 4, 2)
    lo, hi = torch.tensor([10.0, 20.0]), torch.tensor([500.0, 480.0])
    assert ((action >= lo - 1e-3) & (action <= hi + 1e-3)).all(), "raw actions stay inside the demonstrated range"


@pytest.mark.parametrize("head", HEADS)
def test_loss_ignores_padded_steps(head):
    model = make_model(action_head_type=head)
    batch = make_batch()
    changed = dict(batch, action=torch.where(batch["action_is_pad"].unsqueeze(-1), torch.full_like(batch["action"], 3.0),
                                             batch["action"]))
    torch.manual_seed(3)
    a = model(batch)["loss"]
    torch.manual_seed(3)
    b = model(changed)["loss"]
    torch.manual_seed(3)
    c = model(dict(changed, action_is_pad=torch.zeros_like(batch["action_is_pad"])))["loss"]
    assert torch.allclose(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("head", ["mlp", "diffusion"])
def test_cached_instruction_equals_fresh(head):
    model = make_model(action_head_type=head).eval()
    obs = {k: v for k, v in make_batch().items() if k not in ("action", "action_is_pad")}
    torch.manual_seed(5)
    fresh = model.predict_action(obs)
    cache = model.encode_instruction(obs["instruction"])
    torch.manual_seed(5)
    cached = model.predict_action(obs, instruction_cache=cache)
    assert torch.allclose(fresh, cached, atol=1e-6)
    # one instruction cached for a whole batch of observations (the deployment case)
    one = model.encode_instruction(["go"])
    obs_go = dict(obs, instruction=["go"] * 3)
    torch.manual_seed(5)
    a = model.predict_action(obs_go, instruction_cache=one)
    torch.manual_seed(5)
    assert torch.allclose(a, model.predict_action(obs_go), atol=1e-5)


def test_shared_instruction_prefix_equals_full_sequence():
    """Training with one instruction runs the text once and reuses its KV cache for the batch:
    the features and the gradients must equal running text + observation for every sample."""
    model = make_model(action_head_type="transformer")
    batch = make_batch(B=4)
    args = (batch["images"], batch["proprio"])
    text = model.encode_instruction(["push the T onto the target"])
    shared = model.features(*args, text["text_embeds"], text["text_mask"])
    grads_shared = torch.autograd.grad(shared.square().sum(), list(model.llm.parameters()))
    text = model.encode_instruction(["push the T onto the target"])
    full = model.features(*args, text["text_embeds"].expand(4, -1, -1), text["text_mask"].expand(4, -1))
    grads_full = torch.autograd.grad(full.square().sum(), list(model.llm.parameters()))
    assert torch.allclose(shared, full, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(grads_shared, grads_full))


def test_instruction_changes_the_action():
    model = make_model()
    obs = {k: v for k, v in make_batch().items() if k not in ("action", "action_is_pad")}
    assert not torch.allclose(model.predict_action(obs), model.predict_action(dict(obs, instruction=["x"] * 3)))


def test_normalization_round_trip():
    model = make_model()
    a = torch.rand(5, 4, 2) * 490 + 10
    assert torch.allclose(model.unnormalize_action(model.normalize_action(a)), a, atol=1e-3)
    n = model.normalize_action(torch.tensor([[10.0, 20.0], [500.0, 480.0]]))
    assert torch.allclose(n, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    assert torch.allclose(model.normalize_proprio(torch.tensor([356.0, 250.0])), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="action_dim"):
        model.set_normalization_stats({"action": {"min": [0, 0, 0], "max": [1, 1, 1]},
                                       "observation.state": STATS["observation.state"]})


def test_relative_actions_are_offsets_from_the_state():
    """relative_actions: the head's output is an offset from the pusher's own position (in normalized action units),
    so a head that outputs zeros holds the pusher where it is, and the loss target is norm(action) - norm(state)."""
    model = make_model(relative_actions=True)
    head_out = model.head.net[-1]
    torch.nn.init.zeros_(head_out.weight), torch.nn.init.zeros_(head_out.bias)
    batch = make_batch()
    chunk = model.predict_action(batch)  # (B, T, 2)
    assert torch.allclose(chunk, batch["proprio"][:, None].expand_as(chunk).clamp(min=torch.tensor([10.0, 20.0]),
                                                                                   max=torch.tensor([500.0, 480.0])),
                          atol=1e-3)
    offset = model.normalize_action(batch["action"]) - model.normalize_action(batch["proprio"][:, None])
    keep = ~batch["action_is_pad"]
    assert torch.allclose(model(batch)["loss"], offset.abs()[keep].mean(), atol=1e-5)
    with pytest.raises(ValueError, match="proprioception_dim >= action_dim"):
        tiny_config(relative_actions=True, action_dim=3)


def test_multi_camera_and_depth():
    model = make_model(num_cameras=2, use_depth=True)
    batch = make_batch(cams=2, depth=torch.rand(3, 2, 1, 32, 32) * 2)
    model(batch)["loss"].backward()
    assert model.depth_encoder.convs[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_cameras"):
        model(make_batch(cams=1, depth=torch.rand(3, 1, 1, 32, 32)))


@pytest.mark.parametrize("head", ["mlp", "flow"])
def test_save_load_round_trip(tmp_path, head):
    model = make_model(action_head_type=head, vision_encoder="tiny-siglip" if head == "flow" else "cnn").eval()
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    loaded = ManipulationVLA.from_pretrained(str(tmp_path)).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    obs = {k: v for k, v in make_batch().items() if k not in ("action", "action_is_pad")}
    torch.manual_seed(0)
    a = model.predict_action(obs)
    torch.manual_seed(0)
    assert torch.equal(a, loaded.predict_action(obs))


def test_strict_load_names_the_mismatch(tmp_path):
    make_model().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["config"]["head_hidden_dim"] = 48
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape mismatches.*head.net"):
        ManipulationVLA.from_pretrained(str(tmp_path))
    with pytest.raises(OSError, match="folder"):
        ManipulationVLA.from_pretrained(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- pretrained path
@pytest.fixture(scope="module")
def tiny_hf_dirs(tmp_path_factory):
    """A tiny Qwen2 (with a WordLevel tokenizer trained on a few strings) and a tiny SigLIP vision
    tower, saved with save_pretrained: stand-ins for Qwen/Qwen2-0.5B-Instruct and google/siglip-*."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import (PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig,
                              SiglipVisionModel)
    root = tmp_path_factory.mktemp("hf")
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["push the T onto the target", "go", "pick up the red block"],
                            trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "<eos>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<eos>")  # no pad token
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    llm.save_pretrained(root / "qwen")
    tokenizer.save_pretrained(root / "qwen")
    SiglipVisionModel(SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, image_size=32, patch_size=8)).save_pretrained(root / "siglip")
    return str(root / "qwen"), str(root / "siglip")


def test_pretrained_lora_freezing_and_round_trip(tiny_hf_dirs, tmp_path):
    qwen, siglip = tiny_hf_dirs
    from transformers import AutoModel
    model = ManipulationVLA(tiny_config(vlm_backbone=qwen, vision_encoder=siglip, freeze_llm=True,
                                        freeze_vision=True, use_lora=True, lora_r=4, lora_alpha=8))
    model.set_normalization_stats(STATS)
    ref = AutoModel.from_pretrained(qwen)  # the pretrained weights really were loaded
    assert torch.equal(model.llm.get_input_embeddings().weight, ref.get_input_embeddings().weight)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable)
    assert all("lora_" in n for n in trainable if n.startswith("llm."))
    assert not any(n.startswith("vision.") for n in trainable)
    assert any(n.startswith("head.") for n in trainable) and "vision_proj.weight" in trainable
    batch = make_batch()
    model(batch)["loss"].backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    # round trip without the original folders: the checkpoint alone rebuilds the model
    model.eval().save_pretrained(tmp_path / "ckpt")
    moved = str(tmp_path / "gone")
    shutil.copytree(qwen, moved)
    shutil.rmtree(qwen)
    try:
        loaded = ManipulationVLA.from_pretrained(str(tmp_path / "ckpt")).eval()
    finally:
        shutil.copytree(moved, qwen)
    obs = {k: v for k, v in batch.items() if k not in ("action", "action_is_pad")}
    assert torch.equal(model.predict_action(obs), loaded.predict_action(obs))
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == trainable


def test_pretrained_unfrozen_trains_everything(tiny_hf_dirs):
    qwen, siglip = tiny_hf_dirs
    model = ManipulationVLA(tiny_config(vlm_backbone=qwen, vision_encoder=siglip))
    assert all(p.requires_grad for p in model.parameters())
    model(make_batch())["loss"].backward()


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_hf_dirs, lora):
    """gradient_checkpointing=True recomputes the LM's and the trained SigLIP tower's layers in backward instead of
    storing their activations: the same loss and gradients, with LoRA too (the non-reentrant form)."""
    qwen, siglip = tiny_hf_dirs
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = ManipulationVLA(tiny_config(vlm_backbone=qwen, vision_encoder=siglip, freeze_llm=lora, use_lora=lora,
                                            gradient_checkpointing=ckpt))
        model.set_normalization_stats(STATS)
        assert model.llm.is_gradient_checkpointing == ckpt and model.vision.tower.is_gradient_checkpointing == ckpt
        model(make_batch())["loss"].backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and any("lora_" in n for n in grads[0]) == lora
    for n, g in grads[0].items():
        assert g is not None and torch.allclose(g, grads[1][n], atol=1e-6), n


def test_missing_backbone_says_how_to_use_a_local_folder():
    with pytest.raises(OSError, match="local folder"):
        ManipulationVLA(tiny_config(vlm_backbone="/nonexistent/Qwen2-0.5B-Instruct"))


def test_policy_info_is_built_and_read_in_one_place():
    """The checkpoint contract: policy_info() refuses an entry without what eval/deploy need, policy_task() picks a
    task or says which to pass, and a stage-1 checkpoint (no tasks) says how to use it."""
    from model import POLICY_TASK_KEYS, policy_info, policy_task
    entry = dict(task="pusht", instruction="push", instructions=["push"], image_keys=["observation.image"],
                 state_key="observation.state", action_dim=2, state_dim=2, extra="dropped")
    info = policy_info([entry, dict(entry, task="lift")], n_action_steps=8)
    assert info["stage"] == "policy" and set(info["tasks"][0]) == set(POLICY_TASK_KEYS)
    assert policy_task(info, "lift")[0] == 1
    with pytest.raises(ValueError, match="multi-task policy"):
        policy_task(info)
    with pytest.raises(ValueError, match="lacks \\['instructions'\\]"):
        policy_info([{k: v for k, v in entry.items() if k != "instructions"}], n_action_steps=8)
    with pytest.raises(ValueError, match="train_bc.py --init_from"):
        policy_task(policy_info([], stage="vlm", task="pusht"))
