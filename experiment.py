"""The paper's experiment in one command: a grid of agents x domains x tasks x seeds, pre-trained,
fine-tuned from each snapshot and scored (docs/decisions.md D33).

    python experiment.py experiment=compare_cpu launcher.jobs=2 launcher.threads=1   # run (or continue) it here
    python experiment.py experiment=urlb_states launcher=slurm launcher.partition=gpu # submit it to Slurm
    python experiment.py experiment=compare_cpu action=status                         # the grid at a glance
    python experiment.py experiment=compare_cpu action=score                          # results from what is done

Presets: configs/grid/experiment/ (compare_cpu, urlb_states, urlb_pixels, zero_shot_jaco, zero_shot_mw);
every value can be overridden (experiment.seeds=[1,2], experiment.agents=[choreo,lbs], out=...).
Rerunning a command skips finished cells and continues unfinished ones from their checkpoints.
"""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

ACTIONS = ("run", "status", "score")


def main_body(cfg: DictConfig, argv: list[str]) -> None:
    from utils.errors import UserError
    from utils.grid import check_grid, score, status_table
    from utils import launchers
    grid, launcher, out = cfg.experiment, cfg.launcher, Path(str(cfg.out)).resolve()
    if cfg.action not in ACTIONS:
        raise UserError(f"action={cfg.action!r} is not valid; valid: {', '.join(ACTIONS)}")
    if launcher.name not in ("local", "slurm"):
        raise UserError(f"launcher={launcher.name!r} is not valid; valid: local, slurm")
    check_grid(grid)
    if cfg.action == "status":
        queued = {}
        if launcher.name == "slurm" and launchers.read_jobs(out):
            launchers.check_slurm()
            queued = launchers.slurm_state(out)
        print(status_table(out, grid, queued), end="", flush=True)
        return
    if cfg.action == "score":
        for path in score(grid, out):
            print(f"wrote {path}", flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    if launcher.name == "slurm":
        # The scoring job rebuilds the same grid with the local launcher (none of the Slurm launcher's keys).
        score_command = [sys.executable, str(Path(__file__).resolve()), *[a for a in argv if not a.startswith(
            ("action=", "launcher=", "launcher.", "out="))], f"out={out}", "action=score", "launcher=local"]
        submitted = launchers.submit_slurm(grid, out, launcher, launcher.threads, score_command)
        print(f"grid {grid.name}: submitted {len(submitted)} cell(s)" + (f": {', '.join(submitted)}" if submitted else
              " (every cell is done or queued)") + f"; watch it with: python experiment.py {' '.join(argv)} "
              f"action=status", flush=True)
        return
    failed, skipped = launchers.run_local(grid, out, launcher.jobs, launcher.threads)
    for path in score(grid, out):
        print(f"wrote {path}", flush=True)
    if failed:
        also = f", {len(skipped)} skipped for it" if skipped else ""
        raise UserError(f"{len(failed)} cell(s) failed{also} (their logs: {out / 'logs'}); rerun the command to "
                        f"retry them")


@hydra.main(config_path="configs/grid", config_name="experiment", version_base=None)
def main(cfg: DictConfig) -> None:
    from utils.errors import UserError
    from utils.launchers import GridStopped
    try:
        main_body(cfg, sys.argv[1:])
    except GridStopped as stopped:
        print(stopped, file=sys.stderr, flush=True)
        sys.exit(stopped.exit_code)
    except (UserError, OSError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    from utils.settings import CONFIG_DIR, preflight
    preflight("experiment", config_dir=CONFIG_DIR / "grid")
    main()
