"""Jaco reach-to-corner tasks, Duplo and site variants (docs/algorithm.md §11.4; docs/decisions.md D9).

The scene is assembled from dm_control's manipulation library (standard arena, Jaco arm and
3-finger hand with the pinch site as tool-centre point, ``front_close`` camera) and its ``Reach``
task, given our own workspaces: the target box collapses to one corner point, so each task has a
deterministic target. ``exorl=True`` selects the site variant whose 42-d observations and 18-d
physics states match the ExORL dataset; otherwise a Duplo brick marks the target (55-d, 31-d).
Episodes are cut by our own counter at 250 control steps (docs/decisions.md D9 explains why not
composer's time limit).
"""

import collections

import numpy as np
from dm_control import composer
from dm_control.entities import props
from dm_control.manipulation import reach
from dm_control.manipulation.shared import arenas, observations, robots, workspaces
from dm_control.utils import inverse_kinematics

from envs.physics_env import PhysicsStateMixin
from envs.wrappers import StepRecordEnv

CONTROL_TIMESTEP = 0.04
EPISODE_CONTROL_STEPS = 250  # 10 s / 0.04 s
CAMERA_NAME = "front_close"
ARM_BASE_OFFSET = (0.0, 0.4, 0.0)

# Lifted 1 mm so a brick placed there does not start in contact with the table.
TARGET_HEIGHT = 0.001
TARGETS = {
    "jaco_reach_top_left": (-0.09, 0.09, TARGET_HEIGHT),
    "jaco_reach_top_right": (0.09, 0.09, TARGET_HEIGHT),
    "jaco_reach_bottom_left": (-0.09, -0.09, TARGET_HEIGHT),
    "jaco_reach_bottom_right": (0.09, -0.09, TARGET_HEIGHT),
}
# Where the tool-centre point starts, per variant (lower corner, upper corner).
TCP_SPAWN_BOXES = {
    "duplo": ((-0.1, -0.1, 0.2), (0.1, 0.1, 0.4)),
    "site": ((-0.2, -0.2, 0.02), (0.2, 0.2, 0.4)),
}
# ExORL and Choreographer drop the target position from the state vector; the camera is
# rendered by us, not by composer.
_UNOBSERVED = ("target_position", CAMERA_NAME)

# Field names the dm_control ``Reach`` task reads from its workspace argument.
ReachWorkspace = collections.namedtuple("ReachWorkspace", ["target_bbox", "tcp_bbox", "arm_offset"])


def build_reach_task(task: str, use_site: bool):
    """Returns the composer task and its Duplo brick (None in the site variant)."""
    target = TARGETS[task]
    tcp_lower, tcp_upper = TCP_SPAWN_BOXES["site" if use_site else "duplo"]
    workspace = ReachWorkspace(
        target_bbox=workspaces.BoundingBox(lower=target, upper=target),
        tcp_bbox=workspaces.BoundingBox(lower=tcp_lower, upper=tcp_upper),
        arm_offset=ARM_BASE_OFFSET,
    )
    settings = observations.PERFECT_FEATURES
    prop = None
    if not use_site:
        prop = props.Duplo(
            observable_options=observations.make_options(settings, observations.FREEPROP_OBSERVABLES)
        )
    reach_task = reach.Reach(
        arena=arenas.Standard(),
        arm=robots.make_arm(obs_settings=settings),
        hand=robots.make_hand(obs_settings=settings),
        prop=prop,
        obs_settings=settings,
        workspace=workspace,
        control_timestep=CONTROL_TIMESTEP,
    )
    if use_site:
        # The task only moves the site at episode start; placing it in the model too makes
        # rewards and renders of stored states right even before the first reset.
        reach_task.root_entity.mjcf_model.find("site", "target_site").pos = target
    return reach_task, prop


class JacoReachEnv(PhysicsStateMixin, StepRecordEnv):
    # The zero-shot protocol's success: any reward above 1e-4 in the episode.
    success_threshold = 1e-4

    def __init__(self, task: str, obs_type: str, action_repeat: int, seed: int, img_size: int, exorl: bool):
        self.variant = "site" if exorl else "duplo"
        self._target = np.asarray(TARGETS[task], dtype=np.float64)
        self._reach, self._brick = build_reach_task(task, use_site=exorl)
        observables = self._reach.observables
        self._observed = [
            (name, observable)
            for name, observable in observables.items()
            if observable.enabled and name not in _UNOBSERVED
        ]
        # We read observables straight from the physics (the same callables, corruptors
        # included), so composer need not compute them after every control step.
        for observable in observables.values():
            observable.enabled = False
        self._composer_env = composer.Environment(
            self._reach,
            time_limit=float("inf"),
            random_state=np.random.RandomState(seed),
            strip_singleton_obs_buffer_dim=True,
        )
        spec = self._composer_env.action_spec()
        physics = self._composer_env.physics
        physics.forward()
        super().__init__(
            obs_type=obs_type,
            action_repeat=action_repeat,
            img_size=img_size,
            action_low=spec.minimum,
            action_high=spec.maximum,
            state_dim=self._state_vector().shape[0],
            episode_control_steps=EPISODE_CONTROL_STEPS,
        )

    @property
    def _physics(self):
        # Composer may recompile the physics on reset, so never keep a stale reference.
        return self._composer_env.physics

    @property
    def physics(self):
        return self._physics

    @property
    def _camera_id(self):
        return self._physics.model.name2id(CAMERA_NAME, "camera")

    def target_position(self) -> np.ndarray:
        """Where the tool-centre point should go: the corner, or the brick's current position."""
        if self.variant == "site":
            return self._target.copy()
        position, _ = self._brick.get_pose(self._physics)
        return np.array(position, dtype=np.float64)

    def tcp_position(self) -> np.ndarray:
        return np.array(self._physics.bind(self._reach.hand.tool_center_point).xpos, dtype=np.float64)

    def _reset_simulation(self, task_id):
        self._composer_env.reset()

    def _control_step(self, native_action):
        return self._composer_env.step(native_action).reward

    def _state_vector(self):
        physics = self._physics
        return np.concatenate([np.ravel(observable(physics)) for _, observable in self._observed])

    def _task_reward(self, physics):
        return self._reach.get_reward(physics)

    def goal_observation(self) -> np.ndarray:
        """Observation with the pinch site at the target, hand pointing down, everything at rest."""
        physics = self._physics
        arm_joints = self._reach.arm.joints
        solution = inverse_kinematics.qpos_from_site_pose(
            physics,
            self._reach.hand.tool_center_point.full_identifier,
            target_pos=self.target_position(),
            target_quat=workspaces.DOWN_QUATERNION,
            joint_names=[joint.full_identifier for joint in arm_joints],
        )
        goal_state = self.physics_state()
        model = physics.model
        joint_ids = [physics.bind(joint).element_id for joint in arm_joints]
        for joint_id in joint_ids:
            address = model.jnt_qposadr[joint_id]
            goal_state[address] = solution.qpos[address]
        goal_state[model.nq : model.nq + model.nv] = 0.0
        with self._visiting_state(goal_state):
            return self._observation()

    def close(self):
        self._release_camera()
        self._composer_env.close()


def make_jaco(task: str, obs_type: str, action_repeat: int, seed: int, img_size: int, exorl: bool) -> JacoReachEnv:
    return JacoReachEnv(task, obs_type, action_repeat, seed, img_size, exorl)
