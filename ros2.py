"""
ROS 2 bridge: a robot behind ROS 2 topics with deploy.py's robot interface (get_observation / send_action / close),
and any of our simulators served as such a robot, to test the whole path without hardware. rclpy comes from PyPI's
ros-* wheels (ros-python-wheels: rclpy 9.1.2 with Fast DDS), no ROS installation. Its wheels re-start every
interpreter of their environment with their library path set, so they live in a venv of their own that sees the
project's packages:

    python -m venv --system-site-packages .ros && .ros/bin/pip install -r requirements-ros.txt
    .ros/bin/python ros2.py serve --task=pusht &                                    # the robot: a simulator node
    .ros/bin/python deploy.py run --policy=out/pusht --robot=ros2 --episodes=5     # the policy drives it
    .ros/bin/python ros2.py bag --bag=rosbag2_2026_12_07 --out=data/my_robot --instruction="push the T"   # a recording

Topics, relative to the node's namespace (--ros_namespace, default /nanovla; rename any with --ros_remap, ROS's own
remapping rules, e.g. --ros_remap="joint_states:=/franka/joint_states,top/image_raw:=/cam/color/image_raw"):
  <camera>/image_raw  sensor_msgs/Image, rgb8, one per camera of the policy: the last part of its image key
                      ('observation.image' -> image/image_raw, 'observation.images.top' -> top/image_raw)
  joint_states        sensor_msgs/JointState: position = the robot's state vector (observation.state)
  command             sensor_msgs/JointState: position = the shield's command (joint targets of an arm, PushT's
                      2-D target)
  reset               std_msgs/Int64: start an episode from this seed (a real robot's driver may ignore it)
  success             std_msgs/Bool: the task's success signal, where the robot has one (the simulators do)
Stamps: each message's header.stamp (the sender's system clock) becomes the observation's 'timestamp' on this
process's monotonic clock, so the shield's watchdog judges the robot's own stamps: an old one (a dead camera or
robot node) or one from the future (a broken clock) stops the robot, as with the simulated robot.
"""
import json
import math
import os
import sys
import time

import numpy as np

QOS_RELIABILITY = ('reliable', 'best_effort')  # cameras often publish best_effort: a subscriber must not ask more


def camera_name(image_key):
    """'observation.images.top' -> 'top' (the camera's topic is <name>/image_raw)."""
    return image_key.split('.')[-1]


def _rclpy():
    """Import rclpy with an error that says how to install it (it is not in requirements.txt)."""
    try:
        import rclpy
    except ImportError as e:
        raise SystemExit(f"--robot=ros2 needs rclpy ({e}). Install the ROS 2 wheels into a venv that sees this "
                         f"project's packages and run from it: python -m venv --system-site-packages .ros && "
                         f".ros/bin/pip install -r requirements-ros.txt && .ros/bin/python deploy.py run ...") from e
    if not rclpy.ok():
        rclpy.init()
    return rclpy


def _qos(reliability, depth):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    if reliability not in QOS_RELIABILITY:
        raise ValueError(f"ros_reliability={reliability!r}: choose one of {QOS_RELIABILITY}")
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=ReliabilityPolicy.RELIABLE if reliability == 'reliable' else ReliabilityPolicy.BEST_EFFORT)


def _node(name, namespace, remap):
    """A node in `namespace` with ROS's remapping rules ('from:=to,from:=to')."""
    rclpy = _rclpy()
    rules = [r for r in remap.split(',') if r.strip()]
    if bad := [r for r in rules if ':=' not in r]:
        raise ValueError(f"ros_remap: {bad} are not remapping rules 'from:=to'")
    args = ['--ros-args', *[a for r in rules for a in ('-r', r.strip())]] if rules else None
    return rclpy.create_node(name, namespace=namespace, cli_args=args)


def stamp_seconds(stamp):
    """builtin_interfaces/Time -> seconds on the system clock."""
    return stamp.sec + stamp.nanosec * 1e-9


def to_monotonic(wall_seconds):
    """A system-clock time -> the same instant on time.monotonic() (what the shield's watchdog reads)."""
    return wall_seconds - (time.time() - time.monotonic())


