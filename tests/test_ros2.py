"""deploy.py --robot=ros2 against a simulator served over ROS 2 (ros2.py), two real processes on localhost: the policy
sends the same commands as in a direct simulator run, and killing the robot node stops the policy side through the
shield's watchdog. Runs with the rclpy wheels of requirements-ros.txt, in the venv that holds them (.ros/ beside
the repo, or NANOVLA_ROS_PYTHON); skipped where they are absent."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import envs  # noqa: E402
from deploy import control_loop, make_shield  # noqa: E402
from policy import load_policy  # noqa: E402
from test_deploy import save_checkpoint, tiny_model  # noqa: E402

ROS_PYTHON = os.environ.get('NANOVLA_ROS_PYTHON', os.path.join(REPO, '.ros', 'bin', 'python'))
INSTALL = "python -m venv --system-site-packages .ros && .ros/bin/pip install -r requirements-ros.txt"


def ros_available():
    if not os.path.exists(ROS_PYTHON):
        return False
    return subprocess.run([ROS_PYTHON, '-c', 'import rclpy, sensor_msgs.msg, std_msgs.msg'], capture_output=True,
                          timeout=60).returncode == 0


pytestmark = pytest.mark.skipif(not ros_available(), reason=f"no rclpy at {ROS_PYTHON} (ROS 2 wheels absent): {INSTALL}")
STEPS, SEED = 30, envs.TEST_SEED


def ros_env():
    """Its own DDS domain and localhost-only discovery: parallel runs and the network never see these nodes."""
    return dict(os.environ, ROS_DOMAIN_ID=str(random.randint(1, 100)), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
                ROS_LOCALHOST_ONLY='1', PYTHONUNBUFFERED='1')


def start_robot(env, log, namespace):
    return subprocess.Popen([ROS_PYTHON, os.path.join(REPO, 'ros2.py'), 'serve', '--task=pusht', f'--log={log}',
                             f'--ros_namespace={namespace}', '--max_seconds=240'], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def deploy_over_ros(env, ckpt, namespace, max_steps):
    return subprocess.Popen([ROS_PYTHON, os.path.join(REPO, 'deploy.py'), 'run', f'--policy={ckpt}', '--robot=ros2',
                             f'--ros_namespace={namespace}', f'--max_steps={max_steps}', '--rate=20',
                             f'--start_seed={SEED}', '--episodes=1'], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


class Recording:
    """A SimRobot that keeps the commands it was sent."""

    def __init__(self, robot):
        self.robot, self.sent = robot, []

    def __getattr__(self, name):
        return getattr(self.robot, name)

    def send_action(self, action):
        self.sent.append(np.asarray(action, np.float64))
        self.robot.send_action(action)


def direct_commands(ckpt):
    """The same checkpoint in the same control loop, on the simulator in this process."""
    settings, pol = load_policy(ckpt)
    robot = Recording(envs.SimRobot('pusht', SEED, STEPS))
    shield, rest = make_shield('pusht', robot.action_dim)
    control_loop(pol, robot, shield, rate=0, max_steps=STEPS, hold=rest)
    robot.close()
    return np.stack(robot.sent)


def test_deploy_drives_a_simulator_over_ros2_like_a_direct_run(tmp_path):
    ckpt = save_checkpoint(tiny_model('mlp'), tmp_path / 'ckpt')
    env, log, ns = ros_env(), tmp_path / 'commands.jsonl', f'/nanovla_test_{os.getpid()}'
    robot = start_robot(env, log, ns)
    try:
        run = deploy_over_ros(env, ckpt, ns, STEPS)
        out, _ = run.communicate(timeout=240)
    finally:
        robot.send_signal(signal.SIGINT)
        robot_out = robot.communicate(timeout=30)[0]
    assert run.returncode == 0, out[-3000:] + robot_out[-2000:]
    assert f'seed {SEED}: fail in {STEPS} steps' in out and 'missed' in out and 'latency p50' in out, out[-2000:]
    sent = [json.loads(line) for line in open(log)]
    assert [r['step'] for r in sent] == list(range(1, STEPS + 1)) and {r['seed'] for r in sent} == {SEED}
    over_ros, direct = np.array([r['command'] for r in sent]), direct_commands(ckpt)
    assert np.allclose(over_ros, direct, atol=1e-4), np.abs(over_ros - direct).max()


def test_a_dead_robot_node_stops_the_policy_through_the_watchdog(tmp_path):
    ckpt = save_checkpoint(tiny_model('mlp'), tmp_path / 'ckpt')
    env, log, ns = ros_env(), tmp_path / 'commands.jsonl', f'/nanovla_kill_{os.getpid()}'
    robot = start_robot(env, log, ns)
    run = deploy_over_ros(env, ckpt, ns, 300)
    try:
        deadline = time.monotonic() + 180
        while not (log.exists() and len(log.read_text().splitlines()) >= 10) and time.monotonic() < deadline:
            assert run.poll() is None, run.communicate()[0][-3000:]
            time.sleep(0.05)
        robot.kill()  # the robot dies mid-episode: no more observations
        killed = time.monotonic()
        out, _ = run.communicate(timeout=30)
        stopped_after = time.monotonic() - killed
    finally:
        robot.kill()
        run.kill()
    assert run.returncode == 0, out[-3000:]
    assert 'stopped: stale observation' in out and 'shield stale: observation is' in out, out[-2000:]
    steps = int(out.split(f'seed {SEED}: fail in ')[1].split(' steps')[0])
    assert 10 <= steps < 300
    assert stopped_after < 1.0 + 5.0, stopped_after  # watchdog_timeout + the process's own exit


WRITE_BAG = r'''
import sys
import numpy as np
from rosbags.rosbag2 import Writer
from rosbags.typesys import Stores, get_typestore
store = get_typestore(Stores.ROS2_JAZZY)
Image, JointState = store.types['sensor_msgs/msg/Image'], store.types['sensor_msgs/msg/JointState']
Header, Time, Int64 = store.types['std_msgs/msg/Header'], store.types['builtin_interfaces/msg/Time'], store.types['std_msgs/msg/Int64']
def header(ns):
    return Header(stamp=Time(sec=ns // 10**9, nanosec=ns % 10**9), frame_id='')
def joints(ns, x):
    return JointState(header=header(ns), name=[], position=np.asarray(x, np.float64), velocity=np.zeros(0), effort=np.zeros(0))
with Writer(sys.argv[1], version=9) as w:
    cam = w.add_connection('/robot/top/image_raw', 'sensor_msgs/msg/Image', typestore=store)
    state = w.add_connection('/robot/joint_states', 'sensor_msgs/msg/JointState', typestore=store)
    cmd = w.add_connection('/robot/command', 'sensor_msgs/msg/JointState', typestore=store)
    reset = w.add_connection('/robot/reset', 'std_msgs/msg/Int64', typestore=store)
    t = 10**18  # ns; 10 Hz observations, each command 30 ms after its observation, a reset before each episode
    for episode, length in enumerate([6, 4]):
        w.write(reset, t, store.serialize_cdr(Int64(data=episode), 'std_msgs/msg/Int64'))
        t += 5 * 10**6
        for k in range(length):
            img = np.full((32, 48, 3), 20 * k + 100 * episode, np.uint8)
            img[..., 1] = 7 * k
            w.write(cam, t, store.serialize_cdr(Image(header=header(t), height=32, width=48, encoding='rgb8',
                    is_bigendian=0, step=48 * 3, data=img.reshape(-1)), 'sensor_msgs/msg/Image'))
            w.write(state, t + 10**6, store.serialize_cdr(joints(t, [k, episode]), 'sensor_msgs/msg/JointState'))
            w.write(cmd, t + 3 * 10**7, store.serialize_cdr(joints(t, [k + 0.5, -episode]), 'sensor_msgs/msg/JointState'))
            t += 10**8
'''


def test_a_rosbag_becomes_a_dataset(tmp_path):
    """A rosbag2 written by the test (two episodes, split by reset messages; a camera, joint states and commands at
    10 Hz) -> ros2.py bag -> a v3.0 dataset that data.py reads: each frame's state, the command that answered it,
    and its image."""
    from data import LeRobotDataset
    bag, out = tmp_path / 'bag', tmp_path / 'ds'
    subprocess.run([ROS_PYTHON, '-c', WRITE_BAG, str(bag)], check=True, timeout=120)
    r = subprocess.run([ROS_PYTHON, os.path.join(REPO, 'ros2.py'), 'bag', f'--bag={bag}', f'--out={out}', '--fps=10',
                        '--instruction=push the T'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'recorded' in r.stdout and '2 episodes' in r.stdout and not os.path.exists(str(out) + '.tmp')
    ds = LeRobotDataset(str(out), cache_dir='')
    assert ds.meta.total_episodes == 2 and len(ds) == 10 and ds.meta.fps == 10
    for i, (episode, k) in enumerate([(0, k) for k in range(6)] + [(1, k) for k in range(4)]):
        frame = ds[i]
        assert frame['observation.state'].tolist() == [k, episode]
        assert frame['action'].tolist() == [k + 0.5, -episode]
        img = frame['observation.images.top']  # (C, H, W) in [0, 1], through h264
        assert abs(float(img[0].mean()) * 255 - (20 * k + 100 * episode)) < 4 and abs(float(img[1].mean()) * 255 - 7 * k) < 4
        assert frame['task'] == 'push the T'
    r = subprocess.run([ROS_PYTHON, os.path.join(REPO, 'ros2.py'), 'bag', f'--bag={tmp_path}', f'--out={tmp_path / "x"}',
                        '--instruction=push the T'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'not a rosbag2 folder' in r.stderr
