"""dm_control-backed environments and their physics-state utilities (docs/algorithm.md §11.3,
§11.6, §11.7).

``PhysicsStateMixin`` gives every dm_control environment (walker, quadruped, Jaco) the methods
used for ExORL relabelling and re-rendering: ``physics_state`` (qpos, qvel, act),
``reward_from_physics`` and ``render_physics``, both of which set the stored state inside a
reset context (ending with a forward pass) and never re-simulate. ``PhysicsTaskEnv`` drives a
suite-style ``Physics`` with a ``base.Task`` (walker, quadruped).
"""

import numpy as np
from dm_control.mujoco import engine as dm_engine

from envs.wrappers import SavedSimulation, StepRecordEnv


def flatten_observation_dict(observation: dict) -> np.ndarray:
    """Concatenates observation entries in dict order, as DMC's flat observations do."""
    return np.concatenate([np.ravel(np.asarray(value, dtype=np.float64)) for value in observation.values()])


class PhysicsStateMixin:
    """Physics-state utilities shared by all dm_control-backed environments.

    Subclasses provide ``self._physics`` (a dm_control ``mujoco.Physics``), ``self._camera_id``,
    ``self.img_size`` and ``_task_reward(physics)``. Evaluating or rendering a stored state saves
    the full integration state first and restores it afterwards, so an ongoing episode continues
    exactly as if nothing had happened (warm-start accelerations included).
    """

    def physics_state(self) -> np.ndarray:
        return np.array(self._physics.get_state(), dtype=np.float64)

    def reward_from_physics(self, physics_state: np.ndarray) -> float:
        with self._visiting_state(physics_state):
            return float(self._task_reward(self._physics))

    def render_physics(self, physics_state: np.ndarray) -> np.ndarray:
        with self._visiting_state(physics_state):
            return self._pixels()

    def _render_rgb(self) -> np.ndarray:
        # Building a camera allocates a whole scene; keep one per physics instance instead of
        # paying for it on every frame (physics.render would build a new one each call).
        physics = self._physics
        camera = getattr(self, "_cached_camera", None)
        if camera is None or getattr(self, "_cached_camera_physics", None) is not physics:
            camera = dm_engine.Camera(physics, height=self.img_size, width=self.img_size, camera_id=self._camera_id)
            self._cached_camera, self._cached_camera_physics = camera, physics
        return camera.render()

    def _release_camera(self) -> None:
        self._cached_camera = self._cached_camera_physics = None

    def _visiting_state(self, physics_state: np.ndarray):
        return _VisitState(self._physics, physics_state)


class _VisitState(SavedSimulation):
    """Temporarily puts a dm_control physics into a stored state, with a forward pass."""

    def __init__(self, physics, physics_state):
        super().__init__(physics.model.ptr, physics.data.ptr)
        self._physics = physics
        state = np.asarray(physics_state, dtype=np.float64).ravel()
        expected = physics.get_state().shape[0]
        if state.shape[0] != expected:
            raise ValueError(f"physics state has {state.shape[0]} entries; this environment needs {expected}")
        self._state = state

    def __enter__(self):
        super().__enter__()
        # reset_context ends with mj_forward, so bodies, sensors, COM and subtree momenta
        # all follow the stored positions and velocities (ExORL's relabelling recipe).
        with self._physics.reset_context():
            self._physics.set_state(self._state)
        return self._physics


class PhysicsTaskEnv(PhysicsStateMixin, StepRecordEnv):
    """A dm_control suite-style ``Physics`` driven by a ``base.Task`` (walker, quadruped)."""

    def __init__(
        self,
        *,
        physics,
        task,
        control_timestep: float,
        episode_control_steps: int,
        camera_id: int,
        obs_type: str,
        action_repeat: int,
        img_size: int,
    ):
        self._physics = physics
        self._task = task
        self._camera_id = camera_id
        self._n_sub_steps = int(round(control_timestep / physics.timestep()))
        if abs(self._n_sub_steps * physics.timestep() - control_timestep) > 1e-9:
            raise ValueError(f"control timestep {control_timestep} is not a multiple of {physics.timestep()}")
        spec = task.action_spec(physics)
        # Measured on the model's default pose; the task's random stream is left untouched so
        # the first reset draws the same initial state as the stock environment with this seed.
        physics.forward()
        state_dim = flatten_observation_dict(task.get_observation(physics)).shape[0]
        super().__init__(
            obs_type=obs_type,
            action_repeat=action_repeat,
            img_size=img_size,
            action_low=spec.minimum,
            action_high=spec.maximum,
            state_dim=state_dim,
            episode_control_steps=episode_control_steps,
        )

    @property
    def physics(self):
        """The underlying dm_control physics (read access for tests and diagnostics)."""
        return self._physics

    def _reset_simulation(self, task_id):
        with self._physics.reset_context():
            self._task.initialize_episode(self._physics)

    def _control_step(self, native_action):
        self._task.before_step(native_action, self._physics)
        self._physics.step(self._n_sub_steps)
        self._task.after_step(self._physics)
        return self._task.get_reward(self._physics)

    def _state_vector(self):
        return flatten_observation_dict(self._task.get_observation(self._physics))

    def _task_reward(self, physics):
        return self._task.get_reward(physics)

    def close(self):
        self._release_camera()
        self._physics.free()
