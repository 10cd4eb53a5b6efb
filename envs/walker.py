"""Planar walker tasks stand, walk, run and flip (docs/algorithm.md §11.3; docs/decisions.md D11).

All four tasks use the stock dm_control ``walker.xml`` (the copies shipped upstream
either fail to compile or are byte-identical). stand/walk/run are the stock suite tasks;
flip is ours: the stand term of the stock tasks times a forward angular-momentum term.
"""

import numpy as np
from dm_control.suite import walker as suite_walker

from envs.rewards import tolerance
from envs.physics_env import PhysicsTaskEnv

CONTROL_TIMESTEP = 0.025
EPISODE_CONTROL_STEPS = 1000  # 25 s time limit / 0.025 s
SIDE_CAMERA_ID = 0

STAND_HEIGHT = 1.2
FLIP_ANGULAR_MOMENTUM = 5.0

# Stock suite speeds (m/s); stand is the zero-speed task.
MOVE_SPEEDS = {"walker_stand": 0.0, "walker_walk": 1.0, "walker_run": 8.0}
TASK_NAMES = ("walker_stand", "walker_walk", "walker_run", "walker_flip")


class FlipWalker(suite_walker.PlanarWalker):
    """Rewards standing tall while spinning forward (positive angular momentum about +y)."""

    def __init__(self, random=None):
        super().__init__(move_speed=0.0, random=random)

    def get_reward(self, physics):
        standing = tolerance(physics.torso_height(), STAND_HEIGHT, float("inf"), margin=STAND_HEIGHT / 2)
        upright = (1.0 + physics.torso_upright()) / 2.0
        stand_reward = (3.0 * standing + upright) / 4.0
        # subtree_angmom is filled because the model's subtreelinvel sensor makes MuJoCo compute
        # subtree velocities after every step and every forward pass.
        angular_momentum = physics.named.data.subtree_angmom["torso"][1]
        spin = tolerance(
            angular_momentum,
            FLIP_ANGULAR_MOMENTUM,
            float("inf"),
            margin=FLIP_ANGULAR_MOMENTUM,
            sigmoid="linear",
            value_at_margin=0.0,
        )
        return stand_reward * (5.0 * spin + 1.0) / 6.0


def make_walker(task: str, obs_type: str, action_repeat: int, seed: int, img_size: int) -> PhysicsTaskEnv:
    physics = suite_walker.Physics.from_xml_string(*suite_walker.get_model_and_assets())
    random = np.random.RandomState(seed)
    if task == "walker_flip":
        walker_task = FlipWalker(random=random)
    else:
        walker_task = suite_walker.PlanarWalker(move_speed=MOVE_SPEEDS[task], random=random)
    return PhysicsTaskEnv(
        physics=physics,
        task=walker_task,
        control_timestep=CONTROL_TIMESTEP,
        episode_control_steps=EPISODE_CONTROL_STEPS,
        camera_id=SIDE_CAMERA_ID,
        obs_type=obs_type,
        action_repeat=action_repeat,
        img_size=img_size,
    )
