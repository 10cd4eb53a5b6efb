"""A grid of runs (experiment.py; docs/decisions.md D33): agents x domains x seeds pre-trainings, each
snapshot fine-tuned on the domain's tasks, and the scores of the fine-tuning runs.

A grid is a config (``configs/grid/experiment/<name>.yaml``); ``cells(grid)`` lists its runs, each with a
fixed run folder under the grid's folder, so the same command finds its own runs again: finished cells
are skipped, unfinished ones continue from their checkpoints. A cell's state comes from its run
folder (``status.json``, written by every run: utils/lifecycle.py) and its lock.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import envs
from utils.errors import UserError
from utils.lifecycle import LOCK_NAME, read_status

REPO = Path(__file__).resolve().parents[1]
STAGES = ("pretrain", "finetune")
SCRIPTS = {"pretrain": "pretrain.py", "finetune": "finetune.py"}


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a pre-training (agent, domain, seed) or a fine-tuning (agent, task, seed)."""
    stage: str
    agent: str
    domain: str
    task: str | None
    seed: int
    needs: str | None = field(default=None, compare=False)  # name of the pre-training it starts from

    @property
    def name(self) -> str:
        return f"pt_{self.agent}_{self.domain}_s{self.seed}" if self.stage == "pretrain" else \
            f"ft_{self.agent}_{self.task}_s{self.seed}"


# ----------------------------------------------------------------------------------- the grid
def agent_needs_reward(agent: str) -> bool:
    """Whether ``configs/agent/<agent>.yaml``'s class learns from the task reward (no pre-training cell)."""
    from utils.agents import agent_class
    return not agent_class(OmegaConf.create({"agent": OmegaConf.load(REPO / "configs" / "agent" / f"{agent}.yaml")})
                           ).reward_free


