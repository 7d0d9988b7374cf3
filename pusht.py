"""
PushT (Diffusion Policy, Chi et al. 2023) on gym-pusht: an exact copy of the simulator state and a
push-planning expert that solves it with smooth bounded motions, behind the task interface envs.py calls.

A disc "agent" (radius 15 px) pushes a T-shaped block
(mass 1) on a 512x512 table until the block covers > 95% of a T-shaped goal at pose (256, 256, pi/4).
The action is a TARGET position; a PD controller (k_p=100, k_v=20, critically damped, time constant
0.1 s) drives the kinematic agent toward it in 10 physics substeps of 10 ms per 10 Hz env step. The
space has damping 0, so the block loses all velocity every substep (no inertia: it moves only while
pushed) and its shapes have friction 0 (contact forces act along the contact normal only).

The expert plans one PUSH at a time on a private copy of the simulator (pushing primitives, Mason 1986):
    contact point on the T's outline x push direction (inward normal +/- 30 deg) x push length
    -> simulate each candidate from rest on a state copy -> score by mean distance of the T's 8
       corners to their goal positions (position and angle in one number, in px) + a time cost;
       near the goal (< 12 px) short slow pushes scored by coverage itself
    -> simulate the best few as whole plans from the live state, keep the best
    -> walk to the pre-contact point around the block inflated by the agent radius (visibility graph)
    -> push in bounded steps -> re-plan (also as soon as the world deviates from the prediction).
Every target moves at most max_step (20) px per env step, so demos look like smooth teleoperation.
Measured (seeds 200000..200099): 100% success, median 91 steps, ~6 ms of planning per decision.
"""
import math
import time
import warnings

import gymnasium as gym
import numpy as np
import shapely

from tasks import TASKS, TEST_SEED

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pygame / pkg_resources import noise
    import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)

SPECS = {"pusht": TASKS["pusht"]}
EXPERT_FLAGS = ("max_step",)  # the expert options `python envs.py` takes for this task


