"""Learning curves and a results table from the CSV logs of several runs.

    python plot.py RUN [RUN ...] [--csv eval|train] [--out plots] [--task TASK] [--label NAME]

RUN is a run folder, a folder holding run folders (searched recursively, e.g. a sweep folder),
a CSV file, or a glob of any of these (quote it: ``'exp_sweep/2026.*/*'``). Each run's task, seed
and method come from its ``.hydra/config.yaml`` (``task``, else the primal task of ``domain``;
``seed``; ``agent.name``) when present, else from ``--task`` / ``--label``, else from the folder
names (a task name such as ``walker_run`` and ``seed=3`` / ``seed_3`` / ``seed3`` anywhere in the
path; runs without a seed count as separate seeds).

Writes into ``--out``:

* ``<csv>_curves.png``: one panel per task, x = ``frame``, y = ``episode_reward``; per method the
  mean over seeds and a shaded spread (``--spread std|sem|minmax``, default std). Seeds are
  linearly interpolated onto the union of their x values, each within its own range.
* ``<csv>_results.md`` (also printed) and ``<csv>_results.csv`` (every cell of it, one row each):
  per task and method the final return (mean of the last ``--last`` rows of each run) and its
  expert-normalised score; then, on the normalised scores, per method the mean, median and
  interquartile mean (IQM), the optimality gap and the probability that choreo improves on the
  method, all with 95% stratified-bootstrap confidence intervals (``--resamples`` 2000; seeds
  resampled with replacement within each task), and the same aggregates per domain when there is
  more than one; and, for runs that log them (zero-shot, ``eval_goals=True``), ``success_rate`` and
  ``goal_success_rate`` per task (``task_id=K`` added for a single Meta-World goal): the mean over
  seeds with its interval.
* ``<csv>_profile.png``: performance profiles of the normalised final scores (share of runs above
  each score) with 95% bands.
* ``<csv>_iqm.png``: per method the IQM of the normalised score against frames with 95% bands, at
  the frames all its runs have, over its tasks whose runs share at least two frames (a zero-shot
  run's single evaluation is left out).

All aggregates, intervals and figures come from utils/scoring.py, which uses rliable (Agarwal et al.
2021): mean = mean over tasks of the per-task mean over seeds; median = median over tasks of the
per-task means; IQM = mean of the middle 50% of all run scores (run x task, the lowest and highest
``floor(n/4)`` dropped); optimality gap = 1 - mean of min(score, 1). Tasks without an expert score
(mw_reach) appear in the per-task table only.
"""
from __future__ import annotations

import argparse
import csv
import glob
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils import scoring
from utils.atomic import atomic_write
from utils.errors import UserError
from utils.scoring import EXPERT_SCORES  # URLB expert scores: the one table, in utils/scoring.py

RATES = ("success_rate", "goal_success_rate")  # zero-shot metrics tabulated when a run logs them
PRIMAL_TASKS = {"walker": "walker_stand", "quadruped": "quadruped_walk", "jaco": "jaco_reach_top_left",
                "mw": "mw_reach"}
KNOWN_TASKS = sorted(set(EXPERT_SCORES) | {"mw_reach"}, key=len, reverse=True)
SEED_PATTERN = re.compile(r"seed[=_-]?(\d+)", re.IGNORECASE)


@dataclass
class Run:
    path: Path  # the CSV file
    task: str
    seed: str
    label: str
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    rates: dict = field(default_factory=dict, repr=False)  # RATES column -> its values, in row order
    group: str = ""  # row of the zero-shot table: the task, with task_id=K for one Meta-World goal


# ------------------------------------------------------------------------------------------ runs
def find_csvs(specs: list[str], csv_name: str) -> list[Path]:
    found: list[Path] = []
    for spec in specs:
        matches = sorted(glob.glob(str(Path(spec).expanduser()), recursive=True)) or []
        if not matches:
            raise UserError(f"no run matches '{spec}'")
        for match in map(Path, matches):
            if match.is_file():
                if match.suffix != ".csv":
                    raise UserError(f"{match} is not a CSV file or run folder")
                found.append(match)
            elif (match / csv_name).is_file():
                found.append(match / csv_name)
            else:
                # A run killed before its first checkpoint and started again keeps the dead run's
                # logs in <run>/interrupted/: not a run of its own.
                found.extend(sorted(p for p in match.rglob(csv_name)
                                    if p.is_file() and "interrupted" not in p.relative_to(match).parts))
    unique = list(dict.fromkeys(path.resolve() for path in found))
    if not unique:
        hint = ("; pre-training evaluates never by default (eval_every_frames=1e9): plot its episodes with "
                "--csv train, or evaluate fine-tuning runs" if csv_name == "eval.csv" else "")
        raise UserError(f"no {csv_name} found in {', '.join(specs)}{hint}")
    return unique


