"""Scores of runs, with rliable (Agarwal et al., "Deep RL at the edge of the statistical precipice",
NeurIPS 2021): the one place in the project that computes aggregates and confidence intervals.

Scores per agent are given per task: a matrix (runs x tasks), a list of 1-D arrays (one per task,
the runs of that task; tasks may have different numbers of runs) or a dict task -> 1-D array.

* ``normalised(scores, task)``: raw return / URLB expert score (``EXPERT_SCORES``).
* ``aggregate``: per agent the mean (of the per-task means over runs), median (of the per-task means),
  interquartile mean (IQM: mean of the middle 50% of all run x task scores, ``scipy.stats.trim_mean``
  at 0.25) and optimality gap (1 - mean of min(score, 1) over all run x task scores), each with a
  stratified-bootstrap confidence interval: rliable's ``get_interval_estimates``, runs resampled with
  replacement within each task, percentile intervals.
* ``probability_of_improvement(x, y)``: P(X > Y), per task the Mann-Whitney U / (n_x n_y) (a tie
  counts one half), averaged over the tasks both have; interval by resampling the runs of x and of y
  independently within each task.
* ``performance_profile``/``performance_profile_figure``: share of all runs with score > tau.
* ``learning_curve``/``learning_curve_figure``: an aggregate (IQM by default) at each evaluation.
* ``success_table``: zero-shot ``success_rate``/``goal_success_rate`` per task or goal set, mean
  over seeds with its interval.
* ``score_tables``/``write_results``: ``results.md`` and a CSV holding every cell.

rliable's resampling draws from NumPy's global generator (its ``random_state`` argument does not
reach the draws), so every function here seeds that generator with ``seed`` for the call and puts
its state back afterwards: same inputs and seed, same intervals; the caller's random stream is left
as it was.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence, Union

import numpy as np
from rliable import library as rly
from rliable import metrics as rly_metrics

from utils.atomic import atomic_write

# URLB expert scores (Laskin et al. 2021), used by the Choreographer paper to normalise returns.
EXPERT_SCORES = {
    "walker_stand": 984.0, "walker_walk": 971.0, "walker_run": 796.0, "walker_flip": 799.0,
    "quadruped_walk": 866.0, "quadruped_run": 888.0, "quadruped_stand": 920.0, "quadruped_jump": 888.0,
    "jaco_reach_top_left": 191.0, "jaco_reach_top_right": 223.0, "jaco_reach_bottom_left": 193.0,
    "jaco_reach_bottom_right": 203.0,
}
METRICS = ("mean", "median", "iqm", "optimality_gap")
METRIC_NAMES = {"mean": "mean", "median": "median", "iqm": "IQM", "optimality_gap": "optimality gap"}
REPS = 2000
CONFIDENCE = 0.95

PerTask = Union[np.ndarray, Sequence[Sequence[float]], Mapping[str, Sequence[float]]]


@dataclass(frozen=True)
class Estimate:
    """A point estimate, its confidence interval and the number of runs behind it."""
    point: float
    low: float
    high: float
    runs: int

    def text(self, digits: int = 3) -> str:
        return f"{self.point:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


# ------------------------------------------------------------------------------------- inputs
def domain_of(task: str) -> str:
    return task.split("_", 1)[0]


def normalised(scores, task: str) -> np.ndarray:
    """Raw returns / the task's URLB expert score."""
    if task not in EXPERT_SCORES:
        raise KeyError(f"no URLB expert score for '{task}'; tasks with one: {', '.join(EXPERT_SCORES)}")
    return np.asarray(scores, dtype=float) / EXPERT_SCORES[task]