def make_env(task, render_mode="rgb_array", obs_type=None, image_size=None):
    """gym-pusht's env. obs_type None = "pixels_agent_pos": image + agent xy (what the policy sees); "state" is
    ~10x faster (no rendering) and is what planning uses. image_size: the camera's side (None = the task's)."""
    spec = SPECS[task]
    size = image_size or spec["image_size"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gymnasium's passive checker warns about the float64 obs spaces
        return gym.make(spec["env_id"], obs_type=obs_type or "pixels_agent_pos", render_mode=render_mode,
                        observation_width=size, observation_height=size,
                        max_episode_steps=spec["max_steps"])


def obs_to_frame(task, obs):
    """gym-pusht observation dict -> a frame with LeRobot keys: image uint8 (H, W, 3), state float32 (2,)."""
    spec = SPECS[task]
    if not isinstance(obs, dict) or "pixels" not in obs:
        raise ValueError("obs_to_frame needs the pixels_agent_pos observation; build the env with make_env(task) "
                         "(obs_type=None), not obs_type='state'")
    return {spec["image_keys"][0]: np.ascontiguousarray(obs["pixels"], dtype=np.uint8),
            spec["state_key"]: np.asarray(obs["agent_pos"], dtype=np.float32)}


def feature_names(task):
    """(state names, action names, robot type) for the dataset's meta/info.json."""
    return ["x", "y"], ["x", "y"], None


def episode_metrics(task, env):
    """The block's pose error to the goal at the episode's end: position (px of the 512 px arena), angle (deg)."""
    s = get_state(env)
    goal = env.unwrapped.goal_pose
    dang = (s[6] - goal[2] + math.pi) % (2 * math.pi) - math.pi  # state: agent xy, agent v, block xy, angle, ...
    return dict(position_error=float(np.hypot(s[4] - goal[0], s[5] - goal[1])),
                orientation_error=abs(math.degrees(dang)))


def gail_features(task, env):
    """GAIL's view of the state (train_gail.py --obs_mode=state), normalized: agent xy and block xy in [-1, 1], the
    block angle as (sin, cos) so that 0 and 2 pi are the same, agent velocity / 100. (10,) float32."""
    s = get_state(env)
    return np.array([(s[0] - 256) / 256, (s[1] - 256) / 256, (s[4] - 256) / 256, (s[5] - 256) / 256, math.sin(s[6]),
                     math.cos(s[6]), s[2] / 100, s[3] / 100, s[7] / 100, s[8] / 100], np.float32)


# -----------------------------------------------------------------------------
# exact state copies

# full state: agent xy (0:2), agent velocity (2:4), block origin xy (4:6), block angle (6),
# block velocity (7:9), block angular velocity (9). float64, exactly what pymunk holds.
STATE_DIM = 10


def get_state(env):
    """The full simulator state as float64 (10,), enough to copy an env exactly (see set_state)."""
    u = env.unwrapped
    a, b = u.agent, u.block
    return np.array([*a.position, *a.velocity, *b.position, b.angle, *b.velocity, b.angular_velocity])


def _load(u, s):
    """Write state s into the bodies of an unwrapped env. The angle goes BEFORE the position: pymunk keeps
    the center of gravity fixed when rotating, and the T's CoG is 45 px from its origin, so gym-pusht's
    reset_to_state (position first) puts the block back shifted."""
    u.agent.position = (s[0], s[1])
    u.agent.velocity = (s[2], s[3])
    u.block.angle = s[6]
    u.block.position = (s[4], s[5])
    u.block.velocity = (s[7], s[8])
    u.block.angular_velocity = s[9]


def set_state(env, state):
    """Copy a get_state() vector (10,) into env exactly; a 5-vector [agent xy, block xy, angle] (the state
    observation) is accepted with zero velocities. The physics space is rebuilt first so that no contact
    cache (warm-started impulses) survives: stepping two copies with the same actions gives the same result."""
    s = np.asarray(state, dtype=np.float64).reshape(-1)
    if s.size == 5:
        s = np.array([s[0], s[1], 0, 0, s[2], s[3], s[4], 0, 0, 0], dtype=np.float64)
    if s.size != STATE_DIM:
        raise ValueError(f"state must have {STATE_DIM} values (get_state) or 5 (state obs), got {s.size}")
    u = env.unwrapped
    u._setup()  # fresh pymunk space (also what reset() does)
    _load(u, s)
    for body in (u.agent, u.block):  # shapes cache their world vertices until the next physics step: refresh
        u.space.reindex_shapes_for_body(body)  # them now, or a frame rendered before stepping shows the old pose
    return env


def copy_state(src, dst):
    """Make env dst an exact copy of env src: its physics (set_state) and what its camera shows, which includes
    the last commanded target (gym-pusht draws it as a cross). -> dst's observation. DAgger's expert branches
    start from such copies of the learner's states (eval._expert_branch)."""
    set_state(dst, get_state(src))
    dst.unwrapped._last_action = src.unwrapped._last_action
    return dst.unwrapped.get_obs()


# -----------------------------------------------------------------------------
# T geometry (block frame: origin of the pymunk body; bar y in [0, 30], stem y in [30, 120])

T_OUTLINE = np.array([[-60, 0], [60, 0], [60, 30], [15, 30], [15, 120], [-15, 120], [-15, 30], [-60, 30]], float)
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])
AGENT_RADIUS = 15.0
ARENA = (20.0, 492.0)  # agent centers stay here: walls at 5 and 506 (+2 thick) plus the agent radius


def _rot(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s], [s, c]])


def keypoints(pose):
    """The T's 8 outline corners in world coordinates, (8, 2), for a block pose (x, y, angle)."""
    return T_OUTLINE @ _rot(pose[2]).T + pose[:2]


GOAL_KEYPOINTS = keypoints(GOAL_POSE)