def image_msg(image, stamp):
    from sensor_msgs.msg import Image
    h, w, c = image.shape
    if c != 3 or image.dtype != np.uint8:
        raise ValueError(f"cameras publish rgb8: uint8 (H, W, 3), got {image.dtype} {image.shape}")
    msg = Image(height=h, width=w, encoding='rgb8', is_bigendian=0, step=w * 3, data=image.tobytes())
    msg.header.stamp = stamp
    return msg


def image_array(msg):
    """sensor_msgs/Image (rgb8 or bgr8, rows possibly padded) -> uint8 (H, W, 3)."""
    if msg.encoding not in ('rgb8', 'bgr8'):
        raise ValueError(f"camera image encoding {msg.encoding!r}: the policy reads rgb8 (or bgr8); "
                         f"convert on the robot side")
    rows = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)
    img = rows[:, :msg.width * 3].reshape(msg.height, msg.width, 3)
    return np.ascontiguousarray(img[..., ::-1] if msg.encoding == 'bgr8' else img)


class Ros2Robot:
    """deploy.py's robot interface over ROS 2 topics (see the module docstring).

    get_observation() waits, at most `timeout` seconds, for every camera and the joint state stamped after the last
    command (the robot's answer to it), then returns the newest messages; if the robot falls silent it returns the
    old ones with their old stamps, and the shield's watchdog stops the loop: a dead robot never hangs it."""

    def __init__(self, image_keys, state_key, action_dim, seed=None, namespace='/nanovla', remap='',
                 reliability='reliable', qos_depth=1, timeout=1.0, connect_timeout=10.0):
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import Bool, Int64
        self.rclpy = _rclpy()
        self.node = _node('nanovla_policy', namespace, remap)
        self.image_keys, self.state_key, self.action_dim = list(image_keys), state_key, action_dim
        self.timeout = timeout if timeout > 0 else 1.0
        self.latest = {}  # frame key -> (system-clock stamp, array)
        self.since = -math.inf  # observations must be stamped after this (the last command or reset)
        self.success = self.done = False
        qos = _qos(reliability, qos_depth)
        self.subscriptions = [self.node.create_subscription(Image, f'{camera_name(k)}/image_raw',
                                                            lambda m, k=k: self._keep(k, m, image_array(m)), qos)
                              for k in self.image_keys]
        self.subscriptions.append(self.node.create_subscription(
            JointState, 'joint_states', lambda m: self._keep(state_key, m, np.asarray(m.position, np.float32)), qos))
        self.subscriptions.append(self.node.create_subscription(Bool, 'success', self._on_success, 10))
        self.command = self.node.create_publisher(JointState, 'command', qos)
        self.reset = self.node.create_publisher(Int64, 'reset', 10)
        self.topics = [s.topic_name for s in self.subscriptions[:-1]]
        # discovery first: a reset or command sent before the robot subscribes would be lost
        connected = lambda: (self.command.get_subscription_count() > 0  # noqa: E731
                             and all(self.node.count_publishers(t) > 0 for t in self.topics)
                             and (seed is None or self.reset.get_subscription_count() > 0))
        self._spin_until(connected, connect_timeout)
        if not connected():
            self.close()
            raise RuntimeError(f"no robot on {[*self.topics, self.command.topic_name]} after {connect_timeout:.0f} s: "
                               f"is the robot node running (python ros2.py serve --task=...) with the same "
                               f"ROS_DOMAIN_ID and namespace?")
        if seed is not None:
            self.since = time.time()
            self.reset.publish(Int64(data=int(seed)))

    def _keep(self, key, msg, value):
        self.latest[key] = (stamp_seconds(msg.header.stamp), value)

    def _on_success(self, msg):
        self.success = self.success or bool(msg.data)
        self.done = self.success

    def _spin_until(self, ready, timeout):
        deadline = time.monotonic() + timeout
        while not ready() and time.monotonic() < deadline:
            self.rclpy.spin_once(self.node, timeout_sec=0.002)

    def get_observation(self):
        keys = [*self.image_keys, self.state_key]
        self._spin_until(lambda: all(k in self.latest and self.latest[k][0] > self.since for k in keys), self.timeout)
        if missing := [t for k, t in zip(keys, self.topics) if k not in self.latest]:
            raise RuntimeError(f"nothing received on {missing} in {self.timeout:.1f} s: is the robot publishing "
                               f"(ros2 topic list), in this ROS_DOMAIN_ID, with a QoS this subscriber accepts "
                               f"(--ros_reliability=best_effort for best-effort cameras)?")
        if len(self.latest[self.state_key][1]) < self.action_dim:
            raise ValueError(f"joint_states has {len(self.latest[self.state_key][1])} positions; the policy was "
                             f"trained on a state of at least {self.action_dim}")
        frame = {k: self.latest[k][1] for k in keys}
        frame['timestamp'] = to_monotonic(min(self.latest[k][0] for k in keys))  # the oldest part decides
        return frame

    def send_action(self, action):
        from sensor_msgs.msg import JointState
        msg = JointState(position=[float(a) for a in np.asarray(action).reshape(-1)])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.since = time.time()
        self.command.publish(msg)
        self.rclpy.spin_once(self.node, timeout_sec=0)  # take a waiting success message

    def close(self):
        self.node.destroy_node()


