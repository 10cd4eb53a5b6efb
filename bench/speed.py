"""Speed benchmark: seconds per full pre-training update (and per part), env steps and act() calls
per second, peak memory, FLOPs per update and the device's matrix-multiply peak. A benchmark, run
by hand; it prints numbers and asserts nothing.

    python bench/speed.py --obs states --batch 50x50 --mode eager   # the plain implementation
    python bench/speed.py --obs states --batch 50x50 --mode fast    # what the scripts run
    python bench/speed.py --obs pixels --preset cpu --json
    python bench/speed.py --obs states --batch 50x50 --compare      # eager, then fast, and the ratios

The batch is real walker_stand data under random actions; timings are medians over ``--repeats``
updates after ``--warmup`` updates, with the spread (min-max) beside them. FLOPs are counted with
``torch.utils.flop_counter`` on one update of the eager agent, so both modes are credited with the
same work; utilisation = FLOPs per update / update time / the matmul peak, the peak being a
2048 x 2048 product in the update's precision measured in the same process.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import envs  # noqa: E402
from utils.device import resolve_device  # noqa: E402
from models.cuda_graph import WARMUP_CALLS  # noqa: E402
from utils.replay import EpisodeReplay  # noqa: E402
from utils.runner import build_agent, check_finite  # noqa: E402

PARTS = ("wm_update_s", "lbs_s", "expl_ac_s", "skill_module_s", "skill_ac_s")


def compose(obs: str, preset: str, batch: tuple[int, int] | None, precision: int, device: str, mode: str = "fast",
            low_memory: bool = False, cuda_graphs: bool = True, compile_steps: bool = False):
    from hydra import compose as hydra_compose, initialize_config_dir
    overrides = [f"configs=dmc_{obs}", f"preset={preset}", f"precision={precision}", f"device={device}",
                 f"mode={mode}", f"low_memory={low_memory}", f"cuda_graphs={cuda_graphs}", f"compile={compile_steps}"]
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


def matmul_peak_gflops(device: torch.device, precision: int, repeats: int = 10) -> float:
    dtype = torch.bfloat16 if precision == 16 else torch.float32
    a, b = (torch.randn(2048, 2048, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _, seconds = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * 2048 ** 3 * repeats / seconds / 1e9


def count_update_flops(cfg, obs_shape, action_dim, batch, device) -> int:
    """FLOPs of one full update of the eager (plain) agent."""
    from torch.utils.flop_counter import FlopCounterMode
    cfg = cfg.copy()
    cfg.mode, cfg.low_memory = "eager", False
    agent = build_agent(cfg, obs_shape, action_dim, device)
    counter = FlopCounterMode(display=False)
    with counter:
        time_update(agent, batch, device)
    return counter.get_total_flops()


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


def time_loop(agent, replay: EpisodeReplay, env, device, repeats: int) -> float:
    """Median seconds of the training loop's update step as utils/runner.py runs it: draw a batch,
    launch the update, step the environment, then read the losses (the one wait on the device)."""
    rng = np.random.default_rng(0)
    env.reset()
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        metrics = agent.update(replay.sample())
        if env.step(rng.uniform(-1, 1, env.action_dim).astype(np.float32))["is_last"]:
            env.reset()
        check_finite(metrics, 0, 0)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def compare(args: argparse.Namespace) -> None:
    """Eager and fast side by side, one process each (the fast mode's allocator setting is
    process-wide, so the eager numbers must come from a process that never turned it on)."""
    base = [sys.executable, __file__, "--json", "--obs", args.obs, "--preset", args.preset, "--device", args.device,
            "--warmup", str(args.warmup), "--repeats", str(args.repeats), "--env-steps", str(args.env_steps)]
    base += ["--batch", args.batch] if args.batch else []
    base += ["--threads", str(args.threads)] if args.threads else []
    runs = [("eager fp32", ["--mode", "eager", "--precision", "32"]), ("fast fp32", ["--mode", "fast", "--precision", "32", "--no-flops"])]
    if args.precision == 16:
        runs.append(("fast bf16", ["--mode", "fast", "--precision", "16", "--no-flops"]))
    if args.low_memory:
        runs.append(("fast low-mem", ["--mode", "fast", "--precision", "32", "--no-flops", "--low-memory"]))
    results = {}
    for label, extra in runs:
        output = subprocess.run(base + extra, check=True, capture_output=True, text=True).stdout
        results[label] = json.loads(output.strip().splitlines()[-1])
    flops = results["eager fp32"]["flops_per_update"]
    for label, result in results.items():
        result["flops_per_update"] = flops
        result["utilisation"] = flops / result["update_s"] / (result["matmul_peak_gflops"] * 1e9)
    keys = ("update_s",) + PARTS + ("peak_mem_mb", "matmul_peak_gflops", "utilisation")
    print(f"walker {args.obs}, preset {args.preset}, batch {args.batch or 'preset'}, device {args.device}; "
          f"eager FLOPs per update {flops / 1e9:.1f} G")
    print(f"  {'':<18}" + "".join(f"{label:>14}" for label in results) + "   speed-up vs eager")
    for key in keys:
        row = "".join(f"{result[key]:14.3f}" for result in results.values())
        ratios = ""
        if key.endswith("_s"):
            ratios = "  ".join(f"{results['eager fp32'][key] / result[key]:.2f}x"
                               for label, result in results.items() if label != "eager fp32")
        print(f"  {key:<18}{row}   {ratios}")
    print(json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--obs", choices=("states", "pixels"), default="states")
    parser.add_argument("--batch", default=None, help="BxL, e.g. 50x50 (default: the preset's)")
    parser.add_argument("--preset", choices=("full", "cpu"), default="full")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", type=int, choices=(16, 32), default=32)
    parser.add_argument("--mode", choices=("fast", "eager"), default="fast")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one more eager update)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--env-steps", type=int, default=200)
    parser.add_argument("--low-memory", action="store_true",
                        help="low_memory=true (recompute activations); with --compare: one more column")
    parser.add_argument("--no-graphs", action="store_true", help="cuda_graphs=false (CUDA, fast mode)")
    parser.add_argument("--compile", action="store_true", help="compile=true (fast mode; default: compile=false)")
    parser.add_argument("--loop", action="store_true",
                        help="also time the training loop's update step (draw a batch, update, one env step, read "
                             "the losses): loop_s, with --prefetch the next batch is drawn on a thread meanwhile")
    parser.add_argument("--prefetch", action="store_true", help="prefetch_batches=true for the replay (with --loop)")
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    parser.add_argument("--compare", action="store_true",
                        help="run --mode eager, then fast --precision 32, then fast at --precision, each in its "
                             "own process, and print the speed-ups")
    args = parser.parse_args()
    if args.compare:
        compare(args)
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    graphs = not args.no_graphs
    probe = compose(args.obs, args.preset, None, args.precision, args.device, args.mode, args.low_memory, graphs,
                    args.compile)
    batch_shape = tuple(int(x) for x in args.batch.split("x")) if args.batch else (probe.batch_size,
                                                                                   probe.batch_length)
    cfg = compose(args.obs, args.preset, batch_shape, args.precision, args.device, args.mode, args.low_memory, graphs,
                  args.compile)
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

    # Recorded stages (CUDA graphs) run eagerly for their first calls and are recorded on the next.
    warmup = args.warmup + (WARMUP_CALLS + 1 if agent.stages.enabled else 0) + (1 if args.compile else 0)
    for _ in range(warmup):
        time_update(agent, replay.sample(), device)
    recorded = agent.stages.recorded()
    runs = [time_update(agent, replay.sample(), device) for _ in range(args.repeats)]
    # Host cost of one batch (draw + copy to the device), as the loop pays it without prefetching.
    sample_s = statistics.median(timed(replay.sample, device)[1] for _ in range(5))
    loop_s = None
    if args.loop:
        looped = EpisodeReplay(None, 10**7, *batch_shape, seed=1, device=device, save=False, prefetch=args.prefetch)
        for episode in replay.episodes:
            looped.add_episode(episode)
        loop_s = time_loop(agent, looped, env, device, args.repeats)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20

    del agent
    peak_gflops = matmul_peak_gflops(device, args.precision)
    flops = 0 if args.no_flops else count_update_flops(cfg, env.obs_shape, env.action_dim, replay.sample(), device)

    result = {key: statistics.median(run[key] for run in runs) for key in ("update_s",) + PARTS}
    result.update(sample_s=sample_s, **({"loop_s": loop_s} if loop_s is not None else {}))
    result.update(env_steps_per_s=env_steps_per_s, act_per_s=act_per_s, peak_mem_mb=peak_mb, graphs=recorded,
                  flops_per_update=flops, matmul_peak_gflops=peak_gflops,
                  utilisation=flops / result["update_s"] / (peak_gflops * 1e9))
    spread = {key: (min(r[key] for r in runs), max(r[key] for r in runs)) for key in ("update_s",) + PARTS}
    if args.json:
        print(json.dumps({key: round(value, 4) if isinstance(value, float) else value for key, value in result.items()}))
        return
    print(f"walker {args.obs}, preset {args.preset}, batch {batch_shape[0]}x{batch_shape[1]}, device {device}, "
          f"mode {args.mode}, precision {args.precision}, torch threads {torch.get_num_threads()}, "
          f"{args.repeats} repeats")
    for key in ("update_s",) + PARTS:
        low, high = spread[key]
        print(f"  {key:<16} {result[key]:8.3f} s   (min {low:.3f}, max {high:.3f})")
    print(f"  sample_s         {sample_s:8.4f} s (draw a batch and copy it to the device)")
    if loop_s is not None:
        print(f"  loop_s           {loop_s:8.3f} s (batch + update + one env step, prefetch {args.prefetch})")
    print(f"  env_steps_per_s  {env_steps_per_s:8.1f}   (random actions, {args.env_steps} steps)")
    print(f"  act_per_s        {act_per_s:8.1f}")
    print(f"  peak_mem_mb      {peak_mb:8.0f}   ({'CUDA allocated' if device.type == 'cuda' else 'process RSS'})")
    print(f"  flops_per_update {flops / 1e9:8.1f} G (eager update)")
    print(f"  matmul_peak      {peak_gflops:8.1f} GFLOP/s (2048x2048, precision {args.precision})")
    print(f"  utilisation      {result['utilisation']:8.3f}")
    if recorded:
        states = ", ".join(f"{name}: {'replayed' if replayed else 'eager'}" for name, replayed in recorded.items())
        print(f"  CUDA graphs      {states}")


if __name__ == "__main__":
    main()
