"""Tests for lift.py: robosuite's Lift (Panda) resets, steps and renders headless; seeds place the cube
reproducibly; the scripted reach-grasp-lift expert solves fixed seeds, also after being knocked off its path;
recorded demos read back as a LeRobot dataset."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import lift  # noqa: E402  (sets MUJOCO_GL=egl before mujoco / robosuite are imported)

from tasks import TEST_SEED  # noqa: E402

TASK = "lift"
SPEC = lift.SPECS[TASK]


def red_pixels(img):
    """The cube is the only red thing in the scene."""
    img = img.astype(int)
    return int(((img[..., 0] - np.maximum(img[..., 1], img[..., 2])) > 60).sum())


def test_env_resets_steps_and_renders_headless():
    assert os.environ["MUJOCO_GL"] == "egl"
    env = lift.make_env(TASK)
    obs, info = env.reset(seed=0)
    assert not info["is_success"]
    frame = lift.obs_to_frame(TASK, obs)
    img, state = frame[SPEC["image_keys"][0]], frame[SPEC["state_key"]]
    assert img.dtype == np.uint8 and img.shape == (96, 96, 3) and img.std() > 20
    assert state.dtype == np.float32 and state.shape == (SPEC["state_dim"],)
    assert 15 <= red_pixels(img) <= 150, f"expected the cube as a small red blob, got {red_pixels(img)} px"
    big = lift.obs_to_frame(TASK, lift.make_env(TASK, image_size=192).reset(seed=0)[0])[SPEC["image_keys"][0]]
    assert big.shape == (192, 192, 3) and 2.5 * red_pixels(img) <= red_pixels(big) <= 6 * red_pixels(img)
    # upright: the white table fills the bottom of the agentview image, the robot and the floor are at the top
    assert img[-20:].mean() > img[:10].mean() + 30
    u = env.unwrapped
    np.testing.assert_allclose(state[:3], u.eef_pos(), atol=1e-6)
    assert u.eef_pos()[2] > u.cube_pos()[2] + 0.1  # the gripper starts well above the cube
    assert env.action_space.shape == (SPEC["action_dim"],) == (u._env.action_dim,)
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))  # stay put
    assert reward == 0 and not terminated and not truncated and not info["is_success"]
    np.testing.assert_allclose(obs["agent_pos"][:3], state[:3], atol=0.01)
    obs, *_ = env.step(np.array([0, 0, 1, 0], np.float32))  # +z goes up
    assert obs["agent_pos"][2] > state[2] + 0.003
    assert env.render().shape == (240, 320, 3)
    with pytest.raises(ValueError, match="obs_type"):
        lift.obs_to_frame(TASK, np.zeros(5))
    env.close()


def test_seeds_place_the_cube_reproducibly():
    env = lift.make_env(TASK, obs_type="state")
    np.random.seed(123)
    expected = np.random.RandomState(123).rand(3)
    poses = []
    for seed in (5, 5, 6):
        obs, _ = env.reset(seed=seed)
        assert obs.shape == (SPEC["state_dim"],)
        poses.append(np.r_[env.unwrapped.cube_pos(), env.unwrapped.sim.data.qpos[:7]])
    np.testing.assert_array_equal(poses[0], poses[1])
    assert not np.allclose(poses[0][:3], poses[2][:3])
    assert np.abs(poses[0][:2]).max() <= 0.031  # robosuite's placement box: +-3 cm around the table center
    np.testing.assert_array_equal(np.random.rand(3), expected)  # the global numpy RNG was left alone
    # a reused env replays a seed exactly (what evaluation and recording rely on)
    first = lift.run_expert_episode(TASK, 7, render=False, env=env)
    again = lift.run_expert_episode(TASK, 7, render=False, env=env)
    np.testing.assert_array_equal(first["actions"], again["actions"])


@pytest.mark.parametrize("seed", [TEST_SEED, TEST_SEED + 1, TEST_SEED + 2])
def test_expert_succeeds(seed):
    ep = lift.run_expert_episode(TASK, seed, render=False)
    assert ep["success"], f"the expert failed seed {seed}"
    assert ep["steps"] < SPEC["max_steps"] and ep["actions"].shape == (ep["steps"], SPEC["action_dim"])
    assert ep["actions"].dtype == np.float32 and np.abs(ep["actions"]).max() <= 1.0
    assert np.abs(ep["actions"][:, :3]).max() <= 0.5 + 1e-6  # bounded motion per step


@pytest.mark.parametrize("knock", ["random", "closed_early"])
def test_expert_corrects_off_path(knock):
    """What DAgger and eval.py --policy=expert need: the expert reads the current state, so it recovers after
    10 random actions halfway down to the cube, and after the gripper was closed on nothing (the learner grabbed
    too early) beside the cube, where it must open, rise, come back over the cube and grasp again."""
    env = lift.make_env(TASK, obs_type="state")
    expert = lift.LiftExpert()
    env.reset(seed=TEST_SEED + 3)
    u, rng, success = env.unwrapped, np.random.default_rng(0), False
    for t in range(SPEC["max_steps"]):
        action = expert.get_action(env)
        if knock == "random" and 20 <= t < 30:
            action = rng.uniform(-1, 1, 4).astype(np.float32)
        if knock == "closed_early" and t < 25:  # to 6 cm beside the cube, down at its height, closing
            action = np.r_[np.clip((u.cube_pos() + [0, 0.06, 0] - u.eef_pos()) / 0.05, -0.5, 0.5), 1.0]
        _, _, terminated, truncated, info = env.step(action)
        if t == 24 and knock == "closed_early":
            assert np.abs(u.finger_qpos()).sum() < 0.01 and abs(u.eef_pos()[2] - u.cube_pos()[2]) < 0.03
        if terminated and t >= 30:
            success = info["is_success"]
            break
        if truncated:
            break
    assert success, f"the expert did not recover ({knock}); last phase {expert.phase}"


def test_record_demonstrations_roundtrip(tmp_path):
    import data
    import envs

    out = tmp_path / "lift"
    summary = envs.record_demonstrations(TASK, 1, out, seed=0)
    assert summary["episodes"] == 1 and summary["frames"] == summary["median_steps"]
    ds = data.LeRobotDataset(out)
    assert len(ds) == summary["frames"] and ds.meta.fps == SPEC["fps"] == 20
    item = ds[len(ds) - 1]
    assert item["task"] == SPEC["instruction"]
    assert tuple(item[SPEC["image_keys"][0]].shape) == (3, 96, 96)
    assert tuple(item["observation.state"].shape) == (5,) and tuple(item["action"].shape) == (4,)
    assert ds.meta.features["action"]["names"] == lift.ACTION_NAMES
    assert item["action"][3] == 1.0  # the last frames hold the cube: gripper closed
    first = ds[0]
    assert first["action"][3] == -1.0 and first["observation.state"][2] > 0.95  # starts high, gripper opening

