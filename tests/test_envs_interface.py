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

FUNCTIONS = ("make_env", "obs_to_frame", "episode_metrics", "gail_features", "make_expert", "run_expert_episode",
             "evaluate_expert", "feature_names")
HEAVY = ("aloha", "lift", "pusht", "mujoco", "dm_control", "robosuite", "gym_pusht", "gym_aloha")


def imported_after(statement):
    """Top-level modules of HEAVY + ours that a fresh interpreter has loaded after running statement."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); {statement}; "
            f"print(' '.join(m for m in {HEAVY + ('envs', 'data', 'tasks')!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    return set(res.stdout.split())


MODULES = {task: spec["module"] for task, spec in envs.TASKS.items()}


def test_every_task_names_its_module_and_shield_limit():
    assert all(isinstance(m, str) for m in MODULES.values())
    assert all(envs.TASKS[t]["max_step_change"] > 0 for t in envs.TASKS)


@pytest.mark.parametrize("name", sorted(set(MODULES.values())))
def test_task_modules_export_the_same_interface(name):
    """Each module: SPECS (its tasks' entries of TASKS, the same objects), EXPERT_FLAGS, and the functions envs
    dispatches to, each with the same leading parameters as envs' own function (task first)."""
    module = importlib.import_module(name)  # MuJoCo / robosuite load here, in this test only
    mine = {t for t, m in MODULES.items() if m == name}
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


def test_no_import_circle_among_the_repo_modules():
    """Every `import x` / `from x import` of one repo module by another, at the top or inside a function, as a
    graph: it has no cycle (envs.py once imported deploy.py for DAgger's workers while deploy imported envs)."""
    import ast
    ours = {p.stem for p in ROOT.glob("*.py")}
    graph = {}
    for name in ours:
        tree = ast.parse((ROOT / f"{name}.py").read_text())
        found = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        found |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        graph[name] = (found & ours) - {name}
    done, path = set(), []

    def visit(m):
        assert m not in path, f"import circle: {' -> '.join(path[path.index(m):] + [m])}"
        if m in done:
            return
        path.append(m)
        for n in sorted(graph[m]):
            visit(n)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)
    assert "policy" in graph["eval"] and "envs" in graph["deploy"] and "policy" in graph["deploy"]  # real edges
