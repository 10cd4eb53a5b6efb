"""Updates per second of pre-training runs alone and side by side, with every process taking all the
cores (``threads=<cores>``, torch's own default and this project's before ``threads=auto``) and with
``threads=auto`` (each run its share). Run it alone on the machine:

    python bench/threads.py [--frames 3000] [--out /tmp/threads]

Each run is ``pretrain.py preset=cpu`` on walker states; its rate is the median of the ``updates/s``
of its plain progress lines after the seed phase (one line every ``--every`` seconds).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils.threads import usable_cores  # noqa: E402

RATE = re.compile(r"^progress: frame \d+/\d+ .*\| (\d+\.\d+) updates/s \|")


def launch(out: Path, name: str, threads: str, frames: int, every: int) -> subprocess.Popen:
    command = [sys.executable, str(REPO / "pretrain.py"), "preset=cpu", "domain=walker", f"num_train_frames={frames}",
               "num_seed_frames=1000", "snapshots=[]", "use_tb=false", f"threads={threads}",
               f"progress_every_s={every}", f"hydra.run.dir={out / name}"]
    log = open(out / f"{name}.log", "w")
    return subprocess.Popen(command, cwd=out, stdout=log, stderr=subprocess.STDOUT, text=True)


def rate(out: Path, name: str) -> tuple[float, int]:
    rates = [float(m.group(1)) for line in (out / f"{name}.log").read_text().splitlines()
             if (m := RATE.match(line)) and float(m.group(1)) > 0]
    return (statistics.median(rates) if rates else float("nan")), len(rates)


def scenario(out: Path, label: str, threads: str, runs: int, frames: int, every: int) -> list[str]:
    start = time.time()
    names = [f"{label}_{i}" for i in range(runs)]
    processes = [launch(out, name, threads, frames, every) for name in names]
    codes = [process.wait() for process in processes]
    wall = time.time() - start
    rows = []
    for name, code in zip(names, codes):
        value, windows = rate(out, name)
        rows.append(f"| {label} | {name} | {threads} | {value:.2f} | {windows} | {wall:.0f} s | {code} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000)
    parser.add_argument("--every", type=int, default=15, help="seconds between progress lines")
    parser.add_argument("--out", default="/tmp/threads_bench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = usable_cores()
    print(f"cores: {cores}; torch would start {cores} compute threads per process", flush=True)
    rows = ["| scenario | run | threads | updates/s (median) | windows | wall (all runs) | exit |",
            "|---|---|---|---|---|---|---|"]
    rows += scenario(out, "alone", "auto", 1, args.frames, args.every)
    rows += scenario(out, "two_all_cores", str(cores), 2, args.frames, args.every)
    rows += scenario(out, "two_auto", "auto", 2, args.frames, args.every)
    print("\n".join(rows))
    (out / "threads.md").write_text("\n".join(rows) + "\n")
    os.sync()


if __name__ == "__main__":
    main()