def keypoint_error(pose):
    """Mean distance (px) of the T's corners to their goal positions: one number for position AND angle
    (a rotation error costs more far from the center, exactly like lost coverage does)."""
    return float(np.linalg.norm(keypoints(pose) - GOAL_KEYPOINTS, axis=1).mean())


def _coverage_of(pose):
    """Coverage of the goal by a block at pose, like PushTEnv._get_coverage but without pymunk."""
    block, goal = shapely.Polygon(keypoints(pose)), shapely.Polygon(GOAL_KEYPOINTS)
    return block.intersection(goal).area / goal.area


def _contact_candidates(spacing=15.0, inset=4.0):
    """Contact points on the T's outline (block frame) with their outward normals, (K, 2) each."""
    pts, normals = [], []
    for i in range(len(T_OUTLINE)):
        a, b = T_OUTLINE[i], T_OUTLINE[(i + 1) % len(T_OUTLINE)]
        length = np.linalg.norm(b - a)
        tangent = (b - a) / length
        normal = np.array([tangent[1], -tangent[0]])  # one of the two perpendiculars; fixed below
        n = max(1, int(round((length - 2 * inset) / spacing)))
        for f in (np.arange(n) + 0.5) / n:
            pts.append(a + tangent * (inset + f * (length - 2 * inset)))
            normals.append(normal)
    pts, normals = np.array(pts), np.array(normals)
    # make every normal point away from the T (test a point just outside along it)
    poly = shapely.Polygon(T_OUTLINE)
    inside = shapely.contains_xy(poly, *(pts + normals).T)
    normals[inside] *= -1
    return pts, normals


CONTACT_POINTS, CONTACT_NORMALS = _contact_candidates()

# -----------------------------------------------------------------------------
# a private fast simulator for planning


class _Sim:
    """State-only PushT without rendering or per-step coverage: ~50 us per env step instead of ~2 ms."""

    def __init__(self):
        self.env = make_env("pusht", obs_type="state")
        self.env.reset(seed=0)
        self.u = self.env.unwrapped
        # gym-pusht counts contact points in a Python callback after every substep (for its info dict, which
        # planning never reads): a no-op instead takes a quarter off each planning rollout, same physics
        self.u.space.add_collision_handler(0, 0).post_solve = lambda arbiter, space, data: None

    def load(self, s):
        _load(self.u, s)  # no space rebuild: a stale contact cache changes results by << 1 px

    def step(self, target):
        """One 10 Hz env step toward target, the same float operations as PushTEnv.step (bitwise equal). The agent
        is kinematic (contacts never move it: infinite mass), so its PD recurrence and pymunk's position update
        p += v dt run here in Python floats, and pymunk is only told each substep's velocity."""
        agent, space = self.u.agent, self.u.space
        tx, ty = float(target[0]), float(target[1])
        px, py = agent.position
        vx, vy = agent.velocity
        for _ in range(10):
            ax, ay = 100 * (tx - px) + 20 * (0 - vx), 100 * (ty - py) + 20 * (0 - vy)
            vx, vy = vx + ax * 0.01, vy + ay * 0.01
            agent.velocity = (vx, vy)
            space.step(0.01)
            px, py = px + vx * 0.01, py + vy * 0.01

    def rollout(self, s, targets, record=False):
        """Load s, follow targets (T, 2); return the final state, or (T, 10) states if record."""
        self.load(s)
        states = []
        for t in targets:
            self.step(t)
            if record:
                states.append(get_state(self.env))
        return np.array(states) if record else get_state(self.env)


# -----------------------------------------------------------------------------
# approach paths around the block


def _segments(a, b):
    """Line segments a[i] -> b[i] as a shapely array; a, b (N, 2)."""
    return shapely.linestrings(np.stack([a, b], axis=1))


