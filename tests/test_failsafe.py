"""Fail-safe deployment and training inputs (issue 17): exported programs are not run without an opt-in,
a checkpoint folder runs with weights only; the shield fails closed (bounds, hold, timestamps, NaN actions,
bounded log) and holds delta actions at zero; an e-stop stops each simulated robot; out-of-range config
values, missing devices, corrupt files and NaN weights are refused with the fix."""
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import deploy  # noqa: E402
import envs  # noqa: E402
from deploy import SafetyShield, control_loop, make_shield  # noqa: E402
from model import ManipulationVLA, ManipulationVLAConfig, policy_info  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
INSTRUCTION = envs.TASKS["pusht"]["instruction"]


def tiny_checkpoint(path, nan=False):
    torch.manual_seed(0)
    model = ManipulationVLA(ManipulationVLAConfig(hidden_size=32, num_heads=2, cnn_width=8, vision_grid=2,
                                                  num_readout_tokens=2, head_hidden_dim=32, action_chunk_size=4))
    model.set_normalization_stats({"observation.state": {"mean": [256.0] * 2, "std": [100.0] * 2},
                                   "action": {"min": [20.0] * 2, "max": [490.0] * 2}})
    if nan:
        with torch.no_grad():
            model.head.net[0].weight[0, 0] = float("nan")
    model.policy_info = policy_info([dict(task="pusht", instruction=INSTRUCTION, instructions=[INSTRUCTION],
                                          image_keys=["observation.image"], state_key="observation.state",
                                          action_dim=2, state_dim=2)], n_action_steps=2)
    model.save_pretrained(str(path))
    return str(path)


def cli(*args, cwd=REPO, script="deploy.py"):
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


