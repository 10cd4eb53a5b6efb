"""Choreographer against its baselines on one world model, at one budget: choreo, lbs, plan2explore
and apt pre-trained on walker (states, ``preset=cpu``) and fine-tuned on walker_stand, and dreamer
fine-tuned from scratch with the same fine-tuning budget; several seeds each. A benchmark, run by
hand, that may span sessions: rerun the same command and finished runs are skipped, interrupted ones
continue from their checkpoints.

    python bench/compare_agents.py [--out bench/compare] [--seeds 1 2 3] [--agents choreo lbs ...]
        [--pretrain-frames 20000] [--finetune-frames 30000] [--jobs 2] [--report-only]

Settings are the learning check's (``bench/learning.py``: action repeat 2, an update every 2 agent
steps in fine-tuning), the same for every agent. ``--jobs`` runs that many at once, one compute
thread each (``threads=1``). Writes ``<out>/compare.md`` (eval return per agent at each evaluation:
mean over seeds and a 95% bootstrap interval of that mean, and the random policy's return measured
as the learning check measures it) and ``<out>/compare.png``, and prints the table.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils import scoring  # noqa: E402
from utils.atomic import atomic_write  # noqa: E402

AGENTS = ("choreo", "lbs", "plan2explore", "apt", "dreamer")
# Agents without reward-free pre-training are fine-tuned from scratch.
FROM_SCRATCH = ("dreamer",)
COMMON = ["configs=dmc_states_ar2", "preset=cpu", "use_tb=false", "progress=false"]


def pretrain_command(out: Path, agent: str, seed: int, frames: int) -> list[str]:
    return [sys.executable, str(REPO / "pretrain.py"), *COMMON, "domain=walker", f"agent={agent}", f"seed={seed}",
            f"num_train_frames={frames}", f"snapshots=[{frames}]", "threads=1",
            f"snapshot_base_dir={out / 'snapshots'}", f"hydra.run.dir={out / 'runs' / f'pt_{agent}_{seed}'}"]


def finetune_command(out: Path, agent: str, seed: int, pretrain_frames: int, frames: int) -> list[str]:
    snapshot_ts = 0 if agent in FROM_SCRATCH else pretrain_frames
    return [sys.executable, str(REPO / "finetune.py"), *COMMON, f"agent={agent}", f"seed={seed}",
            "task=walker_stand", f"snapshot_ts={snapshot_ts}", f"num_train_frames={frames + 10}",
            "train_every_actions=5", "eval_every_frames=5000", "num_eval_episodes=10", "threads=1",
            f"snapshot_base_dir={out / 'snapshots'}", f"hydra.run.dir={out / 'runs' / f'ft_{agent}_{seed}'}"]


def jobs_for(out: Path, agent: str, seed: int, args) -> list[list[str]]:
    """The commands still to run for one agent and seed, in order."""
    commands = []
    snapshot = out / "snapshots" / "states" / "walker" / agent / str(seed) / f"snapshot_{args.pretrain_frames}.pt"
    if agent not in FROM_SCRATCH and not snapshot.exists():
        commands.append(pretrain_command(out, agent, seed, args.pretrain_frames))
    if not (out / "runs" / f"ft_{agent}_{seed}" / "finetuned_snapshot.pt").exists():
        commands.append(finetune_command(out, agent, seed, args.pretrain_frames, args.finetune_frames))
    return commands


def run_all(out: Path, args) -> None:
    """Each (agent, seed) chain runs its commands in order; ``--jobs`` chains at a time."""
    pending = [(agent, seed, jobs_for(out, agent, seed, args)) for seed in args.seeds for agent in args.agents]
    pending = [item for item in pending if item[2]]
    running: list[tuple[str, int, list[list[str]], subprocess.Popen]] = []
    (out / "logs").mkdir(parents=True, exist_ok=True)

    def start(agent, seed, commands):
        log = open(out / "logs" / f"{agent}_{seed}.log", "a")
        print(f"start {agent} seed {seed}: {' '.join(commands[0][1:3])}", flush=True)
        return subprocess.Popen(commands[0], cwd=out, stdout=log, stderr=subprocess.STDOUT)

    while pending or running:
        while pending and len(running) < args.jobs:
            agent, seed, commands = pending.pop(0)
            running.append((agent, seed, commands, start(agent, seed, commands)))
        time.sleep(5)
        for item in list(running):
            agent, seed, commands, process = item
            if process.poll() is None:
                continue
            running.remove(item)
            if process.returncode != 0:
                print(f"FAILED {agent} seed {seed} (exit {process.returncode}): see {out / 'logs'}", flush=True)
            elif commands[1:]:
                running.append((agent, seed, commands[1:], start(agent, seed, commands[1:])))
            report(out, args)


def eval_curve(path: Path) -> dict[int, float]:
    if not path.exists():
        return {}
    with path.open() as handle:
        return {int(float(row["frame"])): float(row["episode_reward"]) for row in csv.DictReader(handle)}


def mean_interval(values: np.ndarray, resamples: int = 10000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean over seeds of ``values`` (one task: utils/scoring.py, rliable)."""
    estimate = scoring.aggregate_one([values], resamples, seed, metrics=("mean",))["mean"]
    return estimate.low, estimate.high


