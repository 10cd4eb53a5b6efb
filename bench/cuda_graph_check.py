"""CUDA graphs give the numbers of the same update run kernel by kernel: two fast-mode agents with
the same seed, one with ``cuda_graphs=true`` and one with ``false``, take the same batches and
the losses of every update are compared. A check for a GPU visit (CI has no GPU); it prints the
largest relative difference per update and which stages were replayed, and exits 1 when a loss
differs by more than ``--tolerance`` (default 1e-4 in fp32, 5e-3 in bf16 or with ``--compile``:
measured at most 5.9e-5 fp32 and 1.1e-3 bf16 with graphs, 9.4e-4 and 2.1e-3 with graphs and compile,
bench/RESULTS.md).

    python bench/cuda_graph_check.py --obs states --updates 5 [--precision 16] [--finetune]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import envs  # noqa: E402
from bench.speed import compose, fill_replay  # noqa: E402
from utils.replay import EpisodeReplay  # noqa: E402
from utils.runner import build_agent  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--obs", choices=("states", "pixels"), default="states")
    parser.add_argument("--preset", choices=("full", "cpu"), default="full")
    parser.add_argument("--batch", default="16x32")
    parser.add_argument("--precision", type=int, choices=(16, 32), default=32)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--finetune", action="store_true", help="compare fine-tuning updates")
    parser.add_argument("--device", default="cuda", help="cpu only smoke-tests this script (no graphs there)")
    parser.add_argument("--compile", action="store_true",
                        help="the graphed agent also compile=true (the reference stays uncompiled)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help="largest relative loss difference allowed (default: 1e-4 fp32, 5e-3 bf16 or --compile)")
    args = parser.parse_args()
    tolerance = args.tolerance
    if tolerance is None:
        tolerance = 1e-4 if args.precision == 32 and not args.compile else 5e-3
    device = torch.device(args.device)
    batch_shape = tuple(int(x) for x in args.batch.split("x"))
    probe = compose(args.obs, args.preset, batch_shape, args.precision, args.device)
    env = envs.make("walker_stand", args.obs, probe.action_repeat, seed=1)
    replay = EpisodeReplay(None, 10**7, *batch_shape, seed=0, device=device, save=False)
    fill_replay(env, replay, 600, seed=0)
    batches = [replay.sample() for _ in range(args.updates)]
    if args.finetune:  # open the reward gate so the meta-controller trains from the first update
        batches = [dict(batch, reward=batch["reward"] + 1.0) for batch in batches]

    losses = {}
    for graphs in (False, True):
        cfg = compose(args.obs, args.preset, batch_shape, args.precision, args.device, "fast", False, graphs,
                      args.compile and graphs)
        torch.manual_seed(0)
        agent = build_agent(cfg, env.obs_shape, env.action_dim, device)
        if args.finetune:
            agent.finetune_mode()
        torch.manual_seed(1)
        runs = []
        for batch in batches:
            metrics = agent.update(batch)
            runs.append({key: float(value) for key, value in metrics.items() if "loss" in key})
        losses[graphs] = runs
        if graphs:
            print("stages:", agent.stages.recorded())
    largest = 0.0
    for index, (plain, graphed) in enumerate(zip(losses[False], losses[True])):
        worst = max(plain, key=lambda key: abs(graphed[key] - plain[key]) / (abs(plain[key]) + 1e-8))
        rel = abs(graphed[worst] - plain[worst]) / (abs(plain[worst]) + 1e-8)
        largest = max(largest, rel)
        print(f"update {index + 1}: {len(plain)} losses, largest relative difference {rel:.2e} ({worst}: "
              f"{plain[worst]:.6g} eager, {graphed[worst]:.6g} graphed)")
    if not largest <= tolerance:
        sys.exit(f"FAIL: a loss differs by {largest:.2e} relative, more than the tolerance {tolerance:.0e}")
    print(f"OK: every loss within {tolerance:.0e} relative (largest {largest:.2e})")


if __name__ == "__main__":
    main()
