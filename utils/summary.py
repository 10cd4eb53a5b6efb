"""The lines a run ends with: what it did and where everything it wrote lies."""
from __future__ import annotations

import datetime
from pathlib import Path


def summary_lines(run_dir: Path, done: str, seconds: float, snapshots: list[Path], use_tb: bool,
                  threads: str) -> list[str]:
    """``done``: what the run reached, e.g. "4000 frames, 200 updates"; ``snapshots``: files written."""
    run_dir = Path(run_dir).resolve()
    csvs = [str(run_dir / name) for name in ("train.csv", "eval.csv") if (run_dir / name).exists()]
    lines = [f"done: {done} in {datetime.timedelta(seconds=int(seconds))}",
             f"  run folder:  {run_dir}",
             f"  snapshots:   {', '.join(str(Path(p).resolve()) for p in snapshots) if snapshots else 'none written'}",
             f"  csv logs:    {', '.join(csvs) if csvs else 'none'}",
             f"  threads:     {threads}"]
    if use_tb:
        lines.append(f"  tensorboard: tensorboard --logdir {run_dir / 'tb'}")
    return lines


def print_summary(*args, **kwargs) -> None:
    print("\n".join(summary_lines(*args, **kwargs)), flush=True)
