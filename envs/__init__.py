"""Environments of the Choreographer rebuild (spec envs_and_data.md; decisions 2, 9, 10, 11, 15).

Interface::

    env = make(task, obs_type, action_repeat, seed, img_size=64, exorl=False, task_id=None)
    env.obs_shape, env.obs_dtype, env.action_dim, env.episode_steps
    env.reset(task_id=None) -> step record;  env.step(action) -> step record (spec 5.3)
    env.physics_state(), env.reward_from_physics(state), env.render_physics(state),
    env.goal_observation(), env.close()

Domains: walker, quadruped (dm_control), jaco (dm_control manipulation), mw (Meta-World reach-v3).
"""

import os

# MuJoCo picks its OpenGL backend when dm_control/mujoco is first imported, so this must run
# before any of them: headless machines render through EGL unless the user chose otherwise.
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"

from envs.make import DOMAINS, PRIMAL_TASKS, TASKS, domain_of, make, primal_task  # noqa: E402
from envs.wrappers import OBS_TYPES  # noqa: E402

__all__ = ["DOMAINS", "OBS_TYPES", "PRIMAL_TASKS", "TASKS", "domain_of", "make", "primal_task"]