def check_grid(grid: DictConfig) -> None:
    """One ``UserError`` line for an unknown agent, domain, task or a bad budget, before anything runs."""
    known_agents = sorted(path.stem for path in (REPO / "configs" / "agent").glob("*.yaml"))
    for agent in grid.agents:
        if agent not in known_agents:
            raise UserError(f"experiment.agents: unknown agent '{agent}'; valid: {', '.join(known_agents)}")
    for domain in grid.domains:
        if domain not in envs.TASKS:
            raise UserError(f"experiment.domains: unknown domain '{domain}'; valid: {', '.join(envs.TASKS)}")
    for domain, tasks in (grid.tasks or {}).items():
        if domain not in grid.domains:
            raise UserError(f"experiment.tasks.{domain}: '{domain}' is not one of experiment.domains "
                            f"({', '.join(grid.domains)})")
        for task in tasks or []:
            if task not in envs.TASKS[domain]:
                raise UserError(f"experiment.tasks.{domain}: unknown task '{task}'; valid: "
                                f"{', '.join(envs.TASKS[domain])}")
    if not grid.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in grid.seeds):
        raise UserError(f"experiment.seeds={list(grid.seeds)!r} must list non-negative integers")
    for stage, least in (("pretrain", 1), ("finetune", 0)):  # fine-tuning 0 frames: zero-shot evaluation
        frames = grid[stage].frames
        if isinstance(frames, bool) or not isinstance(frames, int) or frames < least:
            raise UserError(f"experiment.{stage}.frames={frames!r} must be an integer >= {least}")
        for key in ("cpus", "gpus", "mem_gb", "time_min"):
            value = grid[stage].resources[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < (0 if key == "gpus" else 1):
                raise UserError(f"experiment.{stage}.resources.{key}={value!r} must be a number >= "
                                f"{0 if key == 'gpus' else 1}")


def cells(grid: DictConfig) -> list[Cell]:
    """Every run of the grid, each pre-training before the fine-tunings that start from it."""
    out = []
    for agent in grid.agents:
        scratch = agent_needs_reward(agent)
        for domain in grid.domains:
            for seed in grid.seeds:
                pretrain = None if scratch else Cell("pretrain", agent, domain, None, int(seed))
                if pretrain is not None:
                    out.append(pretrain)
                for task in tasks_of(grid, domain):
                    out.append(Cell("finetune", agent, domain, task, int(seed),
                                    needs=pretrain.name if pretrain else None))
    return out


def tasks_of(grid: DictConfig, domain: str) -> list[str]:
    """The fine-tuning tasks of a domain: ``experiment.tasks.<domain>``, all of the domain's tasks when
    the domain is not listed there, none for an empty list (pre-training only)."""
    listed = (grid.tasks or {}).get(domain)
    return list(envs.TASKS[domain]) if listed is None else list(listed)


def run_dir(out: Path, cell: Cell) -> Path:
    return Path(out) / "runs" / cell.name


def log_path(out: Path, cell: Cell) -> Path:
    return Path(out) / "logs" / f"{cell.name}.log"


def target(grid: DictConfig, cell: Cell) -> int:
    """The frames the cell's run trains for (fine-tuning: the original's num_train_frames = budget + 10)."""
    frames = int(grid[cell.stage].frames)
    return frames if cell.stage == "pretrain" else frames + 10


def as_overrides(settings) -> list[str]:
    """{"rssm": {"deter": 32}, "preset": "cpu", "eval_goals": True} -> ["rssm.deter=32", "preset=cpu",
    "eval_goals=true"]: the grid's settings as the scripts' command-line overrides."""
    def text(value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if value is None:
            return "null"
        if isinstance(value, (list, tuple)):
            return "[" + ",".join(text(v) for v in value) + "]"
        return str(value)

    def flat(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}={text(value)}"
    plain = OmegaConf.to_container(settings, resolve=True) if isinstance(settings, DictConfig) else dict(settings or {})
    return list(flat(plain))


def command(grid: DictConfig, out: Path, cell: Cell, threads: str | int) -> list[str]:
    """The cell's command line: the script, the grid's settings, the cell's own, a fixed run folder."""
    out = Path(out).resolve()
    stage = grid[cell.stage]
    args = [sys.executable, str(REPO / SCRIPTS[cell.stage]), *as_overrides(grid.common), *as_overrides(stage.settings),
            f"agent={cell.agent}", f"seed={cell.seed}", f"num_train_frames={target(grid, cell)}",
            f"snapshot_base_dir={out / 'snapshots'}", f"threads={threads}", "progress=false",
            f"hydra.run.dir={run_dir(out, cell)}"]
    if cell.stage == "pretrain":
        args += [f"domain={cell.domain}", f"snapshots=[{stage.frames}]"]
    else:
        args += [f"task={cell.task}", f"snapshot_ts={grid.pretrain.frames if cell.needs else 0}"]
    return args


# ----------------------------------------------------------------------------------- states
def cell_state(out: Path, grid: DictConfig, cell: Cell) -> dict:
    """``state``: done, running, stopped (by a signal: continues on the next launch), failed, or
    not started; with the progress, the seconds trained, and for a failure the last line of its log.
    ``waiting`` (for a job queued on a cluster, or for its pre-training) is the launcher's to say."""
    folder = run_dir(out, cell)
    status = read_status(folder)
    info = {"cell": cell, "state": "not started", "done": 0, "target": target(grid, cell), "seconds": 0.0,
            "last_line": None}
    if status is None:
        last = last_log_line(out, cell)
        if folder.exists() or (last or "").startswith("error:"):  # refused its settings, or died at once
            info.update(state="failed", last_line=last)
        return info
    info.update(done=status.get("done", 0), seconds=status.get("seconds", 0.0))
    state = status.get("state")
    if state == "running" and not lock_is_held(folder):
        state = "failed"  # killed (SIGKILL, a lost node) while running: its checkpoint continues it
    if state == "done" and status.get("target") != info["target"]:
        state = "stopped"  # finished another budget (an earlier, smaller one): continues
    info["state"] = state
    if state == "failed":
        info["last_line"] = status.get("message") or last_log_line(out, cell)
    return info


def lock_is_held(folder: Path) -> bool:
    from filelock import FileLock, Timeout
    lock = FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def last_log_line(out: Path, cell: Cell) -> str | None:
    path = log_path(out, cell)
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return lines[-1] if lines else None


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def sibling_key(cell: Cell) -> tuple[str, str, str]:
    return cell.agent, cell.stage, cell.domain


def seconds_left(info: dict, sibling_seconds: list[float] | None, stage_rates: list[float] | None) -> float | None:
    """The seconds a cell still needs. Its own pace so far (seconds per frame) misleads early: a stage
    starts with seed frames (acting without updates) that run several times faster than the rest.
    So where cells of the same agent, stage and domain have finished, their mean time less the
    seconds this one has run, unless its own pace says longer; else its own pace; else the stage's
    seconds per frame (``stage_rates``)."""
    frames_left = max(0, info["target"] - info["done"])  # a stopped cell of a larger, earlier budget
    own = frames_left * info["seconds"] / info["done"] if info["done"] > 0 and info["seconds"] > 0 else None
    if sibling_seconds:
        return max(sum(sibling_seconds) / len(sibling_seconds) - info["seconds"], own or 0.0)
    if own is not None:
        return own
    return frames_left * sum(stage_rates) / len(stage_rates) if stage_rates else None


def status_table(out: Path, grid: DictConfig, queued: dict[str, str] | None = None) -> str:
    """The grid at a glance: one line per cell, then the compute spent and (estimated) left.
    ``queued``: cell name -> state the scheduler reports for cells not running yet (``waiting``)."""
    queued = queued or {}
    infos = [cell_state(out, grid, cell) for cell in cells(grid)]
    finished = [info for info in infos if info["state"] == "done" and info["seconds"] > 0]
    progressed = [info for info in infos if info["done"] > 0 and info["seconds"] > 0]
    sibling_seconds: dict[tuple[str, str, str], list[float]] = {}
    for info in finished:
        sibling_seconds.setdefault(sibling_key(info["cell"]), []).append(info["seconds"])
    per_frame: dict[str, list[float]] = {}
    for stage in STAGES:  # a stage's finished cells; while none has finished, those that have progressed
        pool = [i for i in finished if i["cell"].stage == stage] or [i for i in progressed if i["cell"].stage == stage]
        if pool:
            per_frame[stage] = [info["seconds"] / info["done"] for info in pool]
    gpu = any(int(grid[stage].resources.gpus) > 0 for stage in STAGES)
    what = "GPU-hours" if gpu else "CPU-hours"
    rows, counts, spent, left, unknown = [], {}, 0.0, 0.0, False
    for info in infos:
        cell = info["cell"]
        state = info["state"]
        if state in ("not started", "stopped", "failed") and cell.name in queued:
            state = queued[cell.name]
        counts[state] = counts.get(state, 0) + 1
        resources = grid[cell.stage].resources
        units = int(resources.gpus) if gpu else int(resources.cpus)
        spent += info["seconds"] * units / 3600
        remaining = None
        if state != "done":
            remaining = seconds_left(info, sibling_seconds.get(sibling_key(cell)), per_frame.get(cell.stage))
            if remaining is None:
                unknown = True
            else:
                left += remaining * units / 3600
        detail = {"running": f"frame {info['done']}/{info['target']}, ETA {format_duration(remaining)}",
                  "failed": info["last_line"] or "no log",
                  "stopped": f"at frame {info['done']}/{info['target']}: continues on the next launch",
                  "done": f"{info['target']} frames in {format_duration(info['seconds'])}"}.get(state, "")
        rows.append(f"  {cell.name:<40} {state:<12} {detail}".rstrip())
    summary = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    return "\n".join([f"grid {grid.name} in {Path(out).resolve()}: {len(rows)} cells ({summary})", *rows,
                      f"{what} spent: {spent:.2f}; left: {left:.2f}"
                      + (" (stages that have not run yet are not counted)" if unknown else "")]) + "\n"


# ----------------------------------------------------------------------------------- scores
def read_evaluations(folder: Path) -> list[dict[str, float]]:
    """The rows of a run's eval.csv as numbers (empty fields left out)."""
    import csv
    path = Path(folder) / "eval.csv"
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [{key: float(value) for key, value in row.items() if value not in ("", None)}
                for row in csv.DictReader(handle)]


def score(grid: DictConfig, out: Path, reps: int | None = None) -> list[Path]:
    """results.md, results.csv (every number of the tables), profile.png and curves.png in the grid's
    folder, from the fine-tuning cells that are done (utils/scoring.py: rliable)."""
    from utils import scoring
    reps = int(reps or grid.score.resamples)
    out = Path(out)
    raw: dict[tuple[str, str], list[float]] = {}
    curves: dict[tuple[str, str], list[tuple[list[float], list[float]]]] = {}
    rates: dict[tuple[str, str], dict[str, list[float]]] = {}
    missing = []
    for cell in cells(grid):
        if cell.stage != "finetune":
            continue
        rows = read_evaluations(run_dir(out, cell))
        if cell_state(out, grid, cell)["state"] != "done" or not rows:
            missing.append(cell.name)
            continue
        last = rows[-int(grid.score.final_evals):]
        raw.setdefault((cell.agent, cell.task), []).append(sum(r["episode_reward"] for r in last) / len(last))
        curves.setdefault((cell.agent, cell.task), []).append(([r["frame"] for r in rows],
                                                              [r["episode_reward"] for r in rows]))
        for metric in ("success_rate", "goal_success_rate"):
            if metric in rows[-1]:
                rates.setdefault((cell.agent, cell.task), {}).setdefault(metric, []).append(rows[-1][metric])
    title = (f"Grid {grid.name}: final return = mean of the last {grid.score.final_evals} evaluation(s) of each "
             f"fine-tuning run ({grid.finetune.frames} frames after {grid.pretrain.frames} pre-training frames).")
    text, table_cells = scoring.score_tables(raw, reps, title=title) if raw else (title + "\n\nNo finished cell yet.\n", [])
    if rates:
        zero_shot, rate_cells = scoring.success_table(rates, reps)
        text += "\nZero-shot goal reaching: success rates over each run's evaluation episodes.\n\n" + zero_shot
        table_cells += rate_cells
    if missing:
        text += f"\nNot yet scored ({len(missing)} cells not done): {', '.join(missing)}.\n"
    written = list(scoring.write_results(text, table_cells, out / "results.md", out / "results.csv"))
    normalised = {}
    for (agent, task), scores in raw.items():
        if task in scoring.EXPERT_SCORES:
            normalised.setdefault(agent, {})[task] = scoring.normalised(scores, task)
    if normalised:
        written.append(scoring.performance_profile_figure(normalised, out / "profile.png", reps=reps))
        by_agent = {}
        for (agent, task), runs in curves.items():
            if task not in scoring.EXPERT_SCORES:
                continue
            frames = runs[0][0]
            entry = by_agent.setdefault(agent, (frames, {}))
            if entry[0] == frames:  # one evaluation schedule per agent (the grid gives every cell the same)
                entry[1][task] = scoring.normalised([values for f, values in runs if f == frames], task)
        if by_agent:
            written.append(scoring.learning_curve_figure(by_agent, out / "curves.png", reps=reps))
    return written
