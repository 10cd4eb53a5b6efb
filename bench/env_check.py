"""Environment sanity benchmark (docs/algorithm.md §11.9: random-policy returns).

For every task: the return of a uniform random policy (actions in [-1, 1], seed 1, one full
state-mode episode at action repeat 1 and one at action repeat 2) and the agent steps per
second in states mode (timed over the action-repeat-1 episode) and pixels mode (20 steps at
action repeat 1, 64 x 64, after the reset). Compare the returns with the figures in
docs/algorithm.md §11.9.

    python bench/env_check.py                        # table for all tasks
    python bench/env_check.py --tasks walker_stand,quadruped_jump --json
"""

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import envs  # noqa: E402

SEED = 1
PIXEL_STEPS = 20

# Random-policy returns of the original (upstream) task code, measured with it: the reference
# figures of docs/algorithm.md §11.9.
UPSTREAM_RANDOM_RETURNS = {
    "quadruped_stand": "~990",
    "quadruped_jump": "~740",
    "quadruped_walk": "490-505",
    "quadruped_run": "490-505",
    "walker_stand": "130-160",
    "walker_flip": "50-70",
}


def random_episode(task: str, action_repeat: int, exorl: bool) -> tuple[float, float]:
    """Return of one random-policy episode and its agent steps per second."""
    returns, steps_per_second = random_returns(task, action_repeat, episodes=1, seed=SEED, exorl=exorl)
    return returns[0], steps_per_second


def random_returns(task: str, action_repeat: int, episodes: int, seed: int,
                   exorl: bool = False) -> tuple[list[float], float]:
    """Returns of ``episodes`` consecutive random-policy episodes (actions uniform in [-1, 1]) on one
    environment seeded with ``seed``, and the agent steps per second over their steps (resets not timed)."""
    env = envs.make(task, "states", action_repeat, seed, exorl=exorl)
    rng = np.random.default_rng(seed)
    returns = []
    steps, elapsed = 0, 0.0
    for _ in range(episodes):
        total = 0.0
        record = env.reset()
        start = time.perf_counter()
        while not record["is_last"]:
            record = env.step(rng.uniform(-1.0, 1.0, env.action_dim).astype(np.float32))
            total += record["reward"]
            steps += 1
        elapsed += time.perf_counter() - start
        returns.append(total)
    env.close()
    return returns, steps / elapsed


def pixel_steps_per_second(task: str, exorl: bool) -> float:
    env = envs.make(task, "pixels", 1, SEED, exorl=exorl)
    rng = np.random.default_rng(SEED)
    env.reset()
    start = time.perf_counter()
    for _ in range(PIXEL_STEPS):
        env.step(rng.uniform(-1.0, 1.0, env.action_dim).astype(np.float32))
    elapsed = time.perf_counter() - start
    env.close()
    return PIXEL_STEPS / elapsed


def check_task(task: str, exorl: bool) -> dict:
    return_ar1, steps_per_s_states = random_episode(task, 1, exorl)
    return_ar2, _ = random_episode(task, 2, exorl)
    return {
        "random_return_ar1": round(return_ar1, 3),
        "random_return_ar2": round(return_ar2, 3),
        "steps_per_s_states": round(steps_per_s_states, 1),
        "steps_per_s_pixels": round(pixel_steps_per_second(task, exorl), 1),
    }


def main() -> None:
    all_tasks = [task for tasks in envs.TASKS.values() for task in tasks]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(all_tasks), help="comma-separated task names")
    parser.add_argument("--json", action="store_true", help="print one JSON line keyed by task")
    parser.add_argument("--exorl", action="store_true", help="Jaco site variant instead of the Duplo one")
    args = parser.parse_args()
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    for task in tasks:
        envs.domain_of(task)  # fail fast, with the one-line message, on a bad name

    results = {}
    for task in tasks:
        results[task] = check_task(task, args.exorl)
        if not args.json:
            row = results[task]
            print(
                f"{task:26s} return ar1 {row['random_return_ar1']:9.2f}  ar2 {row['random_return_ar2']:9.2f}"
                f"  (upstream {UPSTREAM_RANDOM_RETURNS.get(task, '-'):>7s})"
                f"  states {row['steps_per_s_states']:7.1f} steps/s  pixels {row['steps_per_s_pixels']:6.1f} steps/s",
                flush=True,
            )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