class _Roadmap:
    """Shortest collision-free paths from the agent to any pre-contact point: a visibility graph over the
    corners of the block inflated by the agent radius + margin (the classic configuration-space trick:
    a disc of radius r misses a polygon iff its center misses the polygon grown by r)."""

    def __init__(self, start, pose, clearance=AGENT_RADIUS + 4, corner=AGENT_RADIUS + 12):
        block = shapely.Polygon(keypoints(pose))
        self.keep_out = block.buffer(clearance, quad_segs=3)
        shapely.prepare(self.keep_out)
        corners = np.array(block.buffer(corner, join_style="mitre").exterior.coords[:-1])
        ok = np.all((corners >= ARENA[0]) & (corners <= ARENA[1]), axis=1)
        self.nodes = np.vstack([start, corners[ok]])  # node 0 = start
        n = len(self.nodes)
        i, j = np.triu_indices(n, 1)
        free = ~shapely.intersects(_segments(self.nodes[i], self.nodes[j]), self.keep_out)
        w = np.full((n, n), np.inf)
        d = np.linalg.norm(self.nodes[i] - self.nodes[j], axis=1)
        w[i[free], j[free]] = w[j[free], i[free]] = d[free]
        self.dist, self.prev = self._dijkstra(w)

    @staticmethod
    def _dijkstra(w):
        """Shortest distances from node 0 over the dense weight matrix w (n, n) (n <= ~13: no heap needed)."""
        n = len(w)
        dist, prev, done = np.full(n, np.inf), np.full(n, -1), np.zeros(n, bool)
        dist[0] = 0.0
        for _ in range(n):
            k = int(np.argmin(np.where(done, np.inf, dist)))
            if done[k] or not np.isfinite(dist[k]):
                break
            done[k] = True
            better = dist[k] + w[k] < dist
            dist[better], prev[better] = dist[k] + w[k][better], k
        return dist, prev

    def lengths(self, goals):
        """Path length to each goal (G, 2) and the node it is reached from (inf / -1 when unreachable)."""
        g, n = len(goals), len(self.nodes)
        gi, ni = np.repeat(np.arange(g), n), np.tile(np.arange(n), g)
        free = ~shapely.intersects(_segments(self.nodes[ni], goals[gi]), self.keep_out)
        tot = self.dist[ni] + np.linalg.norm(self.nodes[ni] - goals[gi], axis=1)
        tot = np.where(free, tot, np.inf).reshape(g, n)
        via = tot.argmin(1)
        best = tot[np.arange(g), via]
        return best, np.where(np.isfinite(best), via, -1)

    def path(self, goal, via):
        """Waypoints start -> ... -> goal (the start excluded)."""
        pts, k = [goal], via
        while k > 0:
            pts.append(self.nodes[k])
            k = self.prev[k]
        return pts[::-1]


def _densify(start, waypoints, max_step):
    """Targets along a polyline, at most max_step apart (including the jump from start)."""
    out, cur = [], np.asarray(start, float)
    for w in waypoints:
        w = np.asarray(w, float)
        n = int(math.ceil(np.linalg.norm(w - cur) / max_step - 1e-9))
        out += [cur + (w - cur) * (k / n) for k in range(1, n + 1)]
        cur = w
    return out


# -----------------------------------------------------------------------------
# stage 1's questions (train_vlm.py): answers computed from the simulator's state, never annotated
# per task: the stored state's names, frames kept per expert rollout of its first `horizon` steps (the expert needs
# ~90), the env's obs_type (gym-pusht renders every step anyway), whether a rollout ends at success
VQA = {"pusht": dict(state_names=["agent_x", "agent_y", "block_x", "block_y", "block_angle", "goal_x", "goal_y",
                                  "goal_angle"], per_episode=8, horizon=120, obs_type=None, stop_at_success=True)}


def vqa_state(task, env):
    """The simulator's truth behind the answers (8,): agent xy, block xy angle, goal xy angle."""
    return np.r_[get_state(env)[[0, 1, 4, 5, 6]], env.unwrapped.goal_pose].astype(np.float32)


def vqa_image(task, env, obs):
    """The frame the policy would see now."""
    return obs_to_frame(task, obs)[TASKS[task]["image_keys"][0]]