def serve_simulator(task, namespace='/nanovla', remap='', reliability='reliable', qos_depth=1, log_path='',
                    max_seconds=0.0):
    """A simulator as a ROS 2 robot: `reset` (a seed) starts an episode, each `command` steps it once, and each
    step's camera images, joint state and success are published, stamped when they were made. log_path: one JSON
    line per command received (seed, step, command), so a test can compare with a direct run."""
    import envs
    import tasks
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Bool, Int64
    rclpy = _rclpy()
    node, qos = _node('nanovla_sim_robot', namespace, remap), _qos(reliability, qos_depth)
    spec = tasks.TASKS[task]
    cameras = {k: node.create_publisher(Image, f'{camera_name(k)}/image_raw', qos) for k in spec['image_keys']}
    state, success = node.create_publisher(JointState, 'joint_states', qos), node.create_publisher(Bool, 'success', 10)
    episode = {}
    log = open(log_path, 'a') if log_path else None

    def observe():  # stamped once, when the simulator made the state: re-sends keep that stamp
        frame, stamp = episode['robot'].get_observation(), node.get_clock().now().to_msg()
        msgs = {key: image_msg(frame[key], stamp) for key in cameras}
        msgs['state'] = JointState(position=[float(x) for x in frame[spec['state_key']]])
        msgs['state'].header.stamp = stamp
        episode['messages'] = msgs
        publish()

    def publish():
        for key, pub in cameras.items():
            pub.publish(episode['messages'][key])
        state.publish(episode['messages']['state'])
        success.publish(Bool(data=bool(episode['robot'].success)))

    def on_reset(msg):
        if 'robot' in episode:
            episode['robot'].close()
        episode.update(robot=envs.SimRobot(task, msg.data), seed=msg.data)
        node.get_logger().info(f"episode from seed {msg.data}")
        observe()

    def on_command(msg):
        if 'robot' not in episode:
            node.get_logger().warning("a command before any reset: ignored")
            return
        robot = episode['robot']
        robot.send_action(np.asarray(msg.position, np.float64))
        if log:
            log.write(json.dumps(dict(seed=episode['seed'], step=robot.steps, command=list(msg.position))) + '\n')
            log.flush()
        observe()

    node.create_subscription(Int64, 'reset', on_reset, 10)
    node.create_subscription(JointState, 'command', on_command, qos)
    node.create_timer(0.1, lambda: 'messages' in episode and publish())  # a robot's drivers publish all the time
    print(f"serving {task} on {node.get_namespace()} (cameras {[camera_name(k) for k in cameras]}); Ctrl-C stops",
          flush=True)
    start = time.monotonic()
    try:
        while rclpy.ok() and not (max_seconds and time.monotonic() - start > max_seconds):
            rclpy.spin_once(node, timeout_sec=0.05)
    except KeyboardInterrupt:
        print("stopped by Ctrl-C", flush=True)
    finally:
        if 'robot' in episode:
            episode['robot'].close()
        node.destroy_node()
        if log:
            log.close()


