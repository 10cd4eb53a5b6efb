"""Meta-World reach with the "reach_harder" goal sets (docs/algorithm.md §11.5; docs/decisions.md D10).

Meta-World 3.1.1's ``reach-v3`` (gymnasium API) driven by the agent's 4-d action, with the
original Choreographer protocol: the reward of an agent step is the number of its env steps on
which the tool-centre point was within 5 cm of the goal, episodes last 250 agent steps, images
come from the ``corner4`` camera with rows flipped so they are upright (docs/decisions.md D10), and goals
come from ``data/mw_reach_harder_goals.json`` or a user's goal file of the same format (run seed =
goal set, task id = goal in the set; reading and validation in ``envs.mw_goals``).
"""

import atexit
import pickle
import weakref

import mujoco
import numpy as np
from metaworld.envs.sawyer_reach_v3 import SawyerReachEnvV3
from metaworld.types import Task

from envs.mw_goals import GOALS_FILE, GoalFileError, goal_set, load_goal_sets  # noqa: F401 (re-exported)
from envs.wrappers import SavedSimulation, StepRecordEnv

CAMERA_NAME = "corner4"
EPISODE_AGENT_STEPS = 250
SUCCESS_RADIUS = 0.05
STATE_DIM = 39
# Steps of mocap tracking used to carry the hand to the goal for the goal observation; the
# environment's own reset uses 50 to bring the hand to its start.
GOAL_SETTLING_STEPS = 50
GOAL_SETTLING_ROUNDS = 3

# Gymnasium frees its EGL renderer in __del__, which fails with noisy tracebacks when it runs
# after MuJoCo's own exit hook has shut EGL down. Closing still-open environments from an exit
# hook registered after the first render (exit hooks run last-in, first-out) avoids that.
_OPEN_ENVS: "weakref.WeakSet[MetaWorldReachEnv]" = weakref.WeakSet()
_exit_hook_registered = False


def _close_open_envs():
    for env in list(_OPEN_ENVS):
        env.close()


def _register_exit_hook_once():
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_close_open_envs)
        _exit_hook_registered = True