def random_policy(out: Path) -> dict:
    """Mean, std and episode count of the random policy's return on walker_stand at action repeat 2,
    measured as the learning check measures it (20 episodes, seed 1001); kept in
    ``<out>/random_policy.json``."""
    path = out / "random_policy.json"
    if not path.exists():
        from env_check import random_returns  # bench/, beside this script
        returns, _ = random_returns("walker_stand", 2, 20, seed=1001)
        with atomic_write(path) as handle:  # a half-written cache would break every later report
            handle.write(json.dumps({"mean": float(np.mean(returns)), "std": float(np.std(returns)),
                                     "episodes": len(returns)}).encode())
    return json.loads(path.read_text())


def end_of_training_table(curves: dict, last_frames: list[int], random_mean: float) -> str:
    """Each seed's mean over the last evaluations (one evaluation of 10 episodes moves by 50-100 for
    the same seed, so two of them say more about where a run ended), then mean over seeds with its
    95% bootstrap interval, and the probability that a choreo seed ends above one of the agent's
    (rliable's probability of improvement, with its interval); seeds without all of ``last_frames``
    are left out."""
    label = " and ".join(f"{frame // 1000}k" for frame in last_frames)
    ends = {agent: np.array([np.mean([curve[frame] for frame in last_frames]) for curve in per_seed.values()
                             if all(frame in curve for frame in last_frames)])
            for agent, per_seed in curves.items()}
    ends = {agent: values for agent, values in ends.items() if len(values)}
    lines = [f"| agent | per seed (mean of {label}) | mean [95% CI] | x random | P(choreo > agent) [95% CI] |",
             "|---|---|---|---|---|"]
    for agent, values in ends.items():
        low, high = mean_interval(values)
        improvement = ("-" if agent == "choreo" or "choreo" not in ends else
                       scoring.probability_of_improvement([ends["choreo"]], [values], 2000).text(2))
        lines.append(f"| {agent} | {' / '.join(f'{end:.1f}' for end in values)} | {values.mean():.1f} "
                     f"[{low:.1f}, {high:.1f}] (n={len(values)}) | {values.mean() / random_mean:.2f} | {improvement} |")
    return "\n".join(lines)


def report(out: Path, args) -> str:
    curves = {agent: {seed: eval_curve(out / "runs" / f"ft_{agent}_{seed}" / "eval.csv") for seed in args.seeds}
              for agent in args.agents}
    frames = sorted({frame for agent in curves.values() for curve in agent.values() for frame in curve})
    lines = ["| agent | " + " | ".join(f"{frame // 1000}k" for frame in frames) + " |",
             "|---|" + "---|" * len(frames)]
    summary = {}
    for agent, per_seed in curves.items():
        cells = []
        for frame in frames:
            values = np.array([curve[frame] for curve in per_seed.values() if frame in curve])
            if len(values) == 0:
                cells.append("")
                continue
            low, high = mean_interval(values)
            summary.setdefault(agent, []).append((frame, values.mean(), low, high, len(values)))
            cells.append(f"{values.mean():.1f} [{low:.1f}, {high:.1f}] (n={len(values)})")
        lines.append(f"| {agent} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    random = random_policy(out)
    random_mean = random["mean"]
    table += "\n\n" + end_of_training_table(curves, frames[-2:], random_mean)
    (out / "compare.md").write_text(
        f"Eval return on walker_stand (10 episodes, mean action) against fine-tuning frames: mean over seeds "
        f"[95% bootstrap interval of the mean] (n seeds). Pre-training {args.pretrain_frames} frames "
        f"(dreamer: none), fine-tuning {args.finetune_frames} frames, preset=cpu, action repeat 2. "
        f"Random policy: {random_mean:.1f} +- {random['std']:.1f} ({random['episodes']} episodes).\n\n{table}\n")
    if summary:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for agent, points in summary.items():
            x, mean, low, high, _ = (np.array(column) for column in zip(*points))
            axis.plot(x, mean, marker="o", label=agent)
            axis.fill_between(x, low, high, alpha=0.2)
        axis.axhline(random_mean, color="gray", linestyle="--", label=f"random policy ({random_mean:.0f})")
        axis.set_xlabel("fine-tuning frames")
        axis.set_ylabel("eval return (walker_stand)")
        axis.set_title(f"pre-training {args.pretrain_frames // 1000}k frames, preset=cpu; mean and 95% bootstrap CI")
        axis.legend()
        figure.tight_layout()
        figure.savefig(out / "compare.png", dpi=120)
        plt.close(figure)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "compare"))
    parser.add_argument("--agents", nargs="+", default=list(AGENTS), choices=AGENTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--pretrain-frames", type=int, default=20000)
    parser.add_argument("--finetune-frames", type=int, default=30000)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one compute thread each")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        run_all(out, args)
    print(report(out, args))


if __name__ == "__main__":
    main()
