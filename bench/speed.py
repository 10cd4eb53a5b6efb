"""Speed benchmark: seconds per full pre-training update (and per part), env steps and act() calls
per second, peak memory. A benchmark, run by hand; it prints numbers and asserts nothing.

    python bench/speed.py --obs states --batch 50x50            # the paper's batch
    python bench/speed.py --obs pixels --preset cpu --json

The batch is real walker_stand data under random actions; timings are medians over ``--repeats``
updates after ``--warmup`` updates, with the spread (min-max) beside them.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import envs  # noqa: E402
from utils.device import resolve_device  # noqa: E402
from utils.replay import EpisodeReplay  # noqa: E402
from utils.runner import build_agent  # noqa: E402

PARTS = ("wm_update_s", "lbs_s", "expl_ac_s", "skill_module_s", "skill_ac_s")


def compose(obs: str, preset: str, batch: tuple[int, int] | None, precision: int, device: str):
    from hydra import compose as hydra_compose, initialize_config_dir
    overrides = [f"configs=dmc_{obs}", f"preset={preset}", f"precision={precision}", f"device={device}"]
    if batch:
        overrides += [f"batch_size={batch[0]}", f"batch_length={batch[1]}"]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        return hydra_compose("pretrain", overrides=overrides)


def fill_replay(env, replay: EpisodeReplay, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    time_step = env.reset()
    replay.add(time_step)
    for _ in range(steps):
        if time_step["is_last"]:
            time_step = env.reset()
            replay.add(time_step)
        time_step = env.step(rng.uniform(-1, 1, env.action_dim).astype(np.float32))
        replay.add(time_step)
    if replay.current:  # store the unfinished episode too, so short fills can be sampled
        replay.add_episode({key: np.stack(values) for key, values in replay.current.items()})
        replay.current = {}


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def time_update(agent, batch, device) -> dict[str, float]:
    times = {}
    (post, kl, _), times["wm_update_s"] = timed(lambda: agent.update_world_model(batch), device)
    start = agent.imagination_starts(post)
    _, times["lbs_s"] = timed(lambda: agent.update_lbs(post, kl), device)
    _, times["expl_ac_s"] = timed(lambda: agent.update_exploration(start), device)
    _, times["skill_module_s"] = timed(lambda: agent.update_skill_module(start), device)
    _, times["skill_ac_s"] = timed(lambda: agent.update_skill_behaviour(start), device)
    times["update_s"] = sum(times.values())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--obs", choices=("states", "pixels"), default="states")
    parser.add_argument("--batch", default=None, help="BxL, e.g. 50x50 (default: the preset's)")
    parser.add_argument("--preset", choices=("full", "cpu"), default="full")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", type=int, choices=(16, 32), default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--env-steps", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    args = parser.parse_args()

    device = resolve_device(args.device)
    probe = compose(args.obs, args.preset, None, args.precision, args.device)
    batch_shape = tuple(int(x) for x in args.batch.split("x")) if args.batch else (probe.batch_size,
                                                                                   probe.batch_length)
    cfg = compose(args.obs, args.preset, batch_shape, args.precision, args.device)
    torch.manual_seed(0)
    env = envs.make("walker_stand", args.obs, cfg.action_repeat, seed=1)

    start = time.perf_counter()
    replay = EpisodeReplay(None, 10**7, batch_shape[0], batch_shape[1], seed=0, device=device, save=False)
    fill_replay(env, replay, args.env_steps, seed=0)
    env_steps_per_s = args.env_steps / (time.perf_counter() - start)

    agent = build_agent(cfg, env.obs_shape, env.action_dim, device)
    time_step, state = env.reset(), None
    meta = agent.init_meta()
    agent.act(time_step, meta, 0, False, None)
    calls = 100
    start = time.perf_counter()
    for i in range(calls):
        _, state = agent.act(time_step, meta, i, False, state)
    act_per_s = calls / (time.perf_counter() - start)

    for _ in range(args.warmup):
        time_update(agent, replay.sample(), device)
    runs = [time_update(agent, replay.sample(), device) for _ in range(args.repeats)]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20

    result = {key: statistics.median(run[key] for run in runs) for key in ("update_s",) + PARTS}
    result.update(env_steps_per_s=env_steps_per_s, act_per_s=act_per_s, peak_mem_mb=peak_mb)
    spread = {key: (min(r[key] for r in runs), max(r[key] for r in runs)) for key in ("update_s",) + PARTS}
    if args.json:
        print(json.dumps({key: round(value, 4) for key, value in result.items()}))
        return
    print(f"walker {args.obs}, preset {args.preset}, batch {batch_shape[0]}x{batch_shape[1]}, device {device}, "
          f"precision {args.precision}, torch threads {torch.get_num_threads()}, {args.repeats} repeats")
    for key in ("update_s",) + PARTS:
        low, high = spread[key]
        print(f"  {key:<16} {result[key]:8.3f} s   (min {low:.3f}, max {high:.3f})")
    print(f"  env_steps_per_s  {env_steps_per_s:8.1f}   (random actions, {args.env_steps} steps)")
    print(f"  act_per_s        {act_per_s:8.1f}")
    print(f"  peak_mem_mb      {peak_mb:8.0f}   ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")


if __name__ == "__main__":
    main()
