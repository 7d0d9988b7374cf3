"""deploy.py: the exported file equals the eager model and needs no repo code; the shield never lets
an out-of-bounds or too-fast command through; the control loop runs the simulator like eval.py does;
the watchdog trips on stale observations; bad inputs fail with clear messages."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import envs  # noqa: E402
import pusht  # noqa: E402
from deploy import (ExportedPolicy, SafetyShield, StepPolicy, control_loop, example_inputs,  # noqa: E402
                    export_policy, load_exported)
from eval import VLAPolicy  # noqa: E402
from model import ManipulationVLA, ManipulationVLAConfig, policy_info  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
HEADS = ["mlp", "gaussian", "mixture", "diffusion", "flow", "transformer"]
INSTRUCTION = envs.TASKS["pusht"]["instruction"]
STATS = {"observation.state": {"mean": [256.0, 256.0], "std": [100.0, 100.0]},
         "action": {"min": [20.0, 30.0], "max": [490.0, 500.0]}}


def tiny_model(head="mlp", action_dim=2, **kw):
    torch.manual_seed(0)
    cfg = ManipulationVLAConfig(image_size=96, hidden_size=32, num_heads=2, cnn_width=8, vision_grid=2,
                                num_readout_tokens=2, head_hidden_dim=32, denoiser_dim=16, action_chunk_size=4,
                                diffusion_steps=20, diffusion_inference_steps=4, flow_steps=3,
                                action_head_type=head, action_dim=action_dim, **kw)
    model = ManipulationVLA(cfg)
    stats = dict(STATS, action={"min": [20.0] * action_dim, "max": [490.0] * action_dim})
    model.set_normalization_stats(stats)
    return model.eval()


def save_checkpoint(model, path):
    """A folder like train_bc.py writes: weights + config.json with the policy's task and execution settings."""
    c = model.config
    model.policy_info = policy_info([dict(task="pusht", instruction=INSTRUCTION, instructions=[INSTRUCTION],
                                          image_keys=["observation.image"], state_key="observation.state",
                                          action_dim=c.action_dim, state_dim=c.proprioception_dim)], n_action_steps=2)
    model.save_pretrained(str(path))
    return str(path)


def metadata(model):
    return dict(task="pusht", instruction=INSTRUCTION, image_keys=["observation.image"], state_key="observation.state",
                action_dim=model.config.action_dim, n_action_steps=2, temporal_ensemble_coeff=None)


def cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, os.path.join(REPO, "deploy.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("head", HEADS)
def test_torchscript_export_equals_eager(head, tmp_path):
    model = tiny_model(head)
    module, meta = load_exported(export_policy(model, INSTRUCTION, str(tmp_path / "p.pt"), metadata(model)))
    assert meta["instruction"] == INSTRUCTION
    eager = StepPolicy(model, INSTRUCTION)
    for trial in range(3):  # new random inputs each time: the traced graph is not tied to the example
        images, proprio = example_inputs(model)
        torch.manual_seed(trial)  # diffusion / flow draw their initial noise from the global generator
        with torch.no_grad():
            want = eager(images, proprio)
        torch.manual_seed(trial)
        with torch.no_grad():
            got = module(images, proprio)
        assert got.shape == (1, 4, 2)
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


@pytest.mark.parametrize("relative", [False, True])
def test_torch_export_equals_eager(relative, tmp_path):
    model = tiny_model("mlp", relative_actions=relative)
    module, meta = load_exported(export_policy(model, INSTRUCTION, str(tmp_path / "p.pt2"), metadata(model),
                                               fmt="export"))
    images, proprio = example_inputs(model)
    with torch.no_grad():
        assert torch.allclose(module(images, proprio), StepPolicy(model, INSTRUCTION)(images, proprio), atol=1e-4)


def test_cli_export_loads_with_torch_alone(tmp_path):
    ckpt = save_checkpoint(tiny_model("mlp"), tmp_path / "ckpt")
    r = cli("export", f"--ckpt={ckpt}", f"--out={tmp_path / 'policy.pt'}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "max |exported - eager|" in r.stdout
    # a fresh interpreter in another folder, with only torch: no model.py, no transformers
    code = ("import sys, torch, json; extra = {'nanovla.json': ''}; "
            f"m = torch.jit.load({str(tmp_path / 'policy.pt')!r}, _extra_files=extra); "
            "a = m(torch.zeros(1, 1, 3, 96, 96, dtype=torch.uint8), torch.zeros(1, 2)); "
            "assert 'model' not in sys.modules and 'transformers' not in sys.modules; "
            "print(tuple(a.shape), json.loads(extra['nanovla.json'])['task'])")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["(1,", "4,", "2)", "pusht"]


def test_shield_property_no_unsafe_command_ever_leaves():
    """Thousands of random and adversarial actions: every output is finite, inside the box and
    within max_step of the previous output, in every dimension."""
    rng = np.random.default_rng(0)
    low, high, max_step = np.array([0.0, -1.0, 10.0]), np.array([512.0, 1.0, 20.0]), np.array([30.0, 0.1, 0.5])
    shield = SafetyShield(3, max_step, workspace_bounds=(low, high), joint_limits=([-5, -2, 0], [600, 0.8, 30]),
                          watchdog_timeout=0)
    hi = np.minimum(high, [600, 0.8, 30])
    shield.reset(hold=[256.0, 0.0, 15.0])
    adversarial = [np.full(3, np.nan), np.full(3, np.inf), np.full(3, -np.inf), np.array([np.nan, 1e9, -1e9]),
                   np.full(3, 1e30), np.full(3, -1e30), None, high * 10, low - 100]
    prev, n_checked = shield.last.copy(), 0
    for i in range(5000):
        if i % 7 == 0:
            action = adversarial[(i // 7) % len(adversarial)]
        elif i % 2:
            action = rng.uniform(low - 200, high + 200)  # random, often outside
        else:
            action = np.where(i % 4 == 0, high, low) * rng.choice([1, 1e6])  # bang-bang extremes
        out = shield.filter(action)
        assert np.isfinite(out).all()
        assert (out >= low - 1e-9).all() and (out <= hi + 1e-9).all()
        assert (np.abs(out - prev) <= max_step + 1e-9).all()
        prev, n_checked = out, n_checked + 1
    assert n_checked == 5000
    c = shield.counts
    assert c["invalid"] > 0 and c["clamped"] > 0 and c["rate_limited"] > 0
    assert len(shield.events) == min(c["invalid"] + c["clamped"] + c["rate_limited"], SafetyShield.MAX_EVENTS)


def test_shield_holds_last_command_on_bad_actions_and_estop():
    shield = SafetyShield(2, 10.0, workspace_bounds=(0, 100), watchdog_timeout=0)
    shield.reset(hold=[50, 50])
    assert np.array_equal(shield.filter([55, 45]), [55, 45])
    assert np.array_equal(shield.filter([np.nan, 0]), [55, 45])  # hold, do not move
    assert np.array_equal(shield.filter(None), [55, 45])
    with pytest.raises(ValueError, match="3 action values, the robot takes 2"):
        shield.filter([1, 2, 3])
    shield.emergency_stop("operator pressed e-stop")
    assert np.array_equal(shield.filter([60, 60]), [55, 45]) and shield.stopped
    shield.reset(hold=[55, 45])
    assert np.array_equal(shield.filter([60, 50]), [60, 50])


class StalledRobot:
    """Observations stop updating after a few steps (a camera driver hung): timestamps freeze.
    Time is simulated (20 ms per observation), so the test does not depend on the machine's load."""
    action_dim = 2

    def __init__(self, stall_after=3):
        self.now, self.calls, self.stall_after, self.sent, self.stamp = 0.0, 0, stall_after, [], 0.0
        self.done = self.success = False

    def clock(self):
        return self.now

    def get_observation(self):
        self.now += 0.02
        if self.calls < self.stall_after:
            self.stamp = self.now
        self.calls += 1
        return {"observation.image": np.zeros((96, 96, 3), np.uint8),
                "observation.state": np.array([100.0, 100.0], np.float32), "timestamp": self.stamp}

    def send_action(self, a):
        self.sent.append(np.asarray(a))

    def close(self):
        pass


def test_watchdog_trips_on_stalled_observations(tmp_path):
    model = tiny_model("mlp")
    module, meta = load_exported(export_policy(model, INSTRUCTION, str(tmp_path / "p.pt"), metadata(model)))
    robot = StalledRobot(stall_after=3)
    shield = SafetyShield(2, 1000.0, workspace_bounds=(0, 512), watchdog_timeout=0.21, clock=robot.clock)
    stats = control_loop(ExportedPolicy(module, meta), robot, shield, rate=0, max_steps=100)
    assert shield.stopped and shield.stop_reason == "stale observation" and shield.counts["stale"] == 1
    # reads 0-2 are fresh (read 0 is the loop's first); at step k the age is 0.02 k - 0.04 s, > 0.21 at k = 13
    assert stats["steps"] == 13 and stats["stopped"] == "stale observation"
    assert np.array_equal(robot.sent[-1], robot.sent[-2])  # the stop held the last safe command


def test_sim_control_loop_runs_like_eval(tmp_path):
    """The exported policy in the deploy loop drives the simulator exactly as eval.py's eager policy."""
    model = tiny_model("mlp")
    module, meta = load_exported(export_policy(model, INSTRUCTION, str(tmp_path / "p.pt"), metadata(model)))
    robot = envs.SimRobot("pusht", seed=envs.TEST_SEED, max_steps=30)
    shield = SafetyShield(2, 1000.0, workspace_bounds=(0, 512), watchdog_timeout=0)  # never intervenes here
    stats = control_loop(ExportedPolicy(module, meta), robot, shield, rate=200, max_steps=30)
    deployed_state = pusht.get_state(robot.env)
    robot.close()
    assert stats["steps"] == 30 and stats["p99_ms"] >= stats["p50_ms"] > 0 and stats["missed_deadlines"] >= 0
    assert sum(shield.counts.values()) == 0
    env = envs.make_env("pusht")
    obs, _ = env.reset(seed=envs.TEST_SEED)
    policy = VLAPolicy(model, INSTRUCTION, n_action_steps=2)
    for _ in range(30):
        obs, *_ = env.step(np.asarray(policy(envs.obs_to_frame("pusht", obs)), np.float32))
    assert np.allclose(pusht.get_state(env), deployed_state, atol=1e-3)
    env.close()


def test_bad_inputs_fail_clearly(tmp_path):
    r = cli("export", f"--ckpt={tmp_path / 'missing'}")
    assert r.returncode != 0 and "not a checkpoint folder" in r.stderr
    r = cli("launch", "--ckpt=x")
    assert r.returncode != 0 and "usage: python deploy.py <export|run>" in r.stderr
    r = cli("run", f"--policy={tmp_path / 'nope.pt'}")
    assert r.returncode != 0 and "does not exist" in r.stderr
    model = tiny_model("mlp", action_dim=3)  # a policy for a 3-dof robot, run against PushT (2)
    path = export_policy(model, INSTRUCTION, str(tmp_path / "p3.pt"), metadata(model))
    r = cli("run", f"--policy={path}", "--max_steps=2", "--trust_exported_code=True")
    assert r.returncode != 0 and "outputs 3 action values but the robot takes 2" in r.stderr