def quadrant(dx, dy):
    """Image directions of an offset in table pixels: gym-pusht draws y DOWN (y=0 is the top row)."""
    return f"{'upper' if dy < 0 else 'lower'} {'left' if dx < 0 else 'right'}"


def vqa_answers(task, state):
    """state (8,) of vqa_state -> {question: answer}. The block's place is its T's centroid (the body origin sits on
    the bar's edge); angles grow clockwise on screen (y is down)."""
    agent, block, goal = np.asarray(state[0:2]), np.asarray(state[2:5]), np.asarray(state[5:8])
    b, g = shapely.Polygon(keypoints(block)), shapely.Polygon(keypoints(goal))
    dx, dy = b.centroid.x - g.centroid.x, b.centroid.y - g.centroid.y
    where = "at the goal" if np.hypot(dx, dy) < 20 else quadrant(dx, dy)  # 20 px = ~4 image pixels
    k = int(np.round(((np.degrees(block[2] - goal[2]) + 180) % 360 - 180) / 45)) % 8  # 8 bins of 45 degrees
    turn = {0: "aligned", 4: "180 degrees"}.get(k) or (f"{45 * k} degrees clockwise" if k < 4
                                                       else f"{45 * (8 - k)} degrees counterclockwise")
    return {"where is the block relative to the goal?": where,
            "how is the block rotated relative to the goal?": turn,
            "where is the pusher?": quadrant(agent[0] - 256, agent[1] - 256),  # the table is 512 x 512
            "does the block cover the goal?": "yes" if b.intersection(g).area / g.area > 0.5 else "no"}


# -----------------------------------------------------------------------------
# the expert