def task_columns(per_task: PerTask) -> list[np.ndarray]:
    """One float array per task, runs first (a dict in its key order, a matrix by column)."""
    if isinstance(per_task, Mapping):
        columns = list(per_task.values())
    elif isinstance(per_task, np.ndarray):
        if per_task.ndim < 2:
            raise ValueError(f"a score matrix is runs x tasks; got shape {per_task.shape}")
        columns = [per_task[:, j] for j in range(per_task.shape[1])]
    else:
        columns = list(per_task)
    columns = [np.asarray(column, dtype=float) for column in columns]
    if not columns or any(len(column) == 0 for column in columns):
        raise ValueError("every task needs at least one run")
    if any(not np.all(np.isfinite(column)) for column in columns):
        raise ValueError("scores must be finite")
    return columns


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """NumPy's global generator seeded for the block (rliable draws from it), then restored."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def interval_estimates(columns: list[np.ndarray], matrix_func: Callable[[np.ndarray], np.ndarray],
                       pooled_func: Callable[[list[np.ndarray]], np.ndarray], reps: int = REPS, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, low, high) of a statistic by rliable's stratified bootstrap over runs within tasks.

    Tasks with equal run counts form the runs x tasks (x ...) matrix rliable expects and
    ``matrix_func`` gets its resamples (``StratifiedBootstrap``); otherwise each task's runs are
    resampled on their own (``StratifiedIndependentBootstrap``) and ``pooled_func`` gets the list of
    per-task arrays, each runs x 1 (x ...)."""
    if len({len(column) for column in columns}) == 1:
        data, func = np.stack(columns, axis=1), matrix_func
    else:
        data, func = [column[:, None] for column in columns], (lambda *tasks: pooled_func(list(tasks)))
    with seeded(seed):
        points, intervals = rly.get_interval_estimates({"x": data}, func, reps=reps,
                                                       confidence_interval_size=confidence)
    point = np.asarray(points["x"], dtype=float)
    low, high = (np.asarray(bound, dtype=float) for bound in intervals["x"])
    return point, low, high


