"""Tests for aloha.py: the ALOHA envs reset, step and render headless; the end-effector (mocap) env and the
inverse kinematics put the grippers where asked; the scripted plans (cube transfer, insertion) + joint replay
and the IK expert solve fixed seeds (also after the arm is knocked off the plan's path); recorded demos read
back as a LeRobot dataset."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import aloha  # noqa: E402  (sets MUJOCO_GL=egl before mujoco is imported)
import data  # noqa: E402
import envs  # noqa: E402
import mujoco  # noqa: E402

TASK = "aloha_transfer_cube"
SPEC = envs.TASKS[TASK]


def test_env_resets_steps_and_renders_headless():
    assert os.environ["MUJOCO_GL"] == "egl"
    env = envs.make_env(TASK)
    obs, info = env.reset(seed=0)
    assert not info["is_success"]
    frame = envs.obs_to_frame(TASK, obs)
    img, state = frame[SPEC["image_keys"][0]], frame[SPEC["state_key"]]
    assert img.dtype == np.uint8 and img.shape == (96, 96, 3) and img.std() > 0
    assert state.dtype == np.float32 and state.shape == (14,)
    red = (img[..., 0] > 150) & (img[..., 1] < 80)  # the cube is the only red thing on the table
    assert 2 <= red.sum() <= 40, f"expected a few red cube pixels, got {red.sum()}"
    for _ in range(3):
        obs, reward, terminated, truncated, info = env.step(state)  # hold the start pose
    assert reward == 0 and not terminated and not truncated and not envs.is_success(info)
    big = envs.obs_to_frame(TASK, envs.make_env(TASK, image_size=192).reset(seed=0)[0])[SPEC["image_keys"][0]]
    big_red = (big[..., 0] > 150) & (big[..., 1] < 80)  # a camera of twice the side: the cube in ~4x the pixels
    assert big.shape == (192, 192, 3) and 2.5 * red.sum() <= big_red.sum() <= 6 * red.sum()
    np.testing.assert_allclose(obs["agent_pos"], state, atol=0.05)
    assert env.render().shape == (240, 320, 3)
    with pytest.raises(ValueError, match="obs_type"):
        envs.obs_to_frame(TASK, np.zeros(14))
    env.close()


def test_seeds_place_the_cube_reproducibly():
    env = aloha.AlohaEnv(TASK, obs_type="state")
    poses = []
    for seed in (5, 5, 6):
        obs, _ = env.reset(seed=seed)
        assert obs.shape == (14,)
        poses.append(env.physics.data.qpos[16:19].copy())
    np.testing.assert_array_equal(poses[0], poses[1])
    assert not np.allclose(poses[0], poses[2])
    assert 0.0 <= poses[0][0] <= 0.2 and 0.4 <= poses[0][1] <= 0.6  # gym-aloha's sampling box


def test_action_limits_match_the_xml():
    model = mujoco.MjModel.from_xml_path(str(aloha.ASSETS_DIR / "bimanual_viperx_transfer_cube.xml"))
    for side, offset in (("left", 0), ("right", 7)):
        lo, hi = aloha.ARM[side]
        np.testing.assert_allclose(model.jnt_range[lo:hi, 0], SPEC["action_low"][offset:offset + 6])
        np.testing.assert_allclose(model.jnt_range[lo:hi, 1], SPEC["action_high"][offset:offset + 6])


def test_mocap_drags_the_gripper_to_the_asked_pose():
    """mocap_for inverts the weld's reference offset: after a second the grip point is where we asked."""
    env = aloha.AlohaEnv(TASK, obs_type="state", end_effector=True)
    env.reset(seed=0)
    model, d = env.physics.model.ptr, env.physics.data.ptr
    target = (np.array([0.1, 0.45, 0.15]), aloha.qmul(aloha.grip_pose(model, d, "right")[1], aloha.quat([0, 1, 0], 45)))
    left = aloha.grip_pose(model, d, "left")
    action = np.r_[np.concatenate(aloha.mocap_for(model, "left", *left)), 0.5,
                   np.concatenate(aloha.mocap_for(model, "right", *target)), 0.5]
    for _ in range(50):
        env.step(action)
    pos, q = aloha.grip_pose(model, d, "right")
    assert np.linalg.norm(pos - target[0]) < 0.01
    assert abs(abs(np.dot(q, target[1])) - 1) < 1e-3  # same orientation (q and -q are the same rotation)
    assert np.linalg.norm(aloha.grip_pose(model, d, "left")[0] - left[0]) < 0.01


def test_ik_reaches_poses():
    expert = aloha.AlohaExpert(TASK)
    m, d = expert.model, expert.data
    start = np.array(aloha.START_ARM_POSE)
    d.qpos[:16] = start
    mujoco.mj_kinematics(m, d)
    left, right = aloha.grip_pose(m, d, "left"), aloha.grip_pose(m, d, "right")
    targets = [(left[0] + [0.05, 0.03, -0.05], aloha.qmul(left[1], aloha.quat([1, 0, 0], 30))),
               (right[0] + [-0.1, 0.02, -0.1], aloha.qmul(right[1], aloha.quat([0, 1, 0], 40)))]
    expert.iters = 50
    q = expert.solve(start, targets)
    d.qpos[:16] = q
    mujoco.mj_kinematics(m, d)
    for side, (pos, quat) in zip(("left", "right"), targets):
        p_now, q_now = aloha.grip_pose(m, d, side)
        assert np.linalg.norm(p_now - pos) < 1e-3 and abs(abs(np.dot(q_now, quat)) - 1) < 1e-4


