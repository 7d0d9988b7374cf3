"""train_vlm.py, stage-1 vision-language alignment: the VQA answers are the simulator's truth (checked against
pusht.get_state, the env's own coverage and the rendered image), the answer-token loss overfits a fixed batch,
the checkpoint loads and starts train_bc.py --init_from, and a hub-style LM answers through its own lm_head.
The script reads top to bottom, so its functions are loaded from the source (train_common.script_functions)."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import shapely
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import train_common  # noqa: E402
from conftest import run_scripts  # noqa: E402
from model import ByteTokenizer, ManipulationVLA, ManipulationVLAConfig, hf_from_pretrained  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


VLM = train_common.script_functions('train_vlm.py', np=np, torch=torch, F=F, shapely=shapely, ByteTokenizer=ByteTokenizer,
                                    hf_from_pretrained=hf_from_pretrained)  # its functions, without running it
TINY = dict(image_size=32, hidden_size=32, num_heads=2, cnn_width=8, vision_grid=2, num_readout_tokens=2,
            head_hidden_dim=32, action_chunk_size=4)


def truth(state, coverage):
    """The answers from first principles: the T's centroid is (0, 40.71) in the block frame (bar 120x30 at
    y in [0, 30], stem 30x90 below it), angles in 45-degree bins, coverage as the env computes it."""
    def centroid(x, y, a):
        c = (3600 * 15 + 2700 * 75) / 6300
        return x - math.sin(a) * c, y + math.cos(a) * c

    def quad(dx, dy):
        return ('upper' if dy < 0 else 'lower') + (' left' if dx < 0 else ' right')
    (bx, by), (gx, gy) = centroid(*state[2:5]), centroid(*state[5:8])
    k = round(math.degrees(state[4] - state[7]) / 45) % 8
    return ['at the goal' if math.hypot(bx - gx, by - gy) < 20 else quad(bx - gx, by - gy),
            ['aligned', '45 degrees clockwise', '90 degrees clockwise', '135 degrees clockwise', '180 degrees',
             '135 degrees counterclockwise', '90 degrees counterclockwise', '45 degrees counterclockwise'][k],
            quad(state[0] - 256, state[1] - 256), 'yes' if coverage > 0.5 else 'no']


def agent_pixel(image):
    """Where the (royal blue) pusher is drawn: (col, row) in image pixels."""
    rows, cols = np.nonzero((image[..., 2] > 200) & (image[..., 0] < 100))
    return cols.mean(), rows.mean()


def test_vqa_answers_match_the_simulator(tmp_path):
    import data
    import envs
    import pusht
    env, expert, checked = envs.make_env('pusht'), envs.make_expert('pusht', seed=0), set()
    for seed in (0, 1):
        obs, info = env.reset(seed=seed)
        expert.reset()
        for t in range(60):
            obs, _, done, _, info = env.step(expert.get_action(env))
            if t % 6 == 0 or done:
                state = pusht.vqa_state('pusht', env)
                assert np.allclose(state, np.r_[pusht.get_state(env)[[0, 1, 4, 5, 6]], env.unwrapped.goal_pose])
                answers = list(pusht.vqa_answers('pusht', state).values())
                assert answers == truth(state, info['coverage']), (seed, t, state)
                checked.update(answers)
                col, row = agent_pixel(obs['pixels'])  # 'upper left' is the image's upper left
                assert abs(col * 512 / 96 - state[0]) < 10 and abs(row * 512 / 96 - state[1]) < 10
            if done:
                break
    env.close()
    assert len(checked) >= 6, checked  # several different answers were checked
    # the dataset: one episode per frame, one row per question, "question? answer" and the state stored with it
    VLM['record_vqa']('pusht', 3, tmp_path / 'vqa', seed=0)
    ds = data.LeRobotDataset(tmp_path / 'vqa')
    assert ds.meta.total_episodes == 3 and len(ds) == 12
    for i in range(len(ds)):
        q, a = VLM['split_qa'](ds.meta.tasks[int(ds.columns['task_index'][i])], 'what does the image show?')
        state = ds.columns['observation.environment_state'][i].astype(np.float64)
        assert pusht.vqa_answers('pusht', state)[q] == a
        image = ds.frames['observation.image'][i]
        col, row = agent_pixel(image)
        assert abs(col * 512 / 96 - state[0]) < 10 and abs(row * 512 / 96 - state[1]) < 10
        assert (image == ds.frames['observation.image'][i - i % 4]).all()  # one frame per episode


@pytest.mark.parametrize('task, start, later', [
    # Lift: at rest, the gripper open and away; after 60 expert steps the cube is grasped and 2+ cm up
    ('lift', {'is the cube lifted?': 'no', 'is the gripper holding the cube?': 'no',
              'where is the gripper relative to the cube?': 'away from the cube'},
     (60, {'is the cube lifted?': 'yes', 'is the gripper holding the cube?': 'yes', 'is the gripper open?': 'no',
           'where is the gripper relative to the cube?': 'at the cube'})),
    # ALOHA: the cube is dropped onto the table at the start; at step 150 the right arm carries it, at 350 the left
    ('aloha_transfer_cube', {'which arm holds the cube?': 'neither arm', 'does the right gripper touch the cube?': 'no'},
     (150, {'which arm holds the cube?': 'the right arm', 'is the cube on the table?': 'no'})),
    ('aloha_transfer_cube', {'does the left gripper touch the cube?': 'no'},
     (350, {'which arm holds the cube?': 'the left arm', 'does the right gripper touch the cube?': 'no'})),
])
def test_arm_task_answers_follow_the_expert(task, start, later, tmp_path):
    """The Lift and ALOHA questions, answered from the simulator's state along an expert rollout (seed 0), say
    what the expert is known to do by then; recorded frames keep the state their answers come from."""
    import data
    import envs
    module = envs.task_module(task)
    env, expert = envs.make_env(task, obs_type='state'), envs.make_expert(task)
    env.reset(seed=0)
    expert.reset()
    assert module.vqa_answers(task, module.vqa_state(task, env)).items() >= start.items()
    step, want = later
    for _ in range(step):
        env.step(expert.get_action(env))
    now = module.vqa_answers(task, module.vqa_state(task, env))
    assert now.items() >= want.items(), now
    env.close()
    VLM['record_vqa'](task, 2, tmp_path / 'vqa', seed=0)
    ds = data.LeRobotDataset(tmp_path / 'vqa')
    assert ds.meta.total_episodes == 2 and len(ds) == 2 * len(now)
    assert ds.frames['observation.image'].shape[1:] == (96, 96, 3) and ds.frames['observation.image'].std() > 10
    for i in range(len(ds)):
        q, a = VLM['split_qa'](ds.meta.tasks[int(ds.columns['task_index'][i])], 'what does the image show?')
        assert module.vqa_answers(task, ds.columns['observation.environment_state'][i].astype(np.float64))[q] == a


def test_answer_loss_overfits_a_fixed_batch():
    torch.manual_seed(0)
    model = ManipulationVLA(ManipulationVLAConfig(**TINY))
    tok, lm_head = model.tokenizer, VLM['build_lm_head'](model)
    assert lm_head is None  # tiny-qwen2: the head is tied to the input embeddings
    qas = [('where is the pusher?', 'upper left'), ('where is the pusher?', 'lower right'),
           ('does the block cover the goal?', 'yes'), ('does the block cover the goal?', 'no'),
           ('how is the block rotated relative to the goal?', '90 degrees clockwise'),
           ('where is the block relative to the goal?', 'at the goal')]
    images = torch.randint(0, 256, (len(qas), 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    q, a = zip(*qas)
    ids, mask, answer = VLM['text_batch'](tok, q, a)
    for row, sup, ans in zip(ids.tolist(), answer, a):  # the loss sees exactly ' answer' + eos, at the row's end
        supervised = [i for i, s in zip(row, sup) if s]
        assert supervised == VLM['encode'](tok, ' ' + ans) + [VLM['eos_id'](tok)] and sup[-1]
        assert VLM['decode'](tok, supervised) == ans
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = VLM['vqa_loss'](model, lm_head, images, ids, mask, answer)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses[::10]
    model.eval()
    pred = VLM['generate'](model, lm_head, tok, images, list(q), 24)
    assert sum(p == t for p, t in zip(pred, a)) >= 5, pred  # greedy decoding returns the memorized answers


def test_checkpoint_starts_behavioral_cloning(tmp_path):
    import envs
    ckpt = tmp_path / 'vlm'
    envs.record_demonstrations('pusht', 1, str(tmp_path / 'demos'))
    vlm, _ = run_scripts([  # one process: torch is imported once
        ['train_vlm.py', f'--dataset={tmp_path / "vqa"}', '--vqa_frames=4', '--eval_frames=2', '--max_iters=3',
         '--batch_size=4', '--warmup_iters=1', '--log_interval=1', '--hidden_size=32', '--num_heads=2', '--cnn_width=8',
         '--max_answer_tokens=4', f'--out_dir={ckpt}'],
        ['train_bc.py', '--task=pusht', f'--dataset={tmp_path / "demos"}', f'--init_from={ckpt}',
         f'--out_dir={tmp_path / "bc"}', '--max_iters=2', '--batch_size=8', '--warmup_iters=1', '--eval_interval=0',
         '--final_eval_episodes=0', '--augment=False']])
    assert 'tied to the input embeddings' in vlm.stdout
    ev = json.load(open(ckpt / 'vqa_eval.json'))
    assert ev['eval_pairs'] == 8 and 0 <= ev['before']['accuracy'] <= 1 and 0 <= ev['after']['accuracy'] <= 1
    model = ManipulationVLA.from_pretrained(str(ckpt))
    assert model.policy_info['stage'] == 'vlm' and (model.action_min == -1).all()  # no action statistics yet
    bc = ManipulationVLA.from_pretrained(str(tmp_path / 'bc'))
    stats = json.load(open(tmp_path / 'demos' / 'meta' / 'stats.json'))
    assert np.allclose(bc.action_min[0].numpy(), stats['action']['min'])  # the dataset's statistics went in
    assert bc.policy_info['tasks'][0]['task'] == 'pusht'


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    """train_vlm.py --resume: a run stopped after 2 of 4 iterations and resumed ends with the same weights as a run
    of 4 (the optimizer and the batch sampler continue; the LR schedule is fixed by --lr_decay_iters)."""
    from safetensors.torch import load_file
    VLM['record_vqa']('pusht', 4, tmp_path / 'vqa', seed=0)
    args = ['train_vlm.py', f'--dataset={tmp_path / "vqa"}', '--eval_frames=2', '--batch_size=4', '--warmup_iters=1',
            '--lr_decay_iters=4', '--ckpt_interval=2', '--eval_interval=0', '--hidden_size=32', '--num_heads=2',
            '--cnn_width=8', '--max_answer_tokens=4']
    runs = run_scripts([args + [f'--out_dir={tmp_path / out}', f'--max_iters={n}', f'--resume={resume}']
                        for out, n, resume in (('whole', 4, False), ('parts', 2, False), ('parts', 4, True))])
    assert len(runs) == 3 and 'resumed from' in runs[-1].stdout and 'at iteration 2' in runs[-1].stdout
    whole, parts = (load_file(str(tmp_path / d / 'model.safetensors')) for d in ('whole', 'parts'))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
    losses = [r['iter'] for r in map(json.loads, open(tmp_path / 'parts' / 'log.jsonl')) if 'loss' in r]
    assert losses == [2, 4]  # each logged iteration once, across the two parts


def test_hub_caption_dataset_trains_through_the_hub_cache(tmp_path):
    """--dataset=<hub id>: an image-text dataset (captions, 32x32 frames) in the LeRobot layout, put where
    huggingface_hub keeps a downloaded dataset (HF_HOME/hub/datasets--<user>--<name>/snapshots/<commit>, refs/main
    naming the commit). Offline (HF_HUB_OFFLINE=1), snapshot_download returns that snapshot: the code path of a
    real download minus the network. Held-out PushT frames are resized to the dataset's 32x32."""
    import dataset_writer
    commit = '0123456789abcdef0123456789abcdef01234567'
    repo = tmp_path / 'hf' / 'hub' / 'datasets--tester--shapes'
    (repo / 'refs').mkdir(parents=True)
    (repo / 'refs' / 'main').write_text(commit)
    features = {'observation.image': {'dtype': 'image', 'shape': (32, 32, 3), 'names': ['height', 'width', 'channels']}}
    writer = dataset_writer.LeRobotDatasetWriter(repo / 'snapshots' / commit, fps=10, features=features)
    for color, rgb in (('red', (255, 0, 0)), ('green', (0, 255, 0)), ('blue', (0, 0, 255))):
        image = np.zeros((32, 32, 3), np.uint8)
        image[8:24, 8:24] = rgb
        writer.add_frame({'observation.image': image}, task=f'a {color} square on black')  # a caption
        writer.add_frame({'observation.image': image}, task=f'what color is the square? {color}')
        writer.save_episode()
    writer.finalize()
    out = tmp_path / 'vlm'
    env = dict(os.environ, HF_HOME=str(tmp_path / 'hf'), HF_HUB_OFFLINE='1')
    r = subprocess.run([sys.executable, 'train_vlm.py', '--dataset=tester/shapes', '--eval_frames=2', '--max_iters=2',
                        '--batch_size=4', '--warmup_iters=1', '--hidden_size=32', '--num_heads=2', '--cnn_width=8',
                        '--max_answer_tokens=4', f'--out_dir={out}'], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'dataset tester/shapes: 6 QA rows from 3 frames' in r.stdout
    model = ManipulationVLA.from_pretrained(str(out))
    assert model.config.image_hw == (32, 32) and model.policy_info['dataset'] == 'tester/shapes'
    qas = [VLM['split_qa'](t, 'what does the image show?') for t in ('a red square on black',
                                                                  'what color is the square? red')]
    assert qas == [('what does the image show?', 'a red square on black'), ('what color is the square?', 'red')]
    assert not (tmp_path / 'tester').exists() and not os.path.exists(os.path.join(REPO, 'tester'))  # nothing recorded


@pytest.fixture(scope='module')
def tiny_causal_lm(tmp_path_factory):
    """A tiny Qwen2ForCausalLM with an UNTIED lm_head and a WordLevel tokenizer over the VQA vocabulary, saved with
    save_pretrained: a stand-in for Qwen/Qwen2-*."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    root = tmp_path_factory.mktemp('hf') / 'qwen'
    texts = ['where is the block relative to the goal? upper left lower right at the goal',
             'how is the block rotated? aligned 45 90 135 180 degrees clockwise counterclockwise',
             'where is the pusher? does the block cover the goal? yes no']
    tok = Tokenizer(models.WordLevel(unk_token='[UNK]'))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=['[PAD]', '[UNK]', '<eos>']))
    torch.manual_seed(0)
    lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                      tie_word_embeddings=False))
    lm.save_pretrained(root)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token='[UNK]', eos_token='<eos>',
                            pad_token='[PAD]').save_pretrained(root)
    return str(root), lm.lm_head.weight.detach().clone()


def test_pretrained_lm_trains_through_its_own_lm_head(tiny_causal_lm):
    folder, saved_head = tiny_causal_lm
    torch.manual_seed(0)
    model = ManipulationVLA(ManipulationVLAConfig(**TINY, vlm_backbone=folder))
    lm_head = VLM['build_lm_head'](model)
    assert lm_head is not None and torch.equal(lm_head.weight, saved_head)  # the LM's real head, not tied
    assert not torch.equal(lm_head.weight, model.llm.get_input_embeddings().weight)
    tok = model.tokenizer
    ids, mask, answer = VLM['text_batch'](tok, ['where is the pusher?', 'does the block cover the goal?'],
                                          ['upper left', 'no'])
    assert VLM['decode'](tok, [i for i, s in zip(ids[0].tolist(), answer[0]) if s]) == 'upper left'
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = VLM['vqa_loss'](model, lm_head, images, ids, mask, answer)  # one iteration
    loss.backward()
    assert torch.isfinite(loss) and model.vision_proj.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lm_head.parameters())  # frozen: stage 1 moves the images, not the words
    opt.step()
    assert len(VLM['generate'](model, lm_head, tok, images, ['where is the pusher?'] * 2, 3)) == 2