class MetaWorldReachEnv(StepRecordEnv):
    # Reward counts the steps within 5 cm of the goal: any reward means it was reached.
    success_threshold = 0.0
    goal_task = True

    def evaluation_goals(self, task_id: int | None, episodes: int) -> list[int | None]:
        """Without a task id, every goal of the run's goal set once (docs/algorithm.md §11.8)."""
        return list(range(self.num_goals)) if task_id is None else [task_id] * episodes

    def __init__(self, obs_type: str, action_repeat: int, seed: int, img_size: int, task_id: int | None,
                 goals_file=None):
        # The shipped file holds 10 sets of 50 goals: [object x, y, z, goal x, y, z] per goal.
        self._goals = goal_set(load_goal_sets(goals_file), seed, goals_file)
        self._default_task_id = task_id
        self._goal_rng = np.random.default_rng(seed)
        self._sawyer = SawyerReachEnvV3(
            # The renderer is created lazily, so states-mode environments pay nothing for it.
            render_mode="rgb_array",
            camera_name=CAMERA_NAME,
            width=img_size,
            height=img_size,
        )
        self.task_id = None
        self._closed = False
        _OPEN_ENVS.add(self)
        self._last_state = np.zeros(STATE_DIM)
        super().__init__(
            obs_type=obs_type,
            action_repeat=action_repeat,
            img_size=img_size,
            action_low=-np.ones(4),
            action_high=np.ones(4),
            state_dim=STATE_DIM,
            episode_agent_steps=EPISODE_AGENT_STEPS,
        )

    @property
    def num_goals(self) -> int:
        """How many goals the run's goal set holds (valid task ids: 0..num_goals - 1)."""
        return len(self._goals)

    @property
    def goal_position(self) -> np.ndarray:
        return np.array(self._sawyer._target_pos, dtype=np.float64)

    def tcp_position(self) -> np.ndarray:
        return np.array(self._sawyer.tcp_center, dtype=np.float64)

    def _set_goal(self, task_id: int) -> None:
        # Meta-World's public way to fix a task is a Task record whose payload is serialised
        # in memory; nothing is read from or written to disk here.
        payload = {
            "env_cls": SawyerReachEnvV3,
            "rand_vec": self._goals[task_id].copy(),
            "partially_observable": True,
        }
        self._sawyer.set_task(Task(env_name="reach-v3", data=pickle.dumps(payload)))
        self.task_id = task_id

    def _reset_simulation(self, task_id):
        if task_id is None:
            task_id = self._default_task_id
        if task_id is None:
            task_id = int(self._goal_rng.integers(len(self._goals)))
        task_id = int(task_id)
        if not 0 <= task_id < len(self._goals):
            raise ValueError(f"bad task_id {task_id}; valid task ids: 0..{len(self._goals) - 1} or None")
        self._set_goal(task_id)
        self._last_state, _ = self._sawyer.reset()

    def _control_step(self, native_action):
        self._last_state, _, _, _, info = self._sawyer.step(native_action)
        return float(info["success"])

    def _state_vector(self):
        return self._last_state

    def _render_rgb(self):
        # Gymnasium's renderer returns the top row first; the corner cameras were designed
        # for mujoco_py's bottom-row-first buffers, so flipping rows gives the upright view.
        image = self._sawyer.render()
        _register_exit_hook_once()
        return np.ascontiguousarray(image[::-1])

    def _record(self, *, reward, is_first, is_last, action):
        record = super()._record(reward=reward, is_first=is_first, is_last=is_last, action=action)
        record["success"] = 1.0 if reward > 0 else 0.0
        return record

    # ------------------------------------------------------------ physics states

    def physics_state(self) -> np.ndarray:
        data = self._sawyer.data
        return np.concatenate([data.qpos, data.qvel]).astype(np.float64)

    def reward_from_physics(self, physics_state: np.ndarray) -> float:
        """Success indicator (0/1) of one env step ending in that state, for the current goal."""
        with SavedSimulation(self._sawyer.model, self._sawyer.data):
            self._put_state(physics_state)
            return float(np.linalg.norm(self._sawyer.tcp_center - self._sawyer._target_pos) <= SUCCESS_RADIUS)

    def render_physics(self, physics_state: np.ndarray) -> np.ndarray:
        with SavedSimulation(self._sawyer.model, self._sawyer.data):
            self._put_state(physics_state)
            return self._pixels()

    def goal_observation(self) -> np.ndarray:
        """Observation with the hand carried to the goal by the mocap, puck where it is."""
        if self._sawyer._target_pos is None:
            raise RuntimeError("goal_observation() needs a goal: call reset() first")
        with SavedSimulation(self._sawyer.model, self._sawyer.data):
            self._carry_hand_to(self.goal_position)
            if self.obs_type == "pixels":
                return self._pixels()
            current = self._sawyer._get_curr_obs_combined_no_goal()
            # Same layout as a reset observation: current part repeated, goal part zeroed.
            return np.concatenate([current, current, np.zeros(3)]).astype(np.float32)

    def _put_state(self, physics_state):
        model, data = self._sawyer.model, self._sawyer.data
        state = np.asarray(physics_state, dtype=np.float64).ravel()
        if state.shape[0] != model.nq + model.nv:
            raise ValueError(f"physics state has {state.shape[0]} entries; this environment needs {model.nq + model.nv}")
        data.qpos[:] = state[: model.nq]
        data.qvel[:] = state[model.nq :]
        mujoco.mj_forward(model, data)

    def _carry_hand_to(self, target):
        """Moves the mocap so the finger midpoint settles on the target (offset corrected)."""
        model, data = self._sawyer.model, self._sawyer.data
        mocap_id = model.body_mocapid[data.body("mocap").id]
        mocap_target = np.array(target, dtype=np.float64)
        for _ in range(GOAL_SETTLING_ROUNDS):
            for _ in range(GOAL_SETTLING_STEPS):
                data.mocap_pos[mocap_id] = mocap_target
                data.mocap_quat[mocap_id] = (1.0, 0.0, 1.0, 0.0)
                data.ctrl[:] = (-1.0, 1.0)
                mujoco.mj_step(model, data, nstep=self._sawyer.frame_skip)
            mujoco.mj_forward(model, data)
            # The welded hand lags the mocap by a fixed offset; aim the mocap past it.
            mocap_target = mocap_target + (np.asarray(target) - self._sawyer.tcp_center)
        data.qvel[:] = 0.0
        mujoco.mj_forward(model, data)

    def close(self):
        if not self._closed:
            self._closed = True
            _OPEN_ENVS.discard(self)
            self._sawyer.close()


def make_metaworld(
    task: str, obs_type: str, action_repeat: int, seed: int, img_size: int, task_id: int | None = None,
    goals_file=None,
) -> MetaWorldReachEnv:
    return MetaWorldReachEnv(obs_type, action_repeat, seed, img_size, task_id, goals_file)
