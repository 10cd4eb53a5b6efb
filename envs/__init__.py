"""Environments of the Choreographer rebuild (docs/algorithm.md §11; docs/decisions.md D2, D9, D10,
D11, D15).

Interface::

    env = make(task, obs_type, action_repeat, seed, img_size=64, exorl=False, task_id=None)
    env.obs_shape, env.obs_dtype, env.action_dim, env.episode_steps
    env.reset(task_id=None) -> step record;  env.step(action) -> step record (docs/algorithm.md §11.6)
    env.physics_state(), env.reward_from_physics(state), env.render_physics(state),
    env.goal_observation(), env.close()

Domains: walker, quadruped (dm_control), jaco (dm_control manipulation), mw (Meta-World reach-v3).
"""

import os

# MuJoCo picks its OpenGL backend when dm_control/mujoco is first imported, so this must run
# before any of them: headless machines render through EGL unless the user chose otherwise.
if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"

from envs.make import DOMAINS, GOAL_DOMAINS, PRIMAL_TASKS, TASKS, domain_of, make, primal_task  # noqa: E402
from envs.wrappers import OBS_TYPES  # noqa: E402

__all__ = ["DOMAINS", "GOAL_DOMAINS", "OBS_TYPES", "PRIMAL_TASKS", "TASKS", "domain_of", "make", "primal_task"]