@pytest.mark.parametrize("task,seed", [(TASK, envs.TEST_SEED), (TASK, envs.TEST_SEED + 1), (TASK, envs.TEST_SEED + 2),
                                       ("aloha_insertion", envs.TEST_SEED), ("aloha_insertion", envs.TEST_SEED + 1)])
def test_scripted_plan_replay_succeeds(task, seed):
    spec = envs.TASKS[task]
    ep = envs.run_expert_episode(task, seed, render=False)
    assert ep["success"], f"{task}: plan + replay failed seed {seed}"
    # the joint replay is what counts (ACT keeps an episode by its replay's reward); the insertion plan reaches
    # reward 4 in the mocap env itself on fewer seeds (8 of 20 held-out seeds, vs 20 of 20 in the replay)
    assert ep["ee_success"] or task == "aloha_insertion"
    assert ep["steps"] < spec["max_steps"] and ep["actions"].shape == (ep["steps"], 14)
    assert (ep["actions"] >= np.array(spec["action_low"]) - 1e-6).all()
    assert (ep["actions"] <= np.array(spec["action_high"]) + 1e-6).all()


def test_ik_expert_succeeds_and_corrects_off_path():
    """The closed-loop expert (what eval.py --policy=expert and DAgger query) solves a seed, also after the
    right arm is knocked 0.15 rad off the plan in every joint while it approaches the cube. (A knock while it
    carries the cube drops it, and the time-indexed plan does not re-grasp: a limit of this expert.)"""
    env = envs.make_env(TASK, obs_type="state")
    expert = envs.make_expert(TASK)
    for knock in (False, True):
        env.reset(seed=envs.TEST_SEED)
        expert.reset()
        success = False
        for t in range(SPEC["max_steps"]):
            if knock and t == 60:
                qpos = env.unwrapped.physics.data.qpos
                qpos[8:14] += 0.15 * np.array([1, -1, 1, -1, 1, -1])
                env.unwrapped.physics.forward()
            _, _, success, _, _ = env.step(expert.get_action(env))
            if success:
                break
        assert success, f"IK expert failed (knocked={knock})"


def test_record_demonstrations_roundtrip(tmp_path):
    out = tmp_path / "aloha"
    summary = envs.record_demonstrations(TASK, 1, out, seed=0)
    assert summary["episodes"] == 1 and summary["frames"] == summary["median_steps"]
    ds = data.LeRobotDataset(out)
    assert len(ds) == summary["frames"] and ds.meta.fps == 50
    item = ds[len(ds) - 1]
    assert item["task"] == SPEC["instruction"]
    assert tuple(item["observation.images.top"].shape) == (3, 96, 96)
    assert tuple(item["observation.state"].shape) == (14,) and tuple(item["action"].shape) == (14,)
    assert ds.meta.features["action"]["names"][6] == "left_arm_gripper"
    first = ds[0]["observation.state"].numpy()
    np.testing.assert_allclose(first[:6], aloha.START_ARM_POSE[:6], atol=1e-3)  # starts at the start pose


class HoldPolicy:
    """Joint targets = where the joints are: the arms stay at the start pose."""

    def reset(self):
        pass

    def __call__(self, frame, env=None):
        return frame[SPEC["state_key"]]


def test_eval_counts_where_episodes_stop():
    """eval.py reports ALOHA episodes by their best reward stage: the expert reaches 'transferred', a policy that
    holds the start pose stays at 'none'."""
    from eval import ExpertPolicy, ManipulationEvaluator
    ev = ManipulationEvaluator(TASK, n_episodes=1, start_seed=envs.TEST_SEED, progress=False)
    m = ev.evaluate(ExpertPolicy(TASK))
    assert m["success_rate"] == 1.0 and m["max_reward_stages"]["4 transferred"] == 1
    hold = ManipulationEvaluator(TASK, n_episodes=1, start_seed=envs.TEST_SEED, max_steps=20, progress=False)
    m = hold.evaluate(HoldPolicy())
    assert m["max_reward_stages"] == {"0 none": 1, "1 right touched": 0, "2 right lifted": 0, "3 left touched": 0,
                                      "4 transferred": 0}


@pytest.mark.parametrize("task", ["aloha_transfer_cube", "aloha_insertion"])
def test_preset_trains_and_tests_on_a_tiny_slice(task, tmp_path):
    """`python train_bc.py --task=<aloha task>` end to end with the preset's recipe (head, chunk, ensembling), cut to
    a few iterations on one recorded episode: the final test runs in 2 worker processes and reports the stages."""
    import json
    import subprocess
    envs.record_demonstrations(task, 1, tmp_path / "demo", seed=0)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "train_bc.py", f"--task={task}", f"--dataset={tmp_path / 'demo'}",
                        f"--out_dir={out}", "--max_iters=3", "--batch_size=8", "--warmup_iters=1",
                        "--final_eval_episodes=2", "--eval_max_steps=6"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    preset = {}
    exec(open(Path(__file__).resolve().parents[1] / "config" / f"{task}.py").read(), preset)
    config = json.load(open(out / "config.json"))["config"]
    assert config["action_head_type"] == preset["action_head_type"]
    assert config["action_chunk_size"] == preset["action_chunk_size"]
    m = json.load(open(out / "eval.json"))
    assert m["n_episodes"] == 2 and sum(m["max_reward_stages"].values()) == 2