# -----------------------------------------------------------------------------
# recording: a rosbag2 of a robot's topics -> a LeRobot v3.0 dataset (read with the `rosbags` package: no ROS needed)


def _bag_topics(bag, state_topic, action_topic):
    """One rosbag2 folder (sqlite3 or mcap) -> (typestore, {topic: receive times ns}, {camera topic: camera name},
    state topic, action topic, reset topic or None). Topics are found by their ends, whatever the namespace."""
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore
    if not os.path.exists(os.path.join(bag, 'metadata.yaml')):
        raise FileNotFoundError(f"{bag} is not a rosbag2 folder (no metadata.yaml): pass the folder `ros2 bag record` "
                                f"wrote")
    times, types = {}, {}
    with Reader(bag) as reader:
        for conn, t, _ in reader.messages():
            times.setdefault(conn.topic, []).append(t)
            types[conn.topic] = conn.msgtype
    ending = lambda name: [t for t in times if t == name or t.endswith('/' + name)]  # noqa: E731
    cameras = {t: t.split('/image_raw')[0].split('/')[-1] for t in times if '/image_raw' in t
               and types[t] in ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')}
    state, action, reset = ending(state_topic), ending(action_topic), ending('reset')
    if not cameras or len(state) != 1 or len(action) != 1:
        raise ValueError(f"{bag}: needs camera topics <camera>/image_raw, one JointState topic ending in "
                         f"{state_topic!r} and one ending in {action_topic!r}; the bag has {sorted(times)}")
    times = {t: np.asarray(v, np.int64) for t, v in times.items()}
    return get_typestore(Stores.ROS2_JAZZY), times, cameras, state[0], action[0], (reset or [None])[0]


def _episode_frames(times, observed, action, reset, period):
    """-> one dict per episode: {topic: the index of the message each frame takes}. Frame k at t_k = t_0 + k*period
    takes the newest message of each observed topic at t_k and the newest command at t_k + period (the command that
    answered it, held until the next: a zero-order hold, as the robot executed it); t_0 = when every observed topic
    has spoken, the last frame = before the episode's last command. Episodes split at each reset message."""
    start = times[reset] if reset else np.array([min(v[0] for v in times.values())])
    bounds = [*start, max(v[-1] for v in times.values()) + 1]
    episodes = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        inside = {t: times[t][(times[t] >= lo) & (times[t] < hi)] for t in [*observed, action]}
        if any(len(v) == 0 for v in inside.values()):
            continue  # a reset with nothing after it
        frames = np.arange(max(inside[t][0] for t in observed), inside[action][-1] + 1, period)
        pick = {t: np.searchsorted(times[t], frames, side='right') - 1 for t in observed}
        pick[action] = np.searchsorted(times[action], frames + period, side='right') - 1
        if len(frames) and (pick[action] >= np.searchsorted(times[action], lo)).all():  # no command from before
            episodes.append(pick)
    return episodes


def _read_messages(bag, store, wanted, cameras):
    """{topic: message indices} -> {topic: {index: image uint8 (H, W, 3) or JointState positions float32}}:
    a second pass over the bag that deserializes only the messages the frames take."""
    from rosbags.rosbag2 import Reader
    values, seen = {t: {} for t in wanted}, dict.fromkeys(wanted, -1)
    with Reader(bag) as reader:
        for conn, _, raw in reader.messages(connections=[c for c in reader.connections if c.topic in wanted]):
            seen[conn.topic] += 1
            if seen[conn.topic] not in wanted[conn.topic]:
                continue
            msg = store.deserialize_cdr(raw, conn.msgtype)
            if conn.msgtype.endswith('CompressedImage'):  # jpeg / png bytes
                import io
                from PIL import Image
                value = np.asarray(Image.open(io.BytesIO(bytes(msg.data))).convert('RGB'))
            else:
                value = image_array(msg) if conn.topic in cameras else np.asarray(msg.position, np.float32)
            values[conn.topic][seen[conn.topic]] = value
    return values


def bag_to_dataset(bags, out, fps, instruction, state_topic='joint_states', action_topic='command', use_videos=True):
    """Recorded ROS 2 topics -> LeRobot v3.0 episodes at `fps`, written with our writer (the `rosbags` package reads
    the bags: no ROS needed). Cameras: every sensor_msgs/Image or CompressedImage topic <camera>/image_raw[/...],
    stored as observation.images.<camera>; observation.state: the JointState topic ending in `state_topic`; action:
    the one ending in `action_topic`. Times are the bag's receive times (_episode_frames says which message each
    frame takes). One episode per `reset` message (ros2.py's robot node and deploy.py use it), else one per bag.
    The dataset appears as a whole (train_common.record_if_missing: written under <out>.tmp, then renamed)."""
    import dataset_writer
    import train_common
    if os.path.exists(out):
        raise FileExistsError(f"{out} exists: pass a new --out")

    def write(path):
        writer, total = None, 0
        for bag in bags:
            store, times, cameras, state, action, reset = _bag_topics(bag, state_topic, action_topic)
            episodes = _episode_frames(times, [*cameras, state], action, reset, int(round(1e9 / fps)))
            values = _read_messages(bag, store, {t: {int(i) for e in episodes for i in e[t]} for t in episodes[0]}
                                    if episodes else {}, cameras)
            keys = {t: f'observation.images.{name}' for t, name in cameras.items()}
            keys.update({state: 'observation.state', action: 'action'})
            for pick in episodes:
                frames = [{keys[t]: values[t][int(pick[t][k])] for t in keys} for k in range(len(pick[state]))]
                if writer is None:
                    features = {k: {'dtype': 'video', 'shape': list(v.shape), 'names': ['height', 'width', 'channels']}
                                if v.dtype == np.uint8 else {'dtype': 'float32', 'shape': [len(v)], 'names': None}
                                for k, v in frames[0].items()}
                    writer = dataset_writer.LeRobotDatasetWriter(path, fps, features, use_videos=use_videos)
                for k, frame in enumerate(frames):
                    writer.add_frame(dict(frame, timestamp=k / fps), instruction)
                writer.save_episode()
                total += len(frames)
            print(f"{bag}: {len(episodes)} episodes, cameras {sorted(cameras.values())}", flush=True)
        if writer is None:
            raise ValueError(f"no episode with every topic in {bags}")
        writer.finalize()
        print(f"{writer.info['total_episodes']} episodes, {total} frames at {fps} fps")

    train_common.record_if_missing(out, write, f"converting {len(bags)} rosbag2 folder(s)")
    return out


# -----------------------------------------------------------------------------
# python ros2.py <serve|bag> --key=value
task = 'pusht'  # serve: the simulator to serve as a ROS 2 robot
ros_namespace = '/nanovla'
ros_remap = ''  # ROS remapping rules 'from:=to,...'
ros_reliability = 'reliable'  # 'reliable' | 'best_effort'
ros_qos_depth = 1
log = ''  # serve: a JSON-lines file of the commands received
max_seconds = 0.0  # serve: stop after this long (0 = until Ctrl-C)
bag = ''  # bag: rosbag2 folders, comma-separated
out = ''  # bag: the dataset folder to write
fps = 10  # bag: frames per second of the dataset
instruction = ''  # bag: the task's words, stored with every frame
_task_presets = False  # --task names the simulator, it does not load config/<task>.py

if __name__ == '__main__':
    commands = ('serve', 'bag')
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: python ros2.py <{'|'.join(commands)}> --key=value ... (got {sys.argv[1:2]})")
    command = sys.argv.pop(1)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
    if command == 'serve':
        serve_simulator(task, ros_namespace, ros_remap, ros_reliability, ros_qos_depth, log, max_seconds)
    else:
        if not (bag and out and instruction):
            raise SystemExit("python ros2.py bag --bag=BAG_DIR[,BAG_DIR...] --out=data/NAME --instruction='...' [--fps=10]")
        bag_to_dataset(bag.split(','), out, fps, instruction)