class PushTExpert:
    """Plan-a-push, execute, re-plan. get_action answers for ANY state: it keeps its current plan only while
    the live state matches the plan's simulated prediction, otherwise it plans again from where it is.

    max_step:   bound on the per-step change of the target (px per 0.1 s step) = agent speed limit
    fine_step:  slower push speed near the goal, where success needs ~2 px / ~2 deg accuracy
    time_cost:  px of keypoint error one env step is worth (trades precision of a push for speed)
    """

    def __init__(self, seed=0, max_step=20.0, fine_step=6.0, time_cost=0.15, gap=5.0,
                 angles_deg=(0.0, -30.0, 30.0), lengths=(15.0, 35.0, 70.0), fine_lengths=(1.0, 2.0, 4.0, 8.0, 16.0),
                 fine_below=12.0, top_k=4, settle_steps=2, tol_px=2.0):
        self.rng = np.random.default_rng(seed)
        self.sim = _Sim()
        self.max_step, self.fine_step, self.time_cost, self.gap = max_step, fine_step, time_cost, gap
        self.angles = np.deg2rad(np.asarray(angles_deg, float))
        self.lengths, self.fine_lengths, self.fine_below = lengths, fine_lengths, fine_below
        self.top_k, self.settle_steps, self.tol_px = top_k, settle_steps, tol_px
        self.plan_time, self.n_plans, self.n_decisions = 0.0, 0, 0
        self.reset()

    def reset(self):
        """New episode: forget the plan and the previous target."""
        self.targets, self.expected, self.last_target = [], [], None
        self.expected_now = None  # the state the plan predicts for the current step
        self.scored = None  # (block state bytes, candidate pushes q, d, L, their simulated costs; NaN = not yet)

    # --- reading the state ---------------------------------------------------------------------------
    def _read(self, env_or_state):
        """-> (state (10,), previous target or None). The live env also tells the last commanded target."""
        if hasattr(env_or_state, "unwrapped"):
            last = env_or_state.unwrapped._last_action
            return get_state(env_or_state), (None if last is None else np.asarray(last, float))
        s = np.asarray(env_or_state, dtype=np.float64).reshape(-1)
        if s.size == 5:
            s = np.array([s[0], s[1], 0, 0, s[2], s[3], s[4], 0, 0, 0])
        if s.size != STATE_DIM:
            raise ValueError(f"PushTExpert.get_action needs the env or a get_state() vector ({STATE_DIM},) "
                             f"(or the 5-dim state obs), got shape {np.shape(env_or_state)}; images are not enough")
        return s, None

    def _on_plan(self, s):
        """Does the state match what the plan predicted for this step? (block within tol_px, agent close)"""
        e = self.expected_now
        if e is None:
            return False
        return (np.linalg.norm(keypoints(s[[4, 5, 6]]) - keypoints(e[[4, 5, 6]]), axis=1).max() < self.tol_px
                and np.linalg.norm(s[:2] - e[:2]) < 3 * self.tol_px)

    def get_action(self, env_or_state):
        """Target position (2,) float32 in [0, 512]^2 for the current state; |change| <= max_step px."""
        s, last = self._read(env_or_state)
        on_plan = self._on_plan(s)
        we_drove = self.last_target is not None and (on_plan if last is None else
                                                     np.linalg.norm(last - self.last_target) < 1e-3)
        if not we_drove:
            # a state we did not drive here (new episode, DAgger query, learner in control): start from the
            # agent itself (the env keeps its last target across resets, so that one may be stale)
            prev, self.targets = s[:2].copy(), []
        else:
            prev = self.last_target  # continue smoothly from our own last target
        if not on_plan:  # the world did not follow the prediction (or no plan yet): plan again from here
            self.targets = []
        if not self.targets:
            t0 = time.perf_counter()
            self._plan(s, prev)
            self.plan_time += time.perf_counter() - t0
            self.n_plans += 1
        self.n_decisions += 1
        target = self.targets.pop(0)
        self.expected_now = self.expected.pop(0)
        step = target - prev  # enforce the bound even if a plan was built from a slightly different start
        bound = self.max_step - 1e-3  # margin for the float32 rounding of the returned target
        if np.linalg.norm(step) > bound:
            target = prev + step * (bound / np.linalg.norm(step))
            self.targets = []
        self.last_target = np.clip(target, 0.0, 512.0).astype(np.float32).astype(np.float64)
        return self.last_target.astype(np.float32)

    # --- planning --------------------------------------------------------------------------------------
    def _candidates(self, pose, err):
        """All pushes (pre-contact point q0 (N, 2), direction d (N, 2), length (N,)) for a block pose."""
        R = _rot(pose[2])
        c = CONTACT_POINTS @ R.T + pose[:2]  # (K, 2) world contact points
        n = CONTACT_NORMALS @ R.T  # (K, 2) outward normals
        lengths = self.fine_lengths if err < self.fine_below else self.lengths
        q0 = c + n * (AGENT_RADIUS + self.gap)
        q, d, L = [], [], []
        for a in self.angles:
            da = -n @ _rot(a).T  # inward normal turned by a
            for length in lengths:
                q.append(q0), d.append(da), L.append(np.full(len(c), length))
        q, d, L = np.concatenate(q), np.concatenate(d), np.concatenate(L)
        # pre-contact point must be on the table and clear of the block (rules out deep concave corners)
        block = shapely.Polygon(keypoints(pose))
        ok = np.all((q >= ARENA[0]) & (q <= ARENA[1]), axis=1)
        ok &= shapely.distance(block, shapely.points(q)) > AGENT_RADIUS + self.gap - 0.5
        return q[ok], d[ok], L[ok]

    def _push_targets(self, q0, d, length, speed):
        """Targets from q0 along d for gap + length px at `speed` px/step, then hold to let the agent settle."""
        total = self.gap + length
        n = int(math.ceil(total / (speed - 1e-3)))
        end = q0 + d * total
        return [q0 + d * (total * k / n) for k in range(1, n + 1)] + [end] * self.settle_steps

    @staticmethod
    def _escape(block, p):
        """The nearest point to p (on a polar grid) where the agent is clear of the block and on the table."""
        r, a = np.meshgrid(np.arange(4.0, 80.0, 4.0), np.linspace(0, 2 * np.pi, 24, endpoint=False), indexing="ij")
        pts = p + np.stack([r * np.cos(a), r * np.sin(a)], -1).reshape(-1, 2)  # sorted by radius
        ok = np.all((pts >= ARENA[0]) & (pts <= ARENA[1]), axis=1)
        ok &= shapely.distance(block, shapely.points(pts)) > AGENT_RADIUS + 5
        return pts[np.argmax(ok)] if ok.any() else np.clip(p, *ARENA)

    def _plan(self, s, prev):
        """Pick the best push by simulation and fill self.targets / self.expected with approach + push."""
        pose = s[[4, 5, 6]]
        err = keypoint_error(pose)
        speed = self.fine_step if err < self.fine_below else self.max_step
        # a candidate push is simulated from rest at its pre-contact point, so its outcome depends on the block's
        # state only, not on where the agent is: while the block rests (a learner approaching it, DAgger's
        # common case) every re-plan reuses the outcomes and only re-routes the approach
        key = s[4:].tobytes()
        if self.scored is None or self.scored[0] != key:
            q, d, L = self._candidates(pose, err)
            self.scored = (key, q, d, L, np.full(len(q), np.nan))
        _, q, d, L, outcome = self.scored
        # where is the agent? if it touches the (inflated) block, back off first along the away direction
        block = shapely.Polygon(keypoints(pose))
        start, lead = np.asarray(prev, float), []
        if shapely.distance(block, shapely.Point(*start)) < AGENT_RADIUS + 5:
            start = self._escape(block, start)  # after a push the target sits on (or in) the block: back off
            lead = [start]
        roadmap = _Roadmap(start, pose)
        approach, via = roadmap.lengths(q) if len(q) else (np.zeros(0), np.zeros(0, int))
        reach = np.flatnonzero(np.isfinite(approach))  # indices into the candidates (and their outcomes)
        q, d, L, approach, via = q[reach], d[reach], L[reach], approach[reach], via[reach]
        if len(q) == 0:  # boxed in (block against a wall): step toward the table center, plan again next step
            self.targets = [np.clip(np.asarray(prev) + (256 - np.asarray(prev)) * 0.1, *ARENA)]
            self.expected = [self.sim.rollout(s, self.targets, record=True)[0]]
            return
        # score every candidate push by simulating it from rest at its pre-contact point
        fine = err < self.fine_below
        scores = np.empty(len(q))
        for i, j in enumerate(reach):
            if np.isnan(outcome[j]):
                sc = s.copy()
                sc[0:2], sc[2:4] = q[i], 0.0
                final = self.sim.rollout(sc, self._push_targets(q[i], d[i], L[i], speed))
                outcome[j] = self._cost(final[[4, 5, 6]], fine)
            steps = approach[i] / self.max_step + (self.gap + L[i]) / speed
            scores[i] = outcome[j] + self.time_cost * steps
        # verify the best few by simulating the whole plan (approach included) from the live state
        now = self._cost(pose, fine)
        order = np.argsort(scores)
        best, best_cost = None, np.inf
        for i in order[: self.top_k]:
            plan = self._full_plan(s, prev, lead, roadmap, q[i], d[i], L[i], via[i], speed, fine)
            if plan[2] < best_cost:
                best, best_cost = plan, plan[2]
        if best_cost - self.time_cost * len(best[0]) > now - 0.05:
            # no push helps (a local minimum of the cost, typically ~2 px from the goal): explore with a
            # random one of the better candidates instead of standing still
            i = order[self.rng.integers(min(len(order), 10))]
            best = self._full_plan(s, prev, lead, roadmap, q[i], d[i], L[i], via[i], speed, fine)
        self.targets, self.expected = list(best[0]), list(best[1])

    @staticmethod
    def _cost(pose, fine):
        """Planning cost in px: keypoint error far from the goal; near it, where the keypoint error no longer
        tracks the success test, 50 * (1 - coverage) (1 px of shift costs ~2% coverage), -100 on success."""
        if not fine:
            return keypoint_error(pose)
        cov = _coverage_of(pose)
        return 50.0 * (1.0 - cov) - 100.0 * (cov > 0.95)

    def _full_plan(self, s, prev, lead, roadmap, q, d, length, via, speed, fine):
        """Approach + push targets from prev, simulated from the live state s; cut where the env would
        terminate (success). -> (targets, predicted states, cost incl. time)."""
        way = lead + roadmap.path(q, via)
        targets = _densify(prev, way, self.max_step - 1e-3) + self._push_targets(q, d, length, speed)
        states = self.sim.rollout(s, targets, record=True)
        poses = states[:, [4, 5, 6]]
        k = len(targets) - 1
        for j in range(len(targets)):
            if keypoint_error(poses[j]) < 6.0 and _coverage_of(poses[j]) > 0.95:
                k = j
                break
        cost = self._cost(poses[k], fine) + self.time_cost * (k + 1)
        return targets[: k + 1], states[: k + 1], cost


