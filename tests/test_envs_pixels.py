"""Pixel-observation tests (docs/algorithm.md §11.3-§11.5, §11.7, §11.9), a handful of frames each.

Rendering is software EGL here (tens of frames per second), so every test renders only a few images.
"""

import ctypes.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import envs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def assert_image(image, size=64):
    assert image.shape == (3, size, size)
    assert image.dtype == np.uint8
    # Not blank: a real scene has plenty of contrast.
    assert image.std() > 10.0
    assert len(np.unique(image)) > 20


def run_child(code: str, environment: dict) -> str:
    """Run ``code`` in a fresh interpreter; on failure the child's own error is shown."""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=environment, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"child exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result.stdout.strip()


def test_mujoco_gl_defaults_to_egl_without_display():
    # PYOPENGL_PLATFORM is set by MuJoCo in this process and must not leak into the child.
    unset = ("MUJOCO_GL", "DISPLAY", "PYOPENGL_PLATFORM")
    environment = {key: value for key, value in os.environ.items() if key not in unset}
    code = "import os, envs; print(os.environ['MUJOCO_GL'])"
    assert run_child(code, environment) == "egl"


def test_mujoco_gl_chosen_by_the_user_is_kept():
    # Any explicit choice must survive `import envs`; OSMesa is the one other headless backend.
    if ctypes.util.find_library("OSMesa") is None:
        pytest.skip("libOSMesa is not installed (apt-get install libosmesa6): MUJOCO_GL=osmesa cannot load")
    unset = ("DISPLAY", "PYOPENGL_PLATFORM")
    environment = {key: value for key, value in os.environ.items() if key not in unset}
    environment["MUJOCO_GL"] = "osmesa"
    assert run_child("import os, envs; print(os.environ['MUJOCO_GL'])", environment) == "osmesa"


def test_walker_pixels_follow_the_state():
    env = envs.make("walker_walk", "pixels", 2, 0)
    assert env.obs_shape == (3, 64, 64) and env.obs_dtype == np.uint8
    first = env.reset()
    assert_image(first["observation"])
    state_at_reset = env.physics_state()
    for _ in range(8):
        record = env.step(np.ones(6, dtype=np.float32))
    assert_image(record["observation"])
    # The step's image is exactly the render of the state it ended in.
    np.testing.assert_array_equal(env.render_physics(env.physics_state()), record["observation"])
    # Two different states give different images; re-rendering the reset state reproduces it.
    assert np.abs(record["observation"].astype(int) - first["observation"]).mean() > 1.0
    np.testing.assert_array_equal(env.render_physics(state_at_reset), first["observation"])
    env.close()


def test_quadruped_pixels_and_image_size():
    env = envs.make("quadruped_run", "pixels", 1, 0, img_size=48)
    assert env.obs_shape == (3, 48, 48)
    assert_image(env.reset()["observation"], size=48)
    env.close()


def test_render_physics_from_a_states_env():
    states_env = envs.make("quadruped_walk", "states", 1, 1)
    pixels_env = envs.make("quadruped_walk", "pixels", 1, 1)
    states_env.reset()
    record = pixels_env.reset()
    np.testing.assert_array_equal(states_env.render_physics(states_env.physics_state()), record["observation"])


@pytest.mark.parametrize("exorl", [False, True])
def test_jaco_pixels_and_goal_image(exorl):
    env = envs.make("jaco_reach_top_right", "pixels", 2, 0, exorl=exorl)
    record = env.reset()
    assert_image(record["observation"])
    goal = env.goal_observation()
    assert_image(goal)
    assert np.abs(goal.astype(int) - record["observation"]).mean() > 1.0
    # The goal image did not disturb the episode: rendering the current state still matches.
    np.testing.assert_array_equal(env.render_physics(env.physics_state()), record["observation"])
    env.close()


def test_mw_pixels_upright_and_goal_image():
    env = envs.make("mw_reach", "pixels", 2, 0, task_id=0)
    record = env.reset()
    image = record["observation"]
    assert_image(image)
    red, green, blue = image.astype(int)
    wooden_table = (red > green + 20) & (green > blue + 10)
    # Upright view: the table fills the lower half of the frame, not the upper one.
    assert wooden_table[32:].mean() > 0.3
    assert wooden_table[32:].mean() > 5 * wooden_table[:32].mean()
    goal = env.goal_observation()
    assert_image(goal)
    assert np.abs(goal.astype(int) - image).mean() > 1.0
    record = env.step(np.zeros(4, dtype=np.float32))
    assert_image(record["observation"])
    env.close()
