"""Logging to the console, CSV files, TensorBoard and (optionally) Weights & Biases
(docs/algorithm.md §10.8; docs/decisions.md D14, D16).

Metrics arrive as tensors and are only read (one transfer per dump) when a line is written, so the
training loop never waits on the device to log. Console lines follow the original format:
``| train | F: 6000 | S: 3000 | E: 6 | L: 1000 | R: 5.5177 | FPS: 96.7586 | T: 0:00:42``.
"""
from __future__ import annotations

import csv
import datetime
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError

CONSOLE_FIELDS = {
    "train": [("frame", "F", "int"), ("step", "S", "int"), ("episode", "E", "int"), ("episode_length", "L", "int"),
              ("episode_reward", "R", "float"), ("fps", "FPS", "float"), ("total_time", "T", "time")],
    "eval": [("frame", "F", "int"), ("step", "S", "int"), ("episode", "E", "int"), ("episode_length", "L", "int"),
             ("episode_reward", "R", "float"), ("total_time", "T", "time")],
}
# Printed after the original's fields, and only when the line has them: zero-shot and Meta-World
# evaluations report success rates, which the original's format has no field for.
CONSOLE_EXTRAS = {"train": ["updates_per_s"], "eval": ["success_rate", "goal_success_rate"]}
COLOURS = {"train": "33", "eval": "32"}


def format_console_line(ty: str, values: dict[str, float], colour: bool = False) -> str:
    parts = []
    for key, short, kind in CONSOLE_FIELDS[ty]:
        if key not in values:  # offline rows have no episodes: nothing is made up for them
            continue
        value = values[key]
        if kind == "int":
            text = str(int(value))
        elif kind == "float":
            text = f"{value:.4f}"
        else:
            text = str(datetime.timedelta(seconds=int(value)))
        parts.append(f"{short}: {text}")
    parts += [f"{key}: {values[key]:.4f}" for key in CONSOLE_EXTRAS[ty] if key in values]
    prefix = f"\033[{COLOURS[ty]}m{ty}\033[0m" if colour else ty
    return f"| {prefix} | " + " | ".join(parts)


class CSVLog:
    """A CSV file whose header widens when new columns appear (the file is rewritten atomically)."""

    def __init__(self, path: Path, x_key: str = "frame"):
        self.path, self.x_key = path, x_key
        self.columns: list[str] = []
        if path.exists():
            with path.open(newline="") as handle:
                self.columns = next(csv.reader(handle), [])

    def write(self, row: dict[str, Any]) -> None:
        new = sorted(set(row) - set(self.columns))
        if new:
            self._widen(self.columns + new)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, restval="").writerow(row)

    def require_x_column(self) -> None:
        """Rows without the x value cannot be kept or dropped by it: never mix them with new ones."""
        if self.columns and self.x_key not in self.columns:
            raise UserError(f"{self.path} has no '{self.x_key}' column (its columns: {', '.join(self.columns[:4])}"
                            f"{', ...' if len(self.columns) > 4 else ''}): it was written by another version; "
                            f"move it out of the run folder to continue this run")

    def truncate(self, keep) -> None:
        """Keep only the rows for which ``keep(frame)`` holds (a resumed run writes the rest again)."""
        self.require_x_column()
        if self.path.exists():
            with self.path.open(newline="") as handle:
                rows = [row for row in csv.DictReader(handle) if keep(float(row.get(self.x_key) or 0))]
            self._rewrite(self.columns, rows)

    def _widen(self, columns: list[str]) -> None:
        rows = []
        if self.path.exists():
            with self.path.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        self._rewrite(columns, rows)

    def _rewrite(self, columns: list[str], rows: list[dict]) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        self.columns = columns