def make_expert(task, **kw):
    """The push-planning expert; kw: PushTExpert's options (seed, max_step, ...)."""
    return PushTExpert(**kw)


# -----------------------------------------------------------------------------
# episodes and evaluation


def run_expert_episode(task, seed, expert_kw=None, render=True, image_size=None):
    """Roll out the expert on one seeded episode until success (the env terminates) or the time limit.
    -> dict(success, steps, coverage, actions (T, 2) float32, max_delta, plan_seconds, decisions, and when
    render: images uint8 (T, S, S, 3) at image_size (None = the task's), states float32 (T, 2): the observation
    BEFORE each action)."""
    spec = SPECS[task]
    env = make_env(task, obs_type=None if render else "state", image_size=image_size)
    expert = make_expert(task, seed=seed, **(expert_kw or {}))
    obs, info = env.reset(seed=seed)
    frames, actions, success, start = [], [], False, get_state(env)[:2]
    for _ in range(spec["max_steps"]):
        if render:
            frames.append(obs_to_frame(task, obs))
        actions.append(expert.get_action(env))
        obs, _, success, truncated, info = env.step(actions[-1])
        if success or truncated:  # success = terminated: coverage > 0.95 ends the episode
            break
    env.close()
    moves = np.diff(np.vstack([start] + actions), axis=0)  # per-step target change, the first from the agent
    ep = dict(seed=seed, success=bool(success), steps=len(actions), coverage=float(info.get("coverage", 0.0)),
              actions=np.array(actions, dtype=np.float32), max_delta=float(np.linalg.norm(moves, axis=1).max()),
              plan_seconds=expert.plan_time, decisions=expert.n_decisions)
    if render:
        ep["images"] = np.stack([f[spec["image_keys"][0]] for f in frames])
        ep["states"] = np.stack([f[spec["state_key"]] for f in frames])
    return ep


def evaluate_expert(task, num_episodes, seed=TEST_SEED, expert_kw=None, verbose=False):
    """Expert success rate etc. on seeded episodes without rendering or writing anything."""
    eps = []
    for s in range(seed, seed + num_episodes):
        eps.append(run_expert_episode(task, s, expert_kw, render=False))
        if verbose:
            e = eps[-1]
            print(f"seed {s}: success={e['success']} steps={e['steps']} coverage={e['coverage']:.3f}")
    ok = [e for e in eps if e["success"]]
    return dict(episodes=num_episodes, success_rate=len(ok) / num_episodes,
                median_steps=float(np.median([e["steps"] for e in ok])) if ok else float("nan"),
                seconds_per_decision=sum(e["plan_seconds"] for e in eps) / sum(e["decisions"] for e in eps),
                max_action_delta=max(e["max_delta"] for e in eps),
                failed_seeds=[e["seed"] for e in eps if not e["success"]])
