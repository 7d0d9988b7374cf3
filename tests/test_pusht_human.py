"""Learning from human PushT demonstrations (issue 15): the pusht_human preset resolves through --task,
a hub dataset id downloads into the cache, observation history flows from delta_timestamps through the
model, eval and export, the dataset's own task text conditions the policy and is stored, frames of
another size are resized or refused, and a 2-episode slice of the real human data trains and evaluates."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import data  # noqa: E402
import dataset_writer  # noqa: E402
import envs  # noqa: E402
from conftest import check_checkpoint_runs  # noqa: E402
from deploy import ExportedPolicy, export_policy, load_exported  # noqa: E402
from policy import load_policy  # noqa: E402
from eval import VLAPolicy  # noqa: E402
from model import ManipulationVLA, ManipulationVLAConfig  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
HUMAN = Path(REPO).parent / "shared" / "datasets" / "pusht_human_v30"
TEXT = "Push the T-shaped block onto the T-shaped target."
FEATURES = {"observation.image": {"dtype": "image", "shape": [96, 96, 3], "names": ["height", "width", "channels"]},
            "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "y"]},
            "action": {"dtype": "float32", "shape": [2], "names": ["x", "y"]}}


def script_config(script, argv):
    """The config globals of a training script after the configurator ran on argv (nothing else runs)."""
    src = open(os.path.join(REPO, script)).read()
    head = src[:src.index("exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py'))")]
    g = {"__file__": os.path.join(REPO, script)}
    exec(head, g)
    old = sys.argv
    sys.argv = [script] + argv
    try:
        exec(open(os.path.join(REPO, "configurator.py")).read(), g)
    finally:
        sys.argv = old
    return g["config"]


@pytest.mark.parametrize("preset", sorted(p[:-3] for p in os.listdir(os.path.join(REPO, "config")) if p.endswith(".py")))
def test_every_preset_resolves_through_task(preset):
    """A preset names a simulator task, or (task '') a dataset that trains without one (config/libero.py)."""
    cfg = script_config("train_bc.py", [f"--task={preset}"])
    if cfg["task"] == "":
        assert cfg["dataset"], f"--task={preset} names neither a simulator task nor a dataset"
    else:
        assert cfg["task"] in envs.TASKS, f"--task={preset} resolved to unknown simulator task {cfg['task']!r}"


def test_pusht_human_preset_is_the_hub_dataset():
    cfg = script_config("train_bc.py", ["--task=pusht_human", "--max_iters=7"])
    assert (cfg["task"], cfg["dataset"], cfg["max_iters"]) == ("pusht", "lerobot/pusht", 7)
    assert cfg["augment_shift"] == 4 and cfg["augment_mirror"] and cfg["final_eval_episodes"] >= 200
    assert (cfg["end_frames"], cfg["end_repeats"]) == (20, 3)


def write_dataset(root, episodes=2, length=6, text=TEXT, size=96):
    """Episodes whose frame t has image value 10 t + episode and state (t, episode): easy to trace."""
    feats = json.loads(json.dumps(FEATURES))
    feats["observation.image"]["shape"] = [size, size, 3]
    with dataset_writer.LeRobotDatasetWriter(root, fps=10, features=feats) as w:
        for e in range(episodes):
            for t in range(length):
                w.add_frame({"observation.image": np.full((size, size, 3), 10 * t + e, np.uint8),
                             "observation.state": np.array([t, e], np.float32),
                             "action": np.array([t + 1, e], np.float32)}, task=text)
            w.save_episode()
    return str(root)


def test_hub_id_downloads_into_the_cache(tmp_path, monkeypatch):
    """data.py resolves 'lerobot/pusht' with huggingface_hub.snapshot_download (repo_type='dataset') into the
    hub cache; the stand-in puts a dataset where the hub client would and returns its snapshot folder."""
    import huggingface_hub
    source = write_dataset(tmp_path / "upstream")
    cache = tmp_path / "hf_cache"
    calls = []

    def fake_snapshot_download(repo_id, repo_type=None, local_dir=None, **kw):
        calls.append((repo_id, repo_type, local_dir))
        snapshot = cache / f"{repo_type}s--{repo_id.replace('/', '--')}" / "snapshots" / "0123abcd"
        shutil.copytree(source, snapshot)
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)
    ds = data.ManipulationDataset("lerobot/pusht", ["observation.image"], chunk_size=4)
    assert calls == [("lerobot/pusht", "dataset", None)]  # no local_dir: the usual cache
    snapshot = cache / "datasets--lerobot--pusht" / "snapshots" / "0123abcd"
    assert ds.ds.root == snapshot
    assert (snapshot / "meta" / "info.json").exists() and list((snapshot / "data").rglob("*.parquet"))
    assert len(ds) == 12 and ds.tasks() == [TEXT]

    def offline(*a, **kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(RuntimeError, match="huggingface-cli download --repo-type dataset lerobot/pusht"):
        data.LeRobotDataset("lerobot/pusht")


def test_observation_history_windows_pad_at_the_episode_start(tmp_path):
    ds = data.ManipulationDataset(write_dataset(tmp_path / "d"), ["observation.image"], chunk_size=3, n_obs_steps=2)
    assert ds.delta_timestamps["observation.image"] == [-0.1, 0.0] and ds.delta_timestamps["action"] == [0.0, 0.1, 0.2]
    b = ds.get_batch([0, 3, 6])  # episode 0 t=0, episode 0 t=3, episode 1 t=0
    assert b["images"].shape == (3, 2, 1, 3, 96, 96) and b["proprio"].shape == (3, 2, 2)
    assert b["images"][:, :, 0, 0, 0, 0].tolist() == [[0, 0], [20, 30], [1, 1]]  # t-1 clamped to the first frame
    assert b["proprio"][1].tolist() == [[2, 0], [3, 0]]
    assert b["action"][1, :, 0].tolist() == [4, 5, 6]
    one = data.ManipulationDataset(ds.ds, ["observation.image"], chunk_size=3)  # n_obs_steps=1 keeps the old shapes
    assert one.get_batch([3])["images"].shape == (1, 1, 3, 96, 96) and one.get_batch([3])["proprio"].shape == (1, 2)


def tiny_model(n_obs_steps=2, head="mlp", image_size=96):
    torch.manual_seed(0)
    cfg = ManipulationVLAConfig(image_size=image_size, hidden_size=32, num_heads=2, cnn_width=8, vision_grid=2,
                                num_readout_tokens=2, head_hidden_dim=32, denoiser_dim=16, action_chunk_size=4,
                                action_head_type=head, n_obs_steps=n_obs_steps)
    model = ManipulationVLA(cfg)
    model.set_normalization_stats({"observation.state": {"mean": [256.0] * 2, "std": [100.0] * 2},
                                   "action": {"min": [0.0] * 2, "max": [512.0] * 2}})
    return model.eval()


def frame(value, state=(100.0, 200.0), size=96):
    return {"observation.image": np.full((size, size, 3), value, np.uint8),
            "observation.state": np.array(state, np.float32)}


def test_history_trains_and_the_policy_feeds_the_last_steps(tmp_path):
    ds = data.ManipulationDataset(write_dataset(tmp_path / "d"), ["observation.image"], chunk_size=4, n_obs_steps=2)
    model = tiny_model()
    model.train()
    loss = model(ds.get_batch([0, 1, 2, 7]))["loss"]
    loss.backward()
    assert torch.isfinite(loss) and model.obs_step_embed.grad is not None
    model.eval()
    seen = []
    predict = model.predict_action
    model.predict_action = lambda batch, instruction_cache=None, guide=None: seen.append(batch["images"].clone()) or \
        predict(batch, instruction_cache, guide)
    policy = VLAPolicy(model, TEXT, n_action_steps=2)
    for v in (5, 6, 7):
        policy(frame(v))
    # predictions at t=0 (the first frame fills the history) and t=2 (frames 1 and 2); frame 1 was observed unused
    assert [s[0, :, 0, 0, 0, 0].tolist() for s in seen] == [[5, 5], [6, 7]]
    with pytest.raises(ValueError, match="n_obs_steps=2"):
        model.predict_action({"images": torch.zeros(1, 1, 3, 96, 96, dtype=torch.uint8), "proprio": torch.zeros(1, 2),
                              "instruction": [TEXT]})


def test_export_with_history_matches_eager_policy(tmp_path):
    model = tiny_model()
    path = export_policy(model, TEXT, str(tmp_path / "p.pt"),
                         dict(task="pusht", instruction=TEXT, image_keys=["observation.image"],
                              state_key="observation.state", action_dim=2, n_action_steps=2, image_size=96,
                              image_hw=[96, 96], n_obs_steps=2, temporal_ensemble_coeff=None))
    module, meta = load_exported(path)
    exported, eager = ExportedPolicy(module, meta), VLAPolicy(model, TEXT, n_action_steps=2)
    for v in (3, 50, 90, 200, 7):
        f = frame(v, state=(v, 2 * v))
        assert np.allclose(exported(f), eager(f), atol=1e-4)


def test_frames_of_another_size_are_resized_or_refused():
    s = data.frame_to_model_input(frame(80, size=96), ["observation.image"], image_hw=(48, 48))
    assert s["images"].shape == (1, 3, 48, 48) and s["images"].dtype == torch.uint8 and int(s["images"][0, 0, 5, 5]) == 80
    with pytest.raises(ValueError, match="96x96 .* trained on 120x160"):
        data.frame_to_model_input(frame(80, size=96), ["observation.image"], image_hw=(120, 160))
    model = tiny_model(n_obs_steps=1, image_size=64)
    with pytest.raises(ValueError, match=r"\(96, 96\).*\(64, 64\)"):
        model.predict_action({"images": torch.zeros(1, 1, 3, 96, 96, dtype=torch.uint8), "proprio": torch.zeros(1, 2),
                              "instruction": [TEXT]})
    policy = VLAPolicy(model, TEXT, n_action_steps=1)  # eval: a 96x96 simulator frame for a 64x64 policy is resized
    assert np.isfinite(policy(frame(80))).all()


def test_shift_batch_is_a_shifted_copy():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 1, 3, 16, 16), dtype=torch.uint8, generator=g)
    assert torch.equal(data.shift_batch(x, 0), x)
    y = data.shift_batch(x, 2, generator=g)
    assert y.shape == x.shape and y.dtype == x.dtype
    padded = torch.nn.functional.pad(x.view(5, 3, 16, 16).float(), (2, 2, 2, 2), mode="replicate")
    for i in range(5):  # each output is one 16x16 window of its replicate-padded input
        assert any(torch.equal(y[i, 0].float(), padded[i, :, dy:dy + 16, dx:dx + 16])
                   for dy in range(5) for dx in range(5))


def test_mirror_batch_is_the_reflected_scene():
    """PushT's symmetry (tasks.py mirror_line): a mirrored frame is what the simulator renders for the reflected
    state, and state and actions are reflected with it, so a mirrored demonstration is a valid one."""
    import pusht
    env = pusht.make_env("pusht")
    env.reset(seed=0)
    sim, L = env.unwrapped, envs.TASKS["pusht"]["mirror_line"]
    rng = np.random.default_rng(0)
    frames, reflected, states, actions = [], [], [], []
    for _ in range(12):
        (ax, ay), (bx, by), th, (tx, ty) = rng.uniform(60, 450, 2), rng.uniform(120, 390, 2), rng.uniform(-3, 3), rng.uniform(60, 450, 2)
        pusht.set_state(env, [ax, ay, bx, by, th])
        sim._last_action = np.array([tx, ty])  # gym-pusht draws the last target as a cross: it is reflected too
        frames.append(sim.get_obs()["pixels"])
        pusht.set_state(env, [L - ay, L - ax, L - by, L - bx, np.pi / 2 - th])  # the T's axis angle th -> pi/2 - th
        sim._last_action = np.array([L - ty, L - tx])
        reflected.append(sim.get_obs()["pixels"])
        states.append([ax, ay])
        actions.append([[tx, ty], [ax, ty]])
    to_batch = lambda f: torch.from_numpy(np.stack(f)).permute(0, 3, 1, 2)[:, None].contiguous()  # (B, 1, 3, H, W)
    batch = {"images": to_batch(frames), "proprio": torch.tensor(states).float(), "action": torch.tensor(actions).float()}
    out = data.mirror_batch(batch, L, generator=torch.Generator().manual_seed(0))
    flipped = (out["proprio"] != batch["proprio"]).any(-1)
    assert 0 < flipped.sum() < 12  # a random half, not all or none
    want = torch.where(flipped.view(-1, 1, 1, 1, 1), to_batch(reflected), batch["images"])
    assert (out["images"].float() - want.float()).abs().mean() < 1.0  # of 255: the renderer's edge pixels differ
    assert torch.equal(out["images"][~flipped], batch["images"][~flipped])
    s, a = batch["proprio"][flipped], batch["action"][flipped]
    assert torch.allclose(out["proprio"][flipped], torch.stack([L - s[:, 1], L - s[:, 0]], -1))
    assert torch.allclose(out["action"][flipped], torch.stack([L - a[..., 1], L - a[..., 0]], -1))
    every = data.mirror_batch(batch, L, p=1.0)  # p=1 reflects every sample, and a reflection undoes itself
    assert (every["images"].float() - to_batch(reflected).float()).abs().mean() < 1.0
    twice = data.mirror_batch(every, L, p=1.0)
    assert torch.equal(twice["images"], batch["images"])
    assert torch.allclose(twice["proprio"], batch["proprio"]) and torch.allclose(twice["action"], batch["action"])
    with pytest.raises(ValueError, match="square images"):
        data.mirror_batch({**batch, "images": batch["images"][..., :80]}, L)


def test_mirror_needs_a_symmetric_task():
    r = subprocess.run([sys.executable, "train_bc.py", "--task=aloha_transfer_cube", "--augment_mirror=True"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "mirror-symmetric" in r.stderr and "['pusht']" in r.stderr


@pytest.mark.skipif(not HUMAN.exists(), reason="../shared/datasets/pusht_human_v30 not present (a user's clone)")
def test_human_slice_trains_evaluates_and_deploys(tmp_path):
    """Two human episodes, a few iterations: the stored instruction is the dataset's, eval and deploy use it."""
    out = str(tmp_path / "human")
    r = subprocess.run([sys.executable, "train_bc.py", "--task=pusht_human", f"--dataset={HUMAN}",
                        "--train_episodes=[0, 1]", f"--out_dir={out}", "--max_iters=4", "--batch_size=8",
                        "--warmup_iters=1", "--log_interval=1", "--eval_interval=2", "--eval_episodes=1",
                        "--final_eval_episodes=1", "--eval_max_steps=20", "--ckpt_interval=4", "--hidden_size=32",
                        "--num_heads=2", "--cnn_width=8", "--action_head_type=diffusion", "--n_obs_steps=2",
                        "--diffusion_inference_steps=2", "--end_frames=3", "--end_repeats=2"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "differs from envs.TASKS['pusht'] instruction" in r.stdout  # said, not silent
    assert "each episode's last 3 frames 2x" in r.stdout  # --end_frames reaches the epoch
    model = ManipulationVLA.from_pretrained(out)
    stored = model.policy_info["tasks"][0]  # config.json carries what eval.py and deploy.py need
    assert stored["instruction"] == TEXT and stored["instructions"] == [TEXT] and stored["task"] == "pusht"
    assert model.config.n_obs_steps == 2 and model.config.image_hw == (96, 96)
    m = json.load(open(os.path.join(out, "eval.json")))
    assert m["n_episodes"] == 1 and 0.0 <= m["avg_max_reward"] <= 1.0
    check_checkpoint_runs(out)  # eval.py, deploy.py export (to check.pt) and deploy.py run
    module, meta = load_exported(os.path.join(out, "check.pt"))
    assert meta["instruction"] == TEXT and meta["n_obs_steps"] == 2
    settings, policy = load_policy(os.path.join(out, "best"))  # best/ (validation at iteration 2): the same format
    assert settings["instruction"] == TEXT and policy.n_obs_steps == 2


def test_every_model_field_is_a_config_key():
    from model import config_defaults
    cfg = script_config("train_bc.py", ["--diffusion_inference_steps=3", "--hidden_size=64", "--use_depth=True"])
    assert set(config_defaults()) <= set(cfg)
    assert (cfg["diffusion_inference_steps"], cfg["hidden_size"], cfg["use_depth"]) == (3, 64, True)


def test_epoch_rows_repeat_each_episodes_last_frames(tmp_path):
    ds = data.ManipulationDataset(write_dataset(tmp_path / "d", episodes=2, length=6), ["observation.image"], chunk_size=3)
    assert data.epoch_rows(ds).tolist() == list(range(12))  # off: every frame once, in order
    counts = np.bincount(data.epoch_rows(ds, end_frames=2, end_repeats=3), minlength=12)
    assert counts.tolist() == [1, 1, 1, 1, 3, 3] * 2  # frames t=4, 5 of both episodes, three times each
    with pytest.raises(ValueError, match="end_repeats a whole number"):
        data.epoch_rows(ds, end_frames=2, end_repeats=1.5)
