"""A new task is three files: its module, one entry in tasks.TASKS and its preset. This test adds a fourth simulated
task (tests/example_task_reach.py: an agent reaching a dot) to a copy of the repo by writing exactly those three,
and runs every stage on it: recording, training, evaluation, deployment, stage-1 questions and GAIL."""
import json
import os
import shutil
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import run_scripts  # noqa: E402

TABLE_ENTRY = '''
TASKS["reach"] = dict(module="reach", env_id="nanovla/Reach", fps=10, max_steps=40, image_size=96,
                      instruction="move to the green dot", image_keys=["observation.image"],
                      state_key="observation.state", state_dim=2, action_dim=2, action_low=0.0, action_high=512.0,
                      max_step_change=60.0)
'''
PRESET = '''task = 'reach'
out_dir = 'out/reach'
dataset_episodes = 10
batch_size = 16
action_head_type = 'mlp'
max_iters = 30
eval_interval = 0
final_eval_episodes = 2
'''


def reach_repo(tmp_path):
    """A copy of the repo with the reach task added: its module, its table entry and its preset."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns("out", "data", "tests", "results", ".git", "__pycache__",
                                                              "*.md", "bench"))
    shutil.copyfile(os.path.join(REPO, "tests", "example_task_reach.py"), repo / "reach.py")  # 1. the module
    with open(repo / "tasks.py", "a") as f:  # 2. its entry in the task table
        f.write(TABLE_ENTRY)
    (repo / "config" / "reach.py").write_text(PRESET)  # 3. its preset
    return repo


def test_a_fourth_task_is_its_module_a_table_entry_and_a_preset(tmp_path):
    repo = reach_repo(tmp_path)
    changed = [p for p in ("reach.py", "tasks.py", "config/reach.py")
               if not os.path.exists(os.path.join(REPO, p)) or open(os.path.join(REPO, p)).read() != (repo / p).read_text()]
    assert changed == ["reach.py", "tasks.py", "config/reach.py"]

    commands = [["train_bc.py", "--task=reach"],  # records the expert's demos, trains, tests on held-out seeds
                ["eval.py", "--ckpt=out/reach", "--episodes=2", "--num_workers=2", "--videos=0", "--out=out/e.json"],
                ["deploy.py", "run", "--policy=out/reach", "--robot=sim", "--episodes=1", "--max_steps=8", "--rate=0"],
                ["train_vlm.py", "--task=reach", "--vqa_frames=8", "--eval_frames=4", "--max_iters=2", "--batch_size=4",
                 "--hidden_size=32", "--num_heads=2", "--cnn_width=8", "--max_answer_tokens=4"],
                ["train_gail.py", "--task=reach", "--out_dir=out/reach_gail", "--expert_episodes=2", "--bc_iters=5",
                 "--ppo_iters=1", "--steps_per_iter=32", "--minibatch_size=16", "--eval_episodes=1", "--eval_interval=0",
                 "--ppo_epochs=1", "--disc_steps=1"]]
    train, _, deploy, vlm, _ = run_scripts(commands, cwd=repo)
    assert "recording 10 expert episodes" in train.stdout and "held-out episodes" in train.stdout
    metrics = json.load(open(repo / "out" / "reach" / "eval.json"))
    assert metrics["n_episodes"] == 2 and "distance" in metrics["episodes"][0]  # the module's episode_metrics
    assert json.load(open(repo / "out" / "e.json"))["task"] == "reach"
    assert "over 1 episodes" in deploy.stdout
    assert "held-out answer accuracy" in vlm.stdout
    assert json.load(open(repo / "out" / "reach_gail" / "gail_state.json"))["iter"] == 1


def test_a_simulated_task_records_and_runs_at_the_camera_size_it_trains_at(tmp_path):
    """--image_size=48 on a simulated task records its camera at 48x48 (a dataset folder of its own) and the
    checkpoint says so (camera_size): the final test and eval.py's worker processes render at 48, not at the task's
    96 scaled down, and an export carries it to the simulator deploy.py runs (envs.SimRobot)."""
    import av
    repo = reach_repo(tmp_path)
    code = ("import deploy, envs; pol, meta = deploy.load_exported('out/reach48/policy.pt'); "
            "bot = envs.SimRobot('reach', 0, image_size=meta['camera_size']); "
            "print(meta['camera_size'], bot.get_observation()['observation.image'].shape)")
    (repo / "camera_check.py").write_text(code)
    train, *_, check = run_scripts([["train_bc.py", "--task=reach", "--image_size=48", "--out_dir=out/reach48",
                                     "--final_eval_episodes=1"],
                                    ["eval.py", "--ckpt=out/reach48", "--episodes=2", "--num_workers=2", "--videos=1"],
                                    ["deploy.py", "export", "--ckpt=out/reach48"],
                                    ["camera_check.py"]], cwd=repo)
    assert "recording 10 expert episodes" in train.stdout
    info = json.load(open(repo / "data" / "reach_10ep_48px" / "meta" / "info.json"))
    assert info["features"]["observation.image"]["shape"] == [48, 48, 3]
    checkpoint = json.load(open(repo / "out" / "reach48" / "config.json"))
    assert checkpoint["policy"]["tasks"][0]["camera_size"] == 48 and checkpoint["config"]["image_size"] == 48
    with av.open(str(next((repo / "out" / "reach48" / "videos").glob("seed200000_*.mp4")))) as video:
        assert (video.streams.video[0].width, video.streams.video[0].height) == (48, 48)  # what the simulator rendered
    assert check.stdout.strip() == "48 (48, 48, 3)"  # an export carries the camera size to deploy.py's simulator
