"""Quadruped tasks walk, run, stand and jump (docs/algorithm.md §11.3; docs/decisions.md D11).

The physics model is dm_control's stock ``quadruped.xml``, edited at load time as the suite
does (floor half-size = time limit x speed, walls, ball, target, terrain and rangefinders
removed). The task code is ours: dm_control 1.0.28's quadruped module calls ``numpy.in1d``,
which numpy 2.4 removed (docs/decisions.md D11).
"""

import collections
import xml.etree.ElementTree as ElementTree

import numpy as np
from dm_control import mujoco as dm_mujoco
from dm_control.mujoco.wrapper.mjbindings import enums
from dm_control.rl import control
from dm_control.suite import base, common

from envs.rewards import tolerance
from envs.physics_env import PhysicsTaskEnv

CONTROL_TIMESTEP = 0.02
TIME_LIMIT = 20.0
EPISODE_CONTROL_STEPS = 1000  # 20 s / 0.02 s
Y_CAMERA_ID = 2  # body-attached COM-tracking camera (URLB's zoomed choice, docs/algorithm.md §11.3)

WALK_SPEED = 0.5
RUN_SPEED = 5.0
JUMP_HEIGHT = 1.0
MAX_HEIGHT_SEARCH_TRIES = 10_000

TASK_NAMES = ("quadruped_walk", "quadruped_run", "quadruped_stand", "quadruped_jump")
# The suite sizes the floor so that the episode cannot run off it at the task's speed.
FLOOR_HALF_SIZES = {
    "quadruped_walk": TIME_LIMIT * WALK_SPEED,
    "quadruped_run": TIME_LIMIT * RUN_SPEED,
    "quadruped_stand": TIME_LIMIT * WALK_SPEED,
    "quadruped_jump": TIME_LIMIT * WALK_SPEED,
}

_REMOVED_GEOMS = ("wall_px", "wall_py", "wall_nx", "wall_ny", "terrain")
_REMOVED_BODIES = ("ball",)
_REMOVED_SITES = ("target",)


def model_xml(floor_half_size: float) -> str:
    """The stock quadruped model with the given floor and without the fetch/escape props."""
    root = ElementTree.fromstring(common.read_model("quadruped.xml"))
    parent_of = {child: parent for parent in root.iter() for child in parent}
    for element in list(root.iter()):
        name = element.get("name")
        removed = (
            (element.tag == "geom" and name in _REMOVED_GEOMS)
            or (element.tag == "body" and name in _REMOVED_BODIES)
            or (element.tag == "site" and name in _REMOVED_SITES)
            # Range computations are costly and no task here observes them.
            or element.tag == "rangefinder"
        )
        if removed:
            parent_of[element].remove(element)
        elif element.tag == "geom" and name == "floor":
            element.set("size", f"{floor_half_size:g} {floor_half_size:g} .5")
    return ElementTree.tostring(root, encoding="unicode")


class QuadrupedPhysics(dm_mujoco.Physics):
    """Read-outs of the quadruped state used by observations and rewards."""

    def _sensor_slice_names(self, *sensor_types):
        """Sensor names of the given MuJoCo types, in declaration order."""
        mask = np.isin(self.model.sensor_type, sensor_types)
        return [self.model.id2name(int(index), "sensor") for index in np.flatnonzero(mask)]

    def _reload_from_data(self, data):
        super()._reload_from_data(data)
        self._cached_names = {}

    def _names(self, key, factory):
        if key not in self._cached_names:
            self._cached_names[key] = factory()
        return self._cached_names[key]

    def torso_upright(self) -> float:
        return float(self.named.data.xmat["torso", "zz"])

    def torso_velocity(self) -> np.ndarray:
        """Velocimeter reading: torso linear velocity in the torso's own frame."""
        return self.named.data.sensordata["velocimeter"].copy()

    def com_height(self) -> float:
        return float(self.named.data.sensordata["center_of_mass"][2])

    def egocentric_state(self) -> np.ndarray:
        hinges = self._names(
            "hinges",
            lambda: [
                self.model.id2name(int(index), "joint")
                for index in np.flatnonzero(self.model.jnt_type == enums.mjtJoint.mjJNT_HINGE)
            ],
        )
        return np.hstack((self.named.data.qpos[hinges], self.named.data.qvel[hinges], self.data.act))

    def imu(self) -> np.ndarray:
        names = self._names(
            "imu",
            lambda: self._sensor_slice_names(enums.mjtSensor.mjSENS_ACCELEROMETER, enums.mjtSensor.mjSENS_GYRO),
        )
        return self.named.data.sensordata[names].copy()

    def force_torque(self) -> np.ndarray:
        """Toe force and torque sensors, squashed with arcsinh to tame contact spikes."""
        names = self._names(
            "force_torque",
            lambda: self._sensor_slice_names(enums.mjtSensor.mjSENS_FORCE, enums.mjtSensor.mjSENS_TORQUE),
        )
        return np.arcsinh(self.named.data.sensordata[names])


