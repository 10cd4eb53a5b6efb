"""The agent comparison at a CPU budget, now the grid ``experiment=compare_cpu`` of experiment.py (this
file only translates its old options): choreo, lbs, plan2explore, apt, icm, rnd, diayn and aps
pre-trained 20k frames on walker (states, preset=cpu, action repeat 2) and fine-tuned 30k frames on
walker_stand, dreamer fine-tuned from scratch, 3 seeds; two runs at a time, one thread each. Rerunning continues it.

    python bench/compare_agents.py [--out grids/compare_cpu] [--seeds 1 2 3] [--agents choreo lbs ...]
        [--pretrain-frames 20000] [--finetune-frames 30000] [--jobs 2] [--report-only]

is ``python experiment.py experiment=compare_cpu out=... experiment.seeds=[...] ... launcher.jobs=2
launcher.threads=1`` (``--report-only``: ``action=score``). Results: <out>/results.md, results.csv,
profile.png, curves.png (utils/scoring.py, rliable).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def experiment_command(args) -> list[str]:
    command = [sys.executable, str(REPO / "experiment.py"), "experiment=compare_cpu", f"out={Path(args.out).resolve()}",
               f"experiment.pretrain.frames={args.pretrain_frames}", f"experiment.finetune.frames={args.finetune_frames}",
               f"launcher.jobs={args.jobs}", "launcher.threads=1"]
    if args.seeds:
        command.append(f"experiment.seeds=[{','.join(map(str, args.seeds))}]")
    if args.agents:
        command.append(f"experiment.agents=[{','.join(args.agents)}]")
    if args.report_only:
        command.append("action=score")
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "grids" / "compare_cpu"))
    parser.add_argument("--agents", nargs="+")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--pretrain-frames", type=int, default=20000)
    parser.add_argument("--finetune-frames", type=int, default=30000)
    parser.add_argument("--jobs", type=int, default=2, help="runs at once, one compute thread each")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    sys.exit(subprocess.call(experiment_command(args)))


if __name__ == "__main__":
    main()
