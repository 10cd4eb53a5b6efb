"""Agent-facing wrapper stack and step record (docs/algorithm.md §11.3, §11.6).

``StepRecordEnv`` turns any simulator that can reset, take one control step and report a state
vector or an image into the environment the agent sees: actions clipped to [-1, 1]
(docs/decisions.md D2) and mapped affinely onto the native control range, action repeat with summed
reward, a fixed episode length, pixels rendered once per agent step, and the plain-dict step record
of docs/algorithm.md §11.6.
``SavedSimulation`` lets an environment visit another simulator state and come back exactly.
"""

import math

import mujoco
import numpy as np

OBS_TYPES = ("states", "pixels")


class StepRecordEnv:
    """Base class: subclasses implement the ``_`` hooks at the bottom.

    Domain facts the training loop asks for: ``success_threshold`` (an episode whose return is above
    it reached its goal; None where the domain has no goals), ``goal_task`` (whether every episode is a
    goal-reaching one, so every evaluation reports a success rate) and ``evaluation_goals``.

    The episode ends after ``episode_control_steps`` control steps when ``episode_agent_steps``
    is None (DMC, Jaco: the last agent step may then be shorter than the action repeat), or
    after ``episode_agent_steps`` agent steps otherwise (Meta-World's 250-step time limit).
    """

    success_threshold: float | None = None
    goal_task = False

    def evaluation_goals(self, task_id: int | None, episodes: int) -> list[int | None]:
        """The goal (task id) of each episode of one evaluation."""
        return [task_id] * episodes

    def __init__(
        self,
        *,
        obs_type: str,
        action_repeat: int,
        img_size: int,
        action_low: np.ndarray,
        action_high: np.ndarray,
        state_dim: int,
        episode_control_steps: int | None = None,
        episode_agent_steps: int | None = None,
    ):
        if obs_type not in OBS_TYPES:
            raise ValueError(f"unknown obs_type {obs_type!r}; valid obs types: {', '.join(OBS_TYPES)}")
        if (episode_control_steps is None) == (episode_agent_steps is None):
            raise ValueError("give exactly one of episode_control_steps and episode_agent_steps")
        self.obs_type = obs_type
        self.action_repeat = int(action_repeat)
        self.img_size = int(img_size)
        self._action_low = np.asarray(action_low, dtype=np.float64)
        self._action_high = np.asarray(action_high, dtype=np.float64)
        self.action_dim = int(self._action_low.shape[0])
        self._episode_control_steps = episode_control_steps
        self._episode_agent_steps = episode_agent_steps
        if episode_agent_steps is not None:
            self.episode_steps = int(episode_agent_steps)
        else:
            self.episode_steps = math.ceil(episode_control_steps / self.action_repeat)
        if obs_type == "pixels":
            self.obs_shape = (3, self.img_size, self.img_size)
            self.obs_dtype = np.dtype(np.uint8)
        else:
            self.obs_shape = (int(state_dim),)
            self.obs_dtype = np.dtype(np.float32)
        self._control_steps_done = 0
        self._agent_steps_done = 0
        self._needs_reset = True

    # ----------------------------------------------------------------- public API

    def reset(self, task_id: int | None = None) -> dict:
        self._reset_simulation(task_id)
        self._control_steps_done = 0
        self._agent_steps_done = 0
        self._needs_reset = False
        return self._record(
            reward=0.0,
            is_first=True,
            is_last=False,
            action=np.zeros(self.action_dim, dtype=np.float32),
        )

    def step(self, action: np.ndarray) -> dict:
        if self._needs_reset:
            raise RuntimeError("step() called on a finished (or never reset) episode; call reset() first")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action must have shape ({self.action_dim},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError("action contains NaN or infinite values")
        action = np.clip(action, -1.0, 1.0)
        native_action = self._action_low + (action.astype(np.float64) + 1.0) * 0.5 * (
            self._action_high - self._action_low
        )
        reward = 0.0
        for _ in range(self.action_repeat):
            reward += float(self._control_step(native_action))
            self._control_steps_done += 1
            if self._episode_control_steps is not None and self._control_steps_done >= self._episode_control_steps:
                break
        self._agent_steps_done += 1
        if self._episode_agent_steps is not None:
            is_last = self._agent_steps_done >= self._episode_agent_steps
        else:
            is_last = self._control_steps_done >= self._episode_control_steps
        self._needs_reset = is_last
        return self._record(reward=reward, is_first=False, is_last=is_last, action=action)

    def physics_state(self) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not expose a physics state")

    def reward_from_physics(self, physics_state: np.ndarray) -> float:
        raise NotImplementedError(f"{type(self).__name__} cannot compute rewards from physics states")

    def render_physics(self, physics_state: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} cannot render physics states")

    def goal_observation(self) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} has no goal state; only jaco and mw tasks do")

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # ------------------------------------------------------------------- helpers

    def _record(self, *, reward: float, is_first: bool, is_last: bool, action: np.ndarray) -> dict:
        return {
            "observation": self._observation(),
            "reward": float(reward),
            "is_first": bool(is_first),
            "is_last": bool(is_last),
            # No supported task has a true terminal state: episodes only end on the time limit.
            "is_terminal": False,
            "action": np.array(action, dtype=np.float32),
            "discount": 1.0,
        }

    def _observation(self) -> np.ndarray:
        if self.obs_type == "pixels":
            return self._pixels()
        return np.asarray(self._state_vector(), dtype=np.float32)

    def _pixels(self) -> np.ndarray:
        """Channel-first uint8 image of the current simulator state."""
        image = self._render_rgb()
        return np.ascontiguousarray(np.transpose(image, (2, 0, 1)), dtype=np.uint8)

    # ------------------------------------------------- hooks for the subclasses

    def _reset_simulation(self, task_id: int | None) -> None:
        raise NotImplementedError

    def _control_step(self, native_action: np.ndarray) -> float:
        raise NotImplementedError

    def _state_vector(self) -> np.ndarray:
        raise NotImplementedError

    def _render_rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 image of the current simulator state."""
        raise NotImplementedError


class SavedSimulation:
    """Context manager that restores a MuJoCo simulation exactly as it was on entry.

    Saves the full integration state (time, positions, velocities, activations, controls,
    mocap, warm-start accelerations). On exit it restores it, recomputes the derived
    quantities with a forward pass, and then writes the saved state once more, because the
    forward pass refreshes the solver warm start and even a 1e-14 change there grows into
    visible divergence of a contact-rich rollout.
    """

    _SAVED = mujoco.mjtState.mjSTATE_INTEGRATION

    def __init__(self, model: mujoco.MjModel, data: mujoco.MjData):
        self._model, self._data = model, data

    def __enter__(self):
        self._saved = np.empty(mujoco.mj_stateSize(self._model, self._SAVED))
        mujoco.mj_getState(self._model, self._data, self._saved, self._SAVED)
        return self

    def __exit__(self, *exc_info):
        mujoco.mj_setState(self._model, self._data, self._saved, self._SAVED)
        mujoco.mj_forward(self._model, self._data)
        mujoco.mj_setState(self._model, self._data, self._saved, self._SAVED)
        return False