class Payload:
    """Unpickling this calls open(marker, 'w'): what a crafted policy file could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["evil.pt2", "evil.pt"])
def test_crafted_exported_file_is_refused_without_the_flag(tmp_path, name):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    path.write_bytes(pickle.dumps(Payload(str(marker))))
    r = cli("run", f"--policy={path}", "--max_steps=2")
    assert r.returncode != 0 and "refusing to load" in r.stderr and "--trust_exported_code=True" in r.stderr
    assert not marker.exists()


def test_checkpoint_folder_runs_with_weights_only(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    r = cli("run", f"--policy={ckpt}", "--episodes=1", "--max_steps=5", "--rate=0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "seed 200000" in r.stdout and "success" in r.stdout


def test_export_refuses_nan_weights(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "nan", nan=True)
    r = cli("export", f"--ckpt={ckpt}")
    assert r.returncode != 0 and "non-finite" in r.stderr and "head.net.0.weight" in r.stderr
    assert not os.path.exists(os.path.join(ckpt, "policy.pt"))


def test_corrupt_checkpoint_files_are_named(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "c")
    weights = os.path.join(ckpt, "model.safetensors")
    blob = open(weights, "rb").read()
    open(weights, "wb").write(blob[: len(blob) // 2])  # truncated
    with pytest.raises(ValueError, match="model.safetensors cannot be read as safetensors.*corrupt or truncated"):
        ManipulationVLA.from_pretrained(ckpt)
    open(weights, "wb").write(b"\xff" * 64)  # garbled
    with pytest.raises(ValueError, match="model.safetensors cannot be read"):
        ManipulationVLA.from_pretrained(ckpt)
    open(os.path.join(ckpt, "config.json"), "w").write('{"format_version": 1, "config": {')
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        ManipulationVLA.from_pretrained(ckpt)


# ----------------------------------------------------------------------------- the shield fails closed
def test_shield_refuses_non_finite_bounds_and_hold():
    with pytest.raises(ValueError, match="workspace_bounds must be finite"):
        SafetyShield(2, 10.0, workspace_bounds=([0, np.nan], [512, 512]))
    with pytest.raises(ValueError, match="max_step_change must be finite"):
        SafetyShield(2, np.nan)
    shield = SafetyShield(2, 10.0, workspace_bounds=(0, 512), watchdog_timeout=0)
    with pytest.raises(ValueError, match="2 finite values"):
        shield.reset(hold=[np.nan, 256])
    with pytest.raises(ValueError, match="2 finite values"):
        shield.reset(hold=[1.0])


@pytest.mark.parametrize("observation, why", [({}, "no usable 'timestamp'"), ({"timestamp": float("nan")}, "nan"),
                                              ({"timestamp": 150.0}, "in the future"), (None, "no usable"),
                                              ({"timestamp": "soon"}, "no usable")])
def test_unreadable_or_future_timestamps_stop_the_robot(observation, why):
    now = [100.0]
    shield = SafetyShield(2, 10.0, workspace_bounds=(0, 512), watchdog_timeout=0.5, clock=lambda: now[0])
    shield.reset(hold=[50, 50])
    assert np.array_equal(shield.filter([55, 55], {"timestamp": 99.9}), [55, 55])  # fresh: passes
    out = shield.filter([60, 60], observation)
    assert shield.stopped and np.array_equal(out, [55, 55]) and shield.counts["stale"] == 1
    assert why in shield.events[-1][2].lower() or why in shield.events[-1][2]
    assert np.array_equal(shield.filter([70, 70], {"timestamp": 100.0}), [55, 55])  # latched until reset


def test_event_log_is_bounded_and_counts_stay_exact():
    shield = SafetyShield(2, 0.001, workspace_bounds=(0, 512), watchdog_timeout=0)
    shield.reset(hold=[0, 0])
    for i in range(20000):  # every command is a NaN (held) or a jump (rate-limited): 20000 interventions
        shield.filter([np.nan, 0] if i % 2 else [512, 512])
    assert shield.counts["invalid"] == 10000 and shield.counts["rate_limited"] == 10000
    assert len(shield.events) == SafetyShield.MAX_EVENTS


def test_delta_actions_hold_zero_and_limit_the_delta():
    shield = SafetyShield(4, 0.5, workspace_bounds=(-1, 1), watchdog_timeout=0,
                          action_mode=("delta", "delta", "delta", "absolute"))
    shield.reset(hold=[0.3, 0.3, 0.3, -1.0])  # delta dims never take a reference from the state
    assert np.allclose(shield.filter([0.9, -0.2, 0.1, 1.0]), [0.5, -0.2, 0.1, -0.5])  # |delta| <= 0.5; gripper ramps
    assert np.allclose(shield.filter([0.9, -0.2, 0.1, 1.0]), [0.5, -0.2, 0.1, 0.0])
    assert np.allclose(shield.filter([np.nan, 0, 0, 0]), [0, 0, 0, 0.0])  # NaN: no motion, gripper kept
    shield.emergency_stop()
    assert np.allclose(shield.filter([0.9, 0.9, 0.9, 1.0]), [0, 0, 0, 0.0])
    with pytest.raises(ValueError, match="must contain 0"):
        SafetyShield(1, 0.5, workspace_bounds=(0.1, 1), action_mode="delta")


class NaNPolicyModule(torch.nn.Module):
    def forward(self, images, proprio):
        return torch.full((1, 4, 2), float("nan"))


def test_nan_policy_is_held_and_the_loop_goes_on():
    meta = dict(task="pusht", instruction=INSTRUCTION, image_keys=["observation.image"], state_key="observation.state",
                action_dim=2, n_action_steps=2, temporal_ensemble_coeff=None)
    robot = envs.SimRobot("pusht", seed=envs.TEST_SEED, max_steps=12)
    shield = SafetyShield(2, 40.0, workspace_bounds=(0, 512), watchdog_timeout=5.0)
    stats = control_loop(deploy.ExportedPolicy(NaNPolicyModule(), meta), robot, shield, rate=0, max_steps=12)
    robot.close()
    assert stats["steps"] == 12 and not shield.stopped and shield.counts["invalid"] == 12


# ----------------------------------------------------------------------------- e-stop on every simulated robot
def pusht_probe(robot):
    import pusht
    return pusht.get_state(robot.env)[:2]  # pusher position (px)


def lift_probe(robot):
    return np.asarray(robot.obs["agent_pos"][:3], np.float64)  # end-effector position (m)


def aloha_probe(robot):
    return np.asarray(robot.obs["agent_pos"], np.float64)  # 14 joint angles (rad) / gripper openings


def moving_action(task, t, last):
    """A command that keeps the robot moving: the pusher sweeps, the arm drifts up, the joints turn."""
    if task == "pusht":
        return np.array([150.0 + 25 * t, 250.0])
    if task == "lift":
        return np.array([0.6, 0.0, 0.8, 1.0])
    return last + np.r_[0.05, -0.05, 0.05, 0, 0, 0, 0, 0.05, -0.05, 0.05, 0, 0, 0, 0]


@pytest.mark.parametrize("task, probe, tol, settle", [("pusht", pusht_probe, 1.0, 8), ("lift", lift_probe, 0.005, 4),
                                                      ("aloha_transfer_cube", aloha_probe, 0.02, 4),
                                                      ("aloha_insertion", aloha_probe, 0.02, 4)])
def test_estop_stops_the_simulated_robot(task, probe, tol, settle):
    """Drive the robot, press the e-stop, keep feeding moving commands: after a short settling (the last safe
    command was already sent: PushT's pusher closes its lag to the target in ~0.8 s, critically damped) the robot
    moves less than tol. Delta tasks (Lift) hold zero motion."""
    robot = envs.SimRobot(task, seed=envs.TEST_SEED, max_steps=100)
    try:
        shield, rest = make_shield(task, robot.action_dim)
        obs = robot.get_observation()
        shield.reset(hold=rest if rest is not None else obs["observation.state"][:robot.action_dim])
        start, last = probe(robot), shield.last.copy()
        for t in range(8):
            last = shield.filter(moving_action(task, t, last), robot.get_observation())
            robot.send_action(last)
        moved = np.abs(probe(robot) - start).max()
        shield.emergency_stop("test")
        for t in range(8, 8 + settle):
            robot.send_action(shield.filter(moving_action(task, t, last), robot.get_observation()))
        before = probe(robot)
        for t in range(8 + settle, 20 + settle):
            robot.send_action(shield.filter(moving_action(task, t, last), robot.get_observation()))
        drift = np.abs(probe(robot) - before).max()
    finally:
        robot.close()
    assert moved > 5 * tol, f"the robot did not move before the stop ({moved}): the test drives nothing"
    assert drift < tol, f"{task}: moved {drift} after the e-stop (tolerance {tol})"


# ----------------------------------------------------------------------------- config and data checks
@pytest.mark.parametrize("arg, message", [
    ("--max_iters=-1", "max_iters=-1 is out of range"), ("--gradient_accumulation_steps=0", "gradient_accumulation"),
    ("--ema_decay=1.5", "ema_decay=1.5 is out of range"), ("--batch_size=0", "batch_size=0"),
    ("--log_interval=0", "log_interval=0"), ("--ckpt_interval=0", "ckpt_interval=0"),
    ("--learning_rate=-1", "learning_rate=-1"), ("--min_lr=1.0", "min_lr=1.0 exceeds learning_rate"),
    ("--use_depth=True", "no dataset or simulator task here provides depth"),  # a key nothing could honour
])
def test_out_of_range_values_stop_before_any_data(arg, message, tmp_path):
    r = cli("--task=pusht_debug", arg, f"--out_dir={tmp_path / 'o'}", script="train_bc.py", cwd=tmp_path)
    assert r.returncode != 0 and message in r.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "o").exists()  # nothing recorded or written


def test_absent_device_names_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = cli("--task=pusht_debug", "--device=cuda", script="train_bc.py", cwd=tmp_path)
    assert r.returncode != 0 and "no CUDA GPU" in r.stderr and "--device=cpu" in r.stderr


def test_config_file_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("max_iters = 10\nbatch_size = = 3\n")
    r = cli("--task=pusht_debug", str(bad), script="train_bc.py", cwd=tmp_path)
    assert r.returncode != 0 and f"{bad} line 2" in r.stderr


def test_data_folder_without_metadata_fails_before_recording(tmp_path):
    (tmp_path / "data" / "pusht_4ep").mkdir(parents=True)
    r = cli("--task=pusht_debug", f"--out_dir={tmp_path / 'o'}", script="train_bc.py", cwd=tmp_path)
    assert r.returncode != 0 and "holds no dataset" in r.stderr and "delete or move it" in r.stderr
    assert os.listdir(tmp_path / "data") == ["pusht_4ep"]  # nothing recorded beside it


def test_a_recording_that_crashes_leaves_no_dataset_behind(tmp_path):
    """train_common.record_if_missing, which every stage script records through: a recorder that dies half way
    leaves nothing at the dataset's path (a later run records again); one that finishes appears whole, once."""
    import train_common
    path = str(tmp_path / "ds")

    def crash(tmp):
        os.makedirs(os.path.join(tmp, "meta"))
        raise RuntimeError("killed while recording")

    def record(tmp):
        os.makedirs(os.path.join(tmp, "meta"))
        open(os.path.join(tmp, "meta", "info.json"), "w").write("{}")

    with pytest.raises(RuntimeError, match="killed"):
        train_common.record_if_missing(path, crash, "recording")
    assert not os.path.exists(path)
    assert train_common.record_if_missing(path, record, "recording") is True
    assert os.listdir(tmp_path) == ["ds"] and os.path.exists(os.path.join(path, "meta", "info.json"))
    assert train_common.record_if_missing(path, crash, "recording") is False  # there: never recorded again