# --------------------------------------------------------------------------------- aggregates
def _matrix_aggregates(names: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {', '.join(unknown)}; known: {', '.join(METRICS)}")
    functions = {"mean": rly_metrics.aggregate_mean, "median": rly_metrics.aggregate_median,
                 "iqm": rly_metrics.aggregate_iqm, "optimality_gap": rly_metrics.aggregate_optimality_gap}
    return lambda scores: np.array([functions[name](scores) for name in names])


def _pooled_aggregates(names: Sequence[str]) -> Callable[[list[np.ndarray]], np.ndarray]:
    """The same aggregates for tasks of different run counts: mean and median over the per-task
    means, IQM and optimality gap over all runs of all tasks (as rliable's, on the pooled runs)."""
    def func(tasks: list[np.ndarray]) -> np.ndarray:
        task_means = np.array([rly_metrics.aggregate_mean(task) for task in tasks])
        pooled = np.concatenate(tasks)
        values = {"mean": lambda: task_means.mean(), "median": lambda: np.median(task_means),
                  "iqm": lambda: rly_metrics.aggregate_iqm(pooled),
                  "optimality_gap": lambda: rly_metrics.aggregate_optimality_gap(pooled)}
        return np.array([values[name]() for name in names])
    return func


def point_estimates(per_task: PerTask, metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """The aggregates without intervals (rliable's functions, as ``aggregate`` computes them)."""
    columns = task_columns(per_task)
    if len({len(column) for column in columns}) == 1:
        values = _matrix_aggregates(metrics)(np.stack(columns, axis=1))
    else:
        values = _pooled_aggregates(metrics)([column[:, None] for column in columns])
    return {name: float(value) for name, value in zip(metrics, values)}


def aggregate_one(per_task: PerTask, reps: int = REPS, seed: int = 0, metrics: Sequence[str] = METRICS,
                  confidence: float = CONFIDENCE) -> dict[str, Estimate]:
    """Aggregates of one agent's scores with their stratified-bootstrap intervals."""
    columns = task_columns(per_task)
    point, low, high = interval_estimates(columns, _matrix_aggregates(metrics), _pooled_aggregates(metrics),
                                          reps, seed, confidence)
    runs = sum(map(len, columns))
    return {name: Estimate(float(point[i]), float(low[i]), float(high[i]), runs) for i, name in enumerate(metrics)}


def aggregate(scores_by_agent: Mapping[str, PerTask], reps: int = REPS, seed: int = 0,
              metrics: Sequence[str] = METRICS, confidence: float = CONFIDENCE) -> dict[str, dict[str, Estimate]]:
    """Per agent: mean, median, IQM and optimality gap with 95% stratified-bootstrap intervals
    (each agent resampled with the same ``seed``, so an agent's numbers do not depend on the others)."""
    return {agent: aggregate_one(per_task, reps, seed, metrics, confidence)
            for agent, per_task in scores_by_agent.items()}


def _paired_columns(x: PerTask, y: PerTask) -> tuple[list[np.ndarray], list[np.ndarray]]:
    if isinstance(x, Mapping) and isinstance(y, Mapping):
        tasks = [task for task in x if task in y]
        if not tasks:
            raise ValueError("the two agents share no task")
        return task_columns({t: x[t] for t in tasks}), task_columns({t: y[t] for t in tasks})
    columns_x, columns_y = task_columns(x), task_columns(y)
    if len(columns_x) != len(columns_y):
        raise ValueError(f"x has {len(columns_x)} tasks and y {len(columns_y)}")
    return columns_x, columns_y


def probability_of_improvement(x: PerTask, y: PerTask, reps: int = REPS, seed: int = 0,
                               confidence: float = CONFIDENCE) -> Estimate:
    """P(X > Y) averaged over tasks (rliable's), with an interval from resampling the runs of x and y
    independently within each task. Dicts are matched by task (those both have)."""
    columns_x, columns_y = _paired_columns(x, y)
    count = len(columns_x)

    def func(*tasks: np.ndarray) -> np.ndarray:
        return np.array([np.mean([rly_metrics.probability_of_improvement(tasks[i], tasks[count + i])
                                  for i in range(count)])])

    data = [column[:, None] for column in columns_x + columns_y]
    with seeded(seed):
        points, intervals = rly.get_interval_estimates({"x": data}, func, reps=reps,
                                                       confidence_interval_size=confidence)
    return Estimate(float(points["x"][0]), float(intervals["x"][0][0]), float(intervals["x"][1][0]),
                    sum(map(len, columns_x + columns_y)))


# ---------------------------------------------------------------------------------- figures
Band = tuple[np.ndarray, np.ndarray, np.ndarray]  # point, low, high


def performance_profile(scores_by_agent: Mapping[str, PerTask], taus: Sequence[float], reps: int = REPS,
                        seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Band]:
    """Per agent (profile, low, high): the share of all runs x tasks with a score above each tau
    (rliable's score distribution), with stratified-bootstrap intervals."""
    taus = np.asarray(taus, dtype=float)
    return {agent: interval_estimates(task_columns(per_task), lambda scores: rly.score_distributions(scores, taus),
                                      lambda tasks: rly.score_distributions(np.concatenate(tasks), taus),
                                      reps, seed, confidence)
            for agent, per_task in scores_by_agent.items()}


def _save(figure, path: Path) -> Path:
    import matplotlib.pyplot as plt
    path = Path(path)
    figure.tight_layout()
    with atomic_write(path) as handle:
        figure.savefig(handle, dpi=100, format=path.suffix.lstrip(".") or "png")
    plt.close(figure)
    return path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colours(agents) -> dict:
    """Matplotlib's colour cycle over the agents in name order (as plot.py's per-task curves)."""
    cycle = _pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    return {agent: cycle[i % len(cycle)] for i, agent in enumerate(sorted(agents))}


def performance_profile_figure(scores_by_agent: Mapping[str, PerTask], path: str | Path,
                               taus: Sequence[float] | None = None, reps: int = REPS, seed: int = 0,
                               xlabel: str = r"expert-normalised score ($\tau$)", title: str = "") -> Path:
    """Performance profiles with 95% bands (rliable's plot); taus default to 0 .. max(1, top score)."""
    plt = _pyplot()
    from rliable import plot_utils
    if taus is None:
        top = max(float(np.max(np.concatenate(task_columns(v)))) for v in scores_by_agent.values())
        taus = np.linspace(0.0, max(1.0, top), 101)
    profiles = performance_profile(scores_by_agent, taus, reps, seed)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    plot_utils.plot_performance_profiles({a: p[0] for a, p in profiles.items()}, np.asarray(taus),
                                         performance_profile_cis={a: (p[1], p[2]) for a, p in profiles.items()},
                                         colors=_colours(profiles), ax=axis, xlabel=xlabel, labelsize="large",
                                         ticklabelsize="medium")
    axis.legend()
    axis.set_title(title or f"performance profiles, 95% stratified-bootstrap bands ({reps} resamples)")
    return _save(figure, path)


def learning_curve(per_task_curves: PerTask, metric: str = "iqm", reps: int = REPS, seed: int = 0,
                   confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(point, low, high) of one aggregate at each evaluation; each task's array is runs x evaluations."""
    columns = task_columns(per_task_curves)
    if any(column.ndim != 2 for column in columns):
        raise ValueError("each task's curves are runs x evaluations")
    evaluations = {column.shape[1] for column in columns}
    if len(evaluations) != 1:
        raise ValueError(f"every task needs the same evaluations; got {sorted(evaluations)}")
    frames = evaluations.pop()
    matrix, pooled = _matrix_aggregates([metric]), _pooled_aggregates([metric])
    return interval_estimates(columns, lambda scores: np.array([matrix(scores[..., f])[0] for f in range(frames)]),
                              lambda tasks: np.array([pooled([t[..., f] for t in tasks])[0] for f in range(frames)]),
                              reps, seed, confidence)


def learning_curve_figure(curves_by_agent: Mapping[str, tuple[Sequence[float], PerTask]], path: str | Path,
                          metric: str = "iqm", reps: int = REPS, seed: int = 0, xlabel: str = "frame",
                          ylabel: str | None = None, title: str = "") -> Path:
    """One aggregate (IQM by default) against frames per agent with 95% bands (rliable's plot);
    ``curves_by_agent[agent] = (frames, per-task arrays of runs x len(frames))``."""
    plt = _pyplot()
    from rliable import plot_utils
    points, intervals, frames_by_agent = {}, {}, {}
    for agent, (frames, per_task) in curves_by_agent.items():
        point, low, high = learning_curve(per_task, metric, reps, seed)
        points[agent], intervals[agent], frames_by_agent[agent] = point, (low, high), np.asarray(frames, float)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    colours = _colours(points)
    for agent in points:  # agents may have different evaluation frames: one call each
        plot_utils.plot_sample_efficiency_curve(frames_by_agent[agent], {agent: points[agent]},
                                                {agent: intervals[agent]}, colors={agent: colours[agent]},
                                                ax=axis, xlabel=xlabel, labelsize="large", ticklabelsize="medium",
                                                ylabel=ylabel or f"{METRIC_NAMES[metric]} of expert-normalised score")
    axis.legend()
    axis.set_title(title or f"{METRIC_NAMES[metric]}, 95% stratified-bootstrap bands ({reps} resamples)")
    return _save(figure, path)


# ----------------------------------------------------------------------------------- tables
Cell = dict  # table, agent, group, metric, value, low, high, runs


def _cell(table: str, agent: str, group: str, metric: str, estimate: Estimate) -> Cell:
    return {"table": table, "agent": agent, "group": group, "metric": metric, "value": estimate.point,
            "low": estimate.low, "high": estimate.high, "runs": estimate.runs}


def final_score_table(raw: Mapping[tuple[str, str], Sequence[float]]) -> tuple[list[str], list[Cell]]:
    """Per (agent, task): runs, raw return mean ± std over runs, expert score, normalised mean ± std."""
    lines = ["| method | task | seeds | return (mean ± std) | expert | normalised (mean ± std) |",
             "|---|---|---|---|---|---|"]
    cells = []
    for (agent, task), scores in sorted(raw.items()):
        scores = np.asarray(scores, dtype=float)
        expert = EXPERT_SCORES.get(task)
        nan = float("nan")
        cells.append({"table": "final", "agent": agent, "group": task, "metric": "return", "value": scores.mean(),
                      "low": nan, "high": nan, "runs": len(scores), "std": scores.std()})
        norm_text = "-"
        if expert is not None:
            norm = normalised(scores, task)
            norm_text = f"{norm.mean():.3f} ± {norm.std():.3f}"
            cells.append({"table": "final", "agent": agent, "group": task, "metric": "normalised",
                          "value": norm.mean(), "low": nan, "high": nan, "runs": len(norm), "std": norm.std()})
        lines.append(f"| {agent} | {task} | {len(scores)} | {scores.mean():.1f} ± {scores.std():.1f} | "
                     f"{f'{expert:.0f}' if expert is not None else '-'} | {norm_text} |")
    return lines, cells


def score_tables(raw: Mapping[tuple[str, str], Sequence[float]], reps: int = REPS, seed: int = 0,
                 reference: str = "choreo", title: str = "Final scores, normalised by the URLB expert score."
                 ) -> tuple[str, list[Cell]]:
    """The Markdown of results.md and its cells: final scores per task, then, on the tasks with an
    expert score, per agent the aggregates over all tasks, the optimality gap and P(reference > agent),
    and per domain all four aggregates (when there is more than one domain)."""
    lines, cells = final_score_table(raw)
    lines = [title, "", *lines]
    by_agent: dict[str, dict[str, np.ndarray]] = {}
    for (agent, task), scores in sorted(raw.items()):
        if task in EXPERT_SCORES:
            by_agent.setdefault(agent, {})[task] = normalised(scores, task)
    if not by_agent:
        return "\n".join(lines) + "\n", cells
    overall = aggregate(by_agent, reps, seed)
    for agent, estimates in overall.items():
        cells += [_cell("aggregate", agent, "all", name, estimate) for name, estimate in estimates.items()]
    lines += ["", f"Expert-normalised aggregates with 95% stratified-bootstrap confidence intervals "
                  f"({reps} resamples of the seeds within each task; rliable).", "",
              "| method | tasks | runs | mean [95% CI] | median [95% CI] | IQM [95% CI] |",
              "|---|---|---|---|---|---|"]
    for agent, per_task in by_agent.items():
        e = overall[agent]
        lines.append(f"| {agent} | {len(per_task)} | {e['mean'].runs} | {e['mean'].text()} | {e['median'].text()} | "
                     f"{e['iqm'].text()} |")
    has_reference = reference in by_agent and len(by_agent) > 1
    lines += ["", "Optimality gap (1 - mean of min(score, 1)): lower is better"
              + (f"; P({reference} > method): probability that a run of {reference} scores higher than one of "
                 "the method on a task, averaged over the tasks both have" if has_reference else "") + ".", "",
              "| method | optimality gap [95% CI] |"
              + (f" P({reference} > method) [95% CI] |" if has_reference else ""),
              "|---|---|" + ("---|" if has_reference else "")]
    for agent in by_agent:
        row = f"| {agent} | {overall[agent]['optimality_gap'].text()} |"
        if has_reference:
            if agent == reference:
                row += " - |"
            else:
                estimate = probability_of_improvement(by_agent[reference], by_agent[agent], reps, seed)
                cells.append(_cell("probability_of_improvement", reference, agent, "probability_of_improvement",
                                   estimate))
                row += f" {estimate.text()} |"
        lines.append(row)
    domains = sorted({domain_of(task) for per_task in by_agent.values() for task in per_task})
    if len(domains) > 1:
        lines += ["", "Per domain.", "",
                  "| method | domain | tasks | runs | mean [95% CI] | median [95% CI] | IQM [95% CI] | "
                  "optimality gap [95% CI] |", "|---|---|---|---|---|---|---|---|"]
        for agent, per_task in by_agent.items():
            for domain in domains:
                tasks = {task: s for task, s in per_task.items() if domain_of(task) == domain}
                if not tasks:
                    continue
                e = aggregate_one(tasks, reps, seed)
                cells += [_cell("aggregate", agent, domain, name, estimate) for name, estimate in e.items()]
                lines.append(f"| {agent} | {domain} | {len(tasks)} | {e['mean'].runs} | "
                             + " | ".join(e[name].text() for name in METRICS) + " |")
    return "\n".join(lines) + "\n", cells


def success_table(rates: Mapping[tuple[str, str], Mapping[str, Sequence[float]]], reps: int = REPS, seed: int = 0,
                  metrics: Sequence[str] = ("success_rate", "goal_success_rate")) -> tuple[str, list[Cell]]:
    """Zero-shot rates per (agent, task or goal set): the mean over seeds with its 95% bootstrap
    interval (rliable, seeds resampled), '-' where a run logged no such rate."""
    lines = ["| method | task | seeds | " + " | ".join(f"{name} [95% CI]" for name in metrics) + " |",
             "|---|---|---|" + "---|" * len(metrics)]
    cells = []
    for (agent, group), by_metric in sorted(rates.items()):
        texts, seeds = [], 0
        for name in metrics:
            values = by_metric.get(name)
            if values is None or len(values) == 0:
                texts.append("-")
                continue
            estimate = aggregate_one([values], reps, seed, metrics=("mean",))["mean"]
            seeds = max(seeds, estimate.runs)
            cells.append(_cell("zero_shot", agent, group, name, estimate))
            texts.append(f"{estimate.text()} (n={estimate.runs})")
        lines.append(f"| {agent} | {group} | {seeds} | " + " | ".join(texts) + " |")
    return "\n".join(lines) + "\n", cells


CSV_FIELDS = ("table", "agent", "group", "metric", "value", "low", "high", "runs", "std")


def cells_csv(cells: Sequence[Cell]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for cell in cells:
        writer.writerow({key: ("" if isinstance(value, float) and math.isnan(value) else value)
                         for key, value in cell.items()})
    return buffer.getvalue()


def write_results(markdown: str, cells: Sequence[Cell], md_path: str | Path, csv_path: str | Path) -> tuple[Path, Path]:
    """``results.md`` and the CSV of every cell (table, agent, group = task / domain / 'all' / the
    other agent, metric, value, low, high, runs, std), each written whole or not at all."""
    with atomic_write(md_path) as handle:
        handle.write(markdown.encode())
    with atomic_write(csv_path) as handle:
        handle.write(cells_csv(cells).encode())
    return Path(md_path), Path(csv_path)
