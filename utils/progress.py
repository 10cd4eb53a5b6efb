"""A progress bar for training and evaluation: frames done, frames per second and time left (tqdm).

The bar is drawn on the terminal only: with ``enabled=None`` it is on when stdout is a terminal,
so logs, pipes, Slurm output files and CI see nothing of it. Console lines must go through
``Progress.write`` (tqdm.write), which clears the bar, prints the line and redraws the bar below it::

    progress = Progress(cfg.num_train_frames, unit="frame", desc="train", initial=frame)
    progress.update(action_repeat)             # after every env step
    progress.write("| train | F: 1000 | ...")  # instead of print()
    progress.close()
"""
from __future__ import annotations

import io
import os
import sys
from typing import TextIO

from tqdm import tqdm

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit}s [{elapsed}<{remaining}, {rate_fmt}]"


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _terminal_size(stream: TextIO) -> tuple[int, int]:
    try:
        return tuple(os.get_terminal_size(stream.fileno()))
    except (AttributeError, ValueError, OSError, io.UnsupportedOperation):
        return (0, 0)


class Progress:
    """tqdm bar on stdout with frames, rate and ETA; a no-op (``write`` = print) when disabled."""

    def __init__(self, total: int | float | None, unit: str = "frame", desc: str = "train",
                 enabled: bool | None = None, initial: int = 0, leave: bool = True,
                 position: int | None = None, file: TextIO | None = None, unit_scale: bool | None = None):
        self.file = file
        stream = self.stream = sys.stdout if file is None else file
        self.enabled = is_terminal(stream) if enabled is None else bool(enabled)
        self.bar = None
        if self.enabled:
            # A terminal that reports no size (a pty without a window size) would get no bar at all.
            sized = min(_terminal_size(stream)) > 0
            scale = unit == "frame" if unit_scale is None else unit_scale  # 1.20k/2.00M frames
            self.bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, leave=leave, position=position,
                            file=stream, unit_scale=scale, dynamic_ncols=sized, ncols=None if sized else 100,
                            nrows=None if sized else 40, mininterval=0.5, smoothing=0.05,
                            bar_format=BAR_FORMAT if total else None)

    def update(self, n: int | float = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def set(self, n: int | float) -> None:
        """Move the bar to an absolute count (e.g. the current frame after a resume)."""
        if self.bar is not None and n != self.bar.n:
            self.bar.update(n - self.bar.n)

    def write(self, line: str) -> None:
        """Print a line above the bar without breaking it (plain print when disabled)."""
        if self.bar is not None:
            tqdm.write(line, file=self.stream)
            # tqdm.write does not flush: console lines must reach the terminal and pipes at once.
            self.stream.flush()
        else:
            print(line, file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
