"""Tests for pusht.py and envs.py: exact state copies, the planning simulator, frame conversion, the PushT expert
(solves seeds smoothly, answers from arbitrary states) and demo recording read back by data.py."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import envs  # noqa: E402
import pusht  # noqa: E402

TASK = "pusht"


def _advance(env, seed, n=8):
    """A mid-episode state with the block in contact and moving: reset, then drive the agent into it."""
    env.reset(seed=seed)
    block_xy = pusht.get_state(env)[4:6]
    for _ in range(n):
        env.step(block_xy.astype(np.float32))
    return pusht.get_state(env)


def test_set_state_roundtrip_and_determinism():
    a, b, c = (envs.make_env(TASK, obs_type="state") for _ in range(3))
    s = _advance(a, seed=3)
    assert s.shape == (pusht.STATE_DIM,) and s.dtype == np.float64
    assert np.abs(s[2:4]).sum() > 0, "agent should be moving in this state"
    _advance(b, seed=3, n=12)  # b has its own history of contacts, c a fresh episode: set_state must
    c.reset(seed=7)  # erase both for the copies to agree
    pusht.set_state(b, s)
    pusht.set_state(c, s)
    np.testing.assert_array_equal(pusht.get_state(b), s)
    rng = np.random.default_rng(0)
    for _ in range(15):
        act = rng.uniform(100, 400, size=2).astype(np.float32)
        b.step(act)
        c.step(act)
        np.testing.assert_array_equal(pusht.get_state(b), pusht.get_state(c))
    assert not np.allclose(pusht.get_state(b), s), "the copies should have moved"


def test_copy_state_copies_what_the_camera_sees():
    """DAgger's expert branches start from copy_state: the copy's frame is the original's (the bodies' pose, which
    set_state alone rendered stale until the next step, and the drawn last target), and both move alike."""
    a, b = envs.make_env(TASK), envs.make_env(TASK)
    obs, _ = a.reset(seed=3)
    for target in ([100, 100], [200, 300], [250, 250]):
        obs, *_ = a.step(np.array(target, np.float32))
    b.reset(seed=9)
    copy = pusht.copy_state(a, b)
    np.testing.assert_array_equal(copy["pixels"], obs["pixels"])
    np.testing.assert_array_equal(copy["agent_pos"], obs["agent_pos"])
    for target in ([260, 240], [300, 200]):
        oa, *_ = a.step(np.array(target, np.float32))
        ob, *_ = b.step(np.array(target, np.float32))
        np.testing.assert_array_equal(oa["pixels"], ob["pixels"])


def test_set_state_has_no_reset_to_state_shift():
    """gym-pusht's reset_to_state sets the block position before its angle and shifts it; we must not."""
    env = envs.make_env(TASK, obs_type="state")
    env.reset(seed=0)
    five = np.array([100.0, 100.0, 300.0, 200.0, 1.0])
    pusht.set_state(env, five)
    s = pusht.get_state(env)
    np.testing.assert_array_equal(s[[0, 1, 4, 5, 6]], five)
    with pytest.raises(ValueError, match="state must have"):
        pusht.set_state(env, np.zeros(7))


def test_planning_sim_matches_env_step_bitwise():
    env = envs.make_env(TASK, obs_type="state")
    s = _advance(env, seed=5)
    sim = pusht._Sim()
    pusht.set_state(sim.env, s)
    pusht.set_state(env, s)
    for t in range(10):
        act = np.array([250 + 10 * t, 300 - 5 * t], dtype=np.float32)
        env.step(act)
        sim.step(act)
        np.testing.assert_array_equal(pusht.get_state(sim.env), pusht.get_state(env))
    block = pusht.get_state(env)[4:7]
    for t in range(15):  # then straight into the block: the two must agree through the contacts as well
        act = pusht.get_state(env)[4:6].astype(np.float32)
        env.step(act)
        sim.step(act)
        np.testing.assert_array_equal(pusht.get_state(sim.env), pusht.get_state(env))
    assert np.abs(pusht.get_state(env)[4:7] - block).max() > 1.0  # it was pushed


def test_obs_to_frame_and_unknown_task():
    env = envs.make_env(TASK)
    obs, _ = env.reset(seed=0)
    frame = envs.obs_to_frame(TASK, obs)
    spec = envs.TASKS[TASK]
    img, st = frame[spec["image_keys"][0]], frame[spec["state_key"]]
    assert img.dtype == np.uint8 and img.shape == (96, 96, 3) and img.std() > 0
    assert st.dtype == np.float32 and st.shape == (spec["state_dim"],)
    np.testing.assert_allclose(st, pusht.get_state(env)[:2], atol=1e-3)
    with pytest.raises(ValueError, match="pusht"):
        envs.make_env("pushq")
    with pytest.raises(ValueError, match="pixels_agent_pos"):
        envs.obs_to_frame(TASK, np.zeros(5))


def test_goal_geometry_matches_env_coverage():
    """Our shapely coverage and keypoints agree with the env's own success test."""
    env = envs.make_env(TASK, obs_type="state")
    env.reset(seed=0)
    pusht.set_state(env, np.r_[50.0, 50.0, 0, 0, pusht.GOAL_POSE, 0, 0, 0])
    assert pusht.keypoint_error(pusht.GOAL_POSE) < 1e-9
    _, _, terminated, _, info = env.step(np.array([50, 50], np.float32))
    assert terminated and envs.is_success(info) and envs.coverage(info) > 0.999
    pose = pusht.GOAL_POSE + [3.0, -2.0, 0.05]
    pusht.set_state(env, np.r_[50.0, 50.0, 0, 0, pose, 0, 0, 0])
    _, _, terminated, _, info = env.step(np.array([50, 50], np.float32))
    assert not terminated and abs(pusht._coverage_of(pose) - envs.coverage(info)) < 1e-9