def _place_without_contacts(physics: QuadrupedPhysics, orientation: np.ndarray) -> None:
    """Raises the body from the floor in 1 cm steps until nothing touches."""
    height = 0.0
    for _ in range(MAX_HEIGHT_SEARCH_TRIES):
        try:
            with physics.reset_context():
                physics.named.data.qpos["root"][:3] = 0.0, 0.0, height
                physics.named.data.qpos["root"][3:] = orientation
        except control.PhysicsError:
            # Deep initial penetration can overflow the contact buffer; just go higher.
            pass
        else:
            if physics.data.ncon == 0:
                return
        height += 0.01
    raise RuntimeError("could not find a contact-free starting height for the quadruped")


class QuadrupedTask(base.Task):
    """One task class for the four quadruped tasks; they differ only in the reward."""

    def __init__(self, task: str, random=None):
        if task not in TASK_NAMES:
            raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASK_NAMES)}")
        self._task = task
        super().__init__(random=random)

    def initialize_episode(self, physics):
        orientation = self.random.randn(4)
        orientation /= np.linalg.norm(orientation)
        _place_without_contacts(physics, orientation)
        super().initialize_episode(physics)

    def get_observation(self, physics):
        observation = collections.OrderedDict()
        observation["egocentric_state"] = physics.egocentric_state()
        observation["torso_velocity"] = physics.torso_velocity()
        observation["torso_upright"] = physics.torso_upright()
        observation["imu"] = physics.imu()
        observation["force_torque"] = physics.force_torque()
        return observation

    def get_reward(self, physics):
        return task_reward(self._task, physics)


def task_reward(task: str, physics: QuadrupedPhysics) -> float:
    # (1 + u) / 2: 1 when the torso's z axis points up, 0 when upside down.
    upright = tolerance(physics.torso_upright(), 1.0, float("inf"), margin=2.0, sigmoid="linear", value_at_margin=0.0)
    if task == "quadruped_stand":
        return upright
    if task == "quadruped_jump":
        jump = tolerance(
            physics.com_height(), JUMP_HEIGHT, float("inf"), margin=JUMP_HEIGHT, sigmoid="linear", value_at_margin=0.5
        )
        return upright * jump
    speed = WALK_SPEED if task == "quadruped_walk" else RUN_SPEED
    move = tolerance(
        physics.torso_velocity()[0], speed, float("inf"), margin=speed, sigmoid="linear", value_at_margin=0.5
    )
    return upright * move


def make_quadruped(task: str, obs_type: str, action_repeat: int, seed: int, img_size: int) -> PhysicsTaskEnv:
    physics = QuadrupedPhysics.from_xml_string(model_xml(FLOOR_HALF_SIZES[task]), common.ASSETS)
    return PhysicsTaskEnv(
        physics=physics,
        task=QuadrupedTask(task, random=np.random.RandomState(seed)),
        control_timestep=CONTROL_TIMESTEP,
        episode_control_steps=EPISODE_CONTROL_STEPS,
        camera_id=Y_CAMERA_ID,
        obs_type=obs_type,
        action_repeat=action_repeat,
        img_size=img_size,
    )
