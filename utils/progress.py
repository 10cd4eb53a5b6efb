"""Progress of a run: a tqdm bar on a terminal, plain progress lines elsewhere.

With ``enabled=None`` the bar is drawn when stdout is a terminal. Without one (a log file, ``nohup``,
a Slurm job), a run with ``every_s`` set prints one plain line at most every ``every_s`` seconds
instead (count done, updates/s, elapsed, time left), so a log never goes silent for long. Console lines must go through
``Progress.write`` (tqdm.write), which clears the bar, prints the line and redraws the bar below it::

    progress = Progress(cfg.num_train_frames, unit="frame", desc="train", initial=frame)
    progress.update(action_repeat, updates=n)  # after every env step; n = updates so far
    progress.write("| train | F: 1000 | ...")  # instead of print()
    progress.close()
"""
from __future__ import annotations

import io
import datetime
import os
import sys
import time
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
                 position: int | None = None, file: TextIO | None = None, unit_scale: bool | None = None,
                 every_s: float | None = None, clock=time.monotonic):
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
        # Plain lines only where no bar is drawn and only when asked for (progress=false: silence).
        self.every_s = every_s if self.bar is None and enabled is None else None
        self.total, self.unit, self.clock = total, unit, clock
        self.done = self.start_count = initial
        self.start_time = self.last_line = clock()
        self.last_updates: tuple[float, int] | None = None

    def update(self, n: int | float = 1, updates: int | None = None) -> None:
        """Advance by ``n``; ``updates`` (the run's update count so far) gives the plain line its rate."""
        if self.bar is not None:
            self.bar.update(n)
            return
        self.done += n
        if self.every_s is not None:
            now = self.clock()
            if self.last_updates is None and updates is not None:
                self.last_updates = (self.start_time, updates)
            if now - self.last_line >= self.every_s:
                self.last_line = now
                self.write(self.plain_line(now, updates))

    def plain_line(self, now: float, updates: int | None) -> str:
        elapsed = now - self.start_time
        parts = [f"{self.unit} {int(self.done)}" + (f"/{int(self.total)} ({100 * self.done / self.total:.1f}%)"
                                                   if self.total else "")]
        if updates is not None and self.last_updates is not None:
            since, before = self.last_updates
            parts.append(f"{(updates - before) / max(now - since, 1e-9):.2f} updates/s")
            self.last_updates = (now, updates)
        parts.append(f"elapsed {_clock(elapsed)}")
        rate = (self.done - self.start_count) / max(elapsed, 1e-9)
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.done) / rate)}")
        return "progress: " + " | ".join(parts)

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


def _clock(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))