@pytest.mark.parametrize("seed", [envs.TEST_SEED, envs.TEST_SEED + 1])
def test_expert_solves_seed_smoothly(seed):
    ep = envs.run_expert_episode(TASK, seed, render=False)
    assert ep["success"] and ep["coverage"] > 0.95, f"expert failed seed {seed} (coverage {ep['coverage']:.3f})"
    assert ep["steps"] < envs.TASKS[TASK]["max_steps"]
    assert ep["max_delta"] <= 20.0, "per-step target change must respect max_step (default 20 px)"
    assert ep["actions"].dtype == np.float32 and ((ep["actions"] >= 0) & (ep["actions"] <= 512)).all()


def test_expert_answers_from_arbitrary_states():
    """DAgger queries: random agent / block poses the expert never visited, given as state vectors."""
    rng = np.random.default_rng(0)
    env = envs.make_env(TASK, obs_type="state")
    env.reset(seed=0)
    expert = envs.make_expert(TASK, seed=0, max_step=15.0)
    for _ in range(4):
        s = np.zeros(pusht.STATE_DIM)
        s[0:2] = rng.uniform(30, 480, 2)
        s[4:6] = rng.uniform(90, 420, 2)
        s[6] = rng.uniform(-np.pi, np.pi)
        pusht.set_state(env, s)
        env.step(s[:2].astype(np.float32))  # let physics separate an agent spawned inside the block
        s = pusht.get_state(env)
        a = expert.get_action(s)
        assert a.shape == (2,) and a.dtype == np.float32 and np.isfinite(a).all()
        assert np.linalg.norm(a - s[:2]) <= 15.0, "first action must start from the agent, within max_step"
    # the expert also takes the live env and the 5-dim state obs, and rejects images
    assert expert.get_action(env).shape == (2,)
    assert expert.get_action(pusht.get_state(env)[[0, 1, 4, 5, 6]]).shape == (2,)
    with pytest.raises(ValueError, match="get_state"):
        expert.get_action(np.zeros((96, 96, 3)))


def test_expert_from_perturbed_state_keeps_improving():
    """Off the expert's path (block knocked away mid-episode), its plan reduces the keypoint error."""
    env = envs.make_env(TASK, obs_type="state")
    env.reset(seed=11)
    expert = envs.make_expert(TASK, seed=0)
    s = pusht.get_state(env)
    s[4:7] = [180.0, 330.0, 2.0]  # move the block by hand, as a learner's mistake would
    pusht.set_state(env, s)
    before = pusht.keypoint_error(s[[4, 5, 6]])
    for _ in range(60):
        env.step(expert.get_action(env))
    assert pusht.keypoint_error(pusht.get_state(env)[[4, 5, 6]]) < 0.6 * before


def test_record_demonstrations_roundtrip(tmp_path):
    out = tmp_path / "demos"
    summary = envs.record_demonstrations(TASK, 2, out, seed=3, num_workers=1)
    assert summary["episodes"] == 2 and summary["max_action_delta"] <= 20.0
    ds = data.LeRobotDataset(out)
    spec = envs.TASKS[TASK]
    assert len(ds) == summary["frames"] and ds.meta.fps == spec["fps"]
    assert len(ds.meta.episodes) == 2
    item = ds[len(ds) - 1]
    assert item["task"] == spec["instruction"]
    assert tuple(item["observation.image"].shape) == (3, 96, 96)
    assert tuple(item["observation.state"].shape) == (2,) and tuple(item["action"].shape) == (2,)
    stats = json.loads((out / "meta" / "stats.json").read_text())
    for key in ("action", "observation.state", "observation.image"):
        assert key in stats
    assert 0 <= np.min(stats["action"]["min"]) and np.max(stats["action"]["max"]) <= 512
    # the recorded actions are the expert's bounded targets: consecutive ones within 20 px
    actions = np.stack([ds[i]["action"].numpy() for i in range(len(ds)) if ds[i]["episode_index"] == 0])
    assert np.linalg.norm(np.diff(actions, axis=0), axis=1).max() <= 20.0
    with pytest.raises(ValueError, match="VAL_SEED"):
        envs.record_demonstrations(TASK, 1, tmp_path / "bad", seed=envs.VAL_SEED)


def test_record_with_spawned_workers_from_unguarded_script(tmp_path):
    """train_bc.py is a script without `if __name__ == "__main__"`: spawned workers must not re-run it. They render
    the camera at the size asked for (48 here, the task's is 96)."""
    script = tmp_path / "script.py"
    script.write_text(f"import sys\nprint('TOP LEVEL', flush=True)\nsys.path.insert(0, {str(Path(envs.__file__).parent)!r})\n"
                      f"import envs\nenvs.record_demonstrations('pusht', 1, {str(tmp_path / 'demos')!r}, seed=3, "
                      f"num_workers=2, image_size=48)\n")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("TOP LEVEL") == 1, "a worker re-ran the parent script"
    ds = data.LeRobotDataset(tmp_path / "demos")
    assert len(ds.meta.episodes) == 1 and ds.frames["observation.image"].shape[1:] == (48, 48, 3)
