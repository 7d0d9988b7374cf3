"""Tests for the task table in envs.py: every task module exports the same interface, envs imports a simulator only
for a task that needs it, tasks.py (the shared leaf) imports none of the task modules, and the command line refuses
an expert flag that does not apply to the task instead of ignoring it."""
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import envs  # noqa: E402

FUNCTIONS = ("make_env", "obs_to_frame", "make_expert", "run_expert_episode", "evaluate_expert", "feature_names")
HEAVY = ("aloha", "lift", "pusht", "mujoco", "dm_control", "robosuite", "gym_pusht", "gym_aloha")


def imported_after(statement):
    """Top-level modules of HEAVY + ours that a fresh interpreter has loaded after running statement."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); {statement}; "
            f"print(' '.join(m for m in {HEAVY + ('envs', 'data', 'tasks')!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    return set(res.stdout.split())


def test_table_covers_every_task():
    assert set(envs.MODULES) == set(envs.TASKS)


@pytest.mark.parametrize("name", sorted(set(envs.MODULES.values())))
def test_task_modules_export_the_same_interface(name):
    """Each module: SPECS (its tasks' entries of TASKS, the same objects), EXPERT_FLAGS, and the functions envs
    dispatches to, each with the same leading parameters as envs' own function (task first)."""
    module = importlib.import_module(name)  # MuJoCo / robosuite load here, in this test only
    mine = {t for t, m in envs.MODULES.items() if m == name}
    assert set(module.SPECS) == mine and all(module.SPECS[t] is envs.TASKS[t] for t in mine)
    assert isinstance(module.EXPERT_FLAGS, tuple)
    for f in FUNCTIONS:
        params = list(inspect.signature(getattr(module, f)).parameters)
        expected = list(inspect.signature(getattr(envs, f)).parameters) if hasattr(envs, f) else ["task"]
        expected = [p for p in expected if p != "kw"]  # make_expert(task, **kw)
        assert params[:len(expected)] == expected, f"{name}.{f}{tuple(params)}: expected {tuple(expected)} first"


def test_importing_envs_loads_no_simulator():
    assert imported_after("import envs") == {"envs", "tasks"}
    assert imported_after("import envs; envs.TASKS['lift']; envs.VAL_SEED") == {"envs", "tasks"}


def test_shared_leaf_imports_none_of_the_others():
    assert imported_after("import tasks") == {"tasks"}
    source = (ROOT / "tasks.py").read_text()
    assert not any(f"import {m}" in source for m in ("envs", "pusht", "aloha", "lift", "data"))


def test_cli_refuses_an_expert_flag_of_another_task(tmp_path):
    """--ik (ALOHA's IK expert) with --task=pusht used to record PushT demos without saying so."""
    out = tmp_path / "demos"
    res = subprocess.run([sys.executable, str(ROOT / "envs.py"), "--task=pusht", "--ik", f"--out={out}",
                          "--episodes=1"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "--ik applies only to aloha_* tasks" in res.stderr, res.stderr[-2000:]
    assert not out.exists()