class Logger:
    def __init__(self, run_dir: str | os.PathLike, use_tb: bool = True, use_wandb: bool = False,
                 wandb_kwargs: dict | None = None, colour: bool | None = None, resume_frame: int | None = None,
                 x_key: str = "frame"):
        """``x_key``: the column of the x value every row is logged at (``frame`` online; ``step``,
        the update count, offline, where there are no frames). ``resume_frame``: the x value of the
        checkpoint a resumed run continues from. Train rows after it and eval rows from it on are
        dropped, since the resumed run logs them again."""
        self.run_dir = Path(run_dir)
        self.x_key = x_key
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.colour = sys.stdout.isatty() if colour is None else colour
        # Replaced by the progress bar's writer so console lines print above the bar.
        self.echo = lambda line: print(line, flush=True)
        self.meters: dict[str, dict[str, list]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.csv = {ty: CSVLog(self.run_dir / f"{ty}.csv", x_key) for ty in ("train", "eval")}
        if resume_frame is not None:
            for log in self.csv.values():  # both before either is rewritten
                log.require_x_column()
            self.csv["train"].truncate(lambda frame: frame <= resume_frame)
            self.csv["eval"].truncate(lambda frame: frame < resume_frame)
        self.tb = None
        if use_tb:
            from torch.utils.tensorboard import SummaryWriter
            purge = None if resume_frame is None else resume_frame + 1
            self.tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge)
        self.wandb = None
        if use_wandb:
            import wandb
            kwargs = dict(wandb_kwargs or {})
            kwargs.setdefault("dir", str(self.run_dir))
            self.wandb = wandb.init(**kwargs)

    def log_metrics(self, metrics: dict[str, Any], frame: int, ty: str) -> None:
        """Queue metrics (tensors or numbers) under ``ty`` ('train' or 'eval'), read at the next dump."""
        for key, value in metrics.items():
            self.meters[ty][key].append((frame, value))

    def pending(self, ty: str) -> dict[str, list[list[float]]]:
        """The values queued under ``ty`` since the last dump, read as numbers (for a checkpoint)."""
        meters = self.meters[ty]
        numbers = iter(_to_floats([value for key in meters for _, value in meters[key]]))
        return {key: [[float(frame), next(numbers)] for frame, _ in entries] for key, entries in meters.items()}

    def restore_pending(self, ty: str, pending: dict[str, list[list[float]]]) -> None:
        for key, entries in pending.items():
            self.meters[ty][key] = [(int(frame), value) for frame, value in entries]

    def dump(self, frame: int, ty: str) -> dict[str, float]:
        """Average queued values, write TensorBoard, CSV, wandb and one console line; clear the meters."""
        meters = self.meters[ty]
        if not meters:
            return {}
        keys = list(meters)
        flat = [value for key in keys for _, value in meters[key]]
        numbers = _to_floats(flat)
        averages, position = {}, 0
        for key in keys:
            count = len(meters[key])
            entries = numbers[position:position + count]
            if self.tb is not None:
                for (entry_frame, _), number in zip(meters[key], entries):
                    self.tb.add_scalar(f"{ty}/{key}", number, entry_frame)
            averages[key] = sum(entries) / count
            position += count
        averages[self.x_key] = frame
        row = {key.replace("/", "_"): int(value) if float(value).is_integer() else value
               for key, value in averages.items()}
        self.csv[ty].write(row)
        if self.wandb is not None:
            self.wandb.log({f"{ty}/{key}": value for key, value in row.items()})
        self.echo(format_console_line(ty, row, self.colour))
        meters.clear()
        return row

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def _to_floats(values: list[Any]) -> list[float]:
    """Numbers as floats, reading all tensors with one transfer per device."""
    tensor_at = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    out = [float(v) if not isinstance(v, torch.Tensor) else 0.0 for v in values]
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i in tensor_at:
        by_device[values[i].device].append(i)
    for indices in by_device.values():
        stacked = torch.stack([values[i].detach().float().reshape(()) for i in indices]).cpu().tolist()
        for i, number in zip(indices, stacked):
            out[i] = number
    return out