def read_config(run_dir: Path) -> dict:
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        return {}
    from omegaconf import OmegaConf
    try:
        return OmegaConf.to_container(OmegaConf.load(config), resolve=False) or {}
    except Exception:  # an unreadable config falls back to arguments and folder names
        return {}


def describe(csv_path: Path, task_arg: str | None, label_arg: str | None, index: int) -> tuple[str, str, str]:
    """(task, seed, label) of a run: its Hydra config, else the arguments, else the folder names."""
    config = read_config(csv_path.parent)
    task = config.get("task")
    task = task if isinstance(task, str) and task not in ("none", "") else None
    if task is None and config.get("domain") in PRIMAL_TASKS:
        task = PRIMAL_TASKS[config["domain"]]
    text = str(csv_path.parent)
    task = task or task_arg or next((name for name in KNOWN_TASKS if name in text), None) or "unknown"
    seed = config.get("seed")
    if seed is None:
        match = SEED_PATTERN.findall(text)
        seed = match[-1] if match else f"run{index}"
    agent = config.get("agent")
    label = label_arg or (agent.get("name") if isinstance(agent, dict) else None) or "choreo"
    return task, str(seed), label


def read_curve(path: Path, x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [key for key in (x_key, y_key) if key not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path} has no column {', '.join(missing)}; columns: {', '.join(reader.fieldnames or [])}")
        for row in reader:
            try:
                x, y = float(row[x_key]), float(row[y_key])
            except (TypeError, ValueError):
                continue  # rows without this metric
            if math.isfinite(x) and math.isfinite(y):
                xs.append(x)
                ys.append(y)
    order = np.argsort(xs, kind="stable")
    return np.asarray(xs)[order], np.asarray(ys)[order]


def read_rates(path: Path) -> dict[str, np.ndarray]:
    """The zero-shot rate columns a log has (RATES), each the finite values in row order."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        names = [name for name in RATES if name in (reader.fieldnames or [])]
        values: dict[str, list[float]] = {name: [] for name in names}
        for row in reader:
            for name in names:
                try:
                    value = float(row[name])
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    values[name].append(value)
    return {name: np.asarray(column) for name, column in values.items() if column}


def load_runs(specs: list[str], csv_name: str, x_key: str, y_key: str, task: str | None,
              label: str | None) -> list[Run]:
    runs = []
    for index, path in enumerate(find_csvs(specs, csv_name)):
        x, y = read_curve(path, x_key, y_key)
        if len(x) == 0:
            print(f"warning: {path} has no {y_key} rows; skipped", file=sys.stderr)
            continue
        run_task, seed, run_label = describe(path, task, label, index)
        task_id = read_config(path.parent).get("task_id")
        group = run_task if task_id in (None, "none", "null", "") else f"{run_task} task_id={task_id}"
        runs.append(Run(path, run_task, seed, run_label, x, y, read_rates(path), group))
    if not runs:
        raise UserError(f"none of the runs has {y_key} rows")
    return runs


# ------------------------------------------------------------------------------------- curves
def aggregate_curves(runs: list[Run], spread: str = "std") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, mean, low, high) over the runs on the union of their x values."""
    grid = np.unique(np.concatenate([run.x for run in runs]))
    values = np.full((len(runs), len(grid)), np.nan)
    for i, run in enumerate(runs):
        inside = (grid >= run.x[0]) & (grid <= run.x[-1])
        values[i, inside] = np.interp(grid[inside], run.x, run.y)
    count = np.sum(~np.isnan(values), 0)
    mean = np.nanmean(values, 0)
    if spread == "minmax":
        low, high = np.nanmin(values, 0), np.nanmax(values, 0)
    else:
        std = np.sqrt(np.nanmean((values - mean) ** 2, 0))
        if spread == "sem":
            std = std / np.sqrt(count)
        low, high = mean - std, mean + std
    return grid, mean, low, high


def plot_curves(runs: list[Run], path: Path, x_key: str, y_key: str, spread: str, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({run.task for run in runs})
    labels = sorted({run.label for run in runs})
    cols = min(4, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes.flat, tasks):
        for j, label in enumerate(labels):
            group = [run for run in runs if run.task == task and run.label == label]
            if not group:
                continue
            x, mean, low, high = aggregate_curves(group, spread)
            colour = colours[j % len(colours)]
            ax.plot(x, mean, color=colour, label=f"{label} ({len(group)} seeds)")
            if len(group) > 1:
                ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)
        ax.set_title(task)
        ax.set_xlabel(x_key)
        ax.set_ylabel(y_key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, dpi=100, format="png")
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------- table
def final_score(run: Run, last: int) -> float:
    return float(run.y[-last:].mean())


def by_method_and_task(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        groups[(run.label, run.task)].append(run)
    return {key: sorted(group, key=lambda r: r.seed) for key, group in sorted(groups.items())}


def results_table(runs: list[Run], y_key: str, last: int = 1, resamples: int = 2000
                  ) -> tuple[str, list[scoring.Cell]]:
    """results.md's text and its cells: final scores, normalised aggregates, zero-shot rates."""
    raw = {key: [final_score(run, last) for run in group] for key, group in by_method_and_task(runs).items()}
    title = (f"Final {y_key} (mean of the last {last} row{'s' if last > 1 else ''} of each run), "
             "normalised by the URLB expert score.")
    text, cells = scoring.score_tables(raw, resamples, title=title)
    rates: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in sorted(runs, key=lambda r: r.seed):
        for name, values in run.rates.items():
            rates[(run.label, run.group)][name].append(float(values[-last:].mean()))
    if rates:
        table, rate_cells = scoring.success_table(rates, resamples)
        text += (f"\nZero-shot rates (mean of the last {last} row{'s' if last > 1 else ''} of each run), mean over "
                 f"seeds with a 95% bootstrap interval ({resamples} resamples of the seeds; rliable).\n\n" + table)
        cells += rate_cells
    return text, cells


def normalised_scores(runs: list[Run], last: int) -> dict[str, dict[str, np.ndarray]]:
    """Per method and task with an expert score, the normalised final score of each seed."""
    scores: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for (label, task), group in by_method_and_task(runs).items():
        if task in EXPERT_SCORES:
            scores[label][task] = scoring.normalised([final_score(run, last) for run in group], task)
    return dict(scores)


def normalised_curves(runs: list[Run]) -> dict[str, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Per method (frames, per task runs x frames) of normalised scores, on the tasks with an expert
    score whose runs share at least two frames (a zero-shot run's single evaluation is left out), at
    the frames all of them have; a method left with fewer than two such frames is left out."""
    curves = {}
    for label in sorted({run.label for run in runs}):
        by_task: dict[str, list[dict[float, float]]] = defaultdict(list)
        for run in sorted(runs, key=lambda r: r.seed):
            if run.label == label and run.task in EXPERT_SCORES:
                by_task[run.task].append(dict(zip(run.x, run.y)))  # a repeated frame keeps its last row
        shared = {task: set.intersection(*map(set, points)) for task, points in by_task.items()}
        tasks = sorted(task for task, frames in shared.items() if len(frames) >= 2)
        frames = sorted(set.intersection(*(shared[task] for task in tasks))) if tasks else []
        if len(frames) < 2:
            if by_task:
                print(f"note: no IQM curve for {label}: its runs share fewer than two frames", file=sys.stderr)
            continue
        curves[label] = (np.asarray(frames), {task: scoring.normalised([[point[f] for f in frames]
                                                                        for point in by_task[task]], task)
                                              for task in tasks})
    return curves


# ---------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> tuple[Path, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders, folders of runs, CSV files or globs")
    parser.add_argument("--csv", default="eval", help="which log: eval (default), train, or a file name")
    parser.add_argument("--out", default="plots", help="output folder (default ./plots)")
    parser.add_argument("--x", default="frame", help="x column (default frame)")
    parser.add_argument("--y", default="episode_reward", help="y column (default episode_reward)")
    parser.add_argument("--task", help="task of runs whose config and path do not name one")
    parser.add_argument("--label", help="method name for all runs (default: agent.name from the config)")
    parser.add_argument("--spread", choices=("std", "sem", "minmax"), default="std")
    parser.add_argument("--last", type=int, default=1, help="rows averaged for the final score (default 1)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    args = parser.parse_args(argv)
    if args.last < 1 or args.resamples < 1:
        raise UserError("--last and --resamples must be positive")
    csv_name = args.csv if args.csv.endswith(".csv") else f"{args.csv}.csv"
    runs = load_runs(args.runs, csv_name, args.x, args.y, args.task, args.label)
    out = Path(args.out).expanduser()
    stem = Path(csv_name).stem
    png = plot_curves(runs, out / f"{stem}_curves.png", args.x, args.y, args.spread,
                      f"{stem}: {len(runs)} runs")
    table, cells = results_table(runs, args.y, args.last, args.resamples)
    md, table_csv = scoring.write_results(table, cells, out / f"{stem}_results.md", out / f"{stem}_results.csv")
    written = [png, md, table_csv]
    final = normalised_scores(runs, args.last)
    if final:
        written.append(scoring.performance_profile_figure(final, out / f"{stem}_profile.png", reps=args.resamples,
                                                          title=f"{stem}: final {args.y}, performance profiles"))
    curves = normalised_curves(runs)
    if curves:
        written.append(scoring.learning_curve_figure(curves, out / f"{stem}_iqm.png", reps=args.resamples,
                                                     xlabel=args.x, title=f"{stem}: IQM of the normalised {args.y}"))
    print(table)
    for path in written:
        print(f"wrote {path}")
    return png, md


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        sys.exit(f"error: {error}")
