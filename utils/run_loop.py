"""What the online and the offline loop share (utils/runner.py, utils/offline.py; docs/decisions.md
D32): the run's setup (settings, device, threads, seeds), its clock, the logger, the checkpoint
cadence, the snapshots it may write, the stop a signal asked for and the closing summary. The loops
themselves (environment steps or dataset batches) and what a checkpoint holds are the subclasses'.
"""
from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from utils.agents import plain
from utils.device import resolve_device
from utils.logger import Logger
from utils.seeding import seed_everything
from utils.settings import check_settings
from utils.snapshot import SnapshotError, check_snapshot_owner, save_snapshot
from utils.summary import print_summary
from utils.threads import ThreadShare


class RunLoop:
    """A subclass sets ``self.progress`` (utils.progress.Progress) before training, and supplies
    ``done_count`` (frames or updates: status.json's progress and the logs' x value, in the column
    ``x_key``), ``save_checkpoint`` and ``snapshot_path``."""
    x_key = "frame"

    def __init__(self, cfg: DictConfig, run_dir: str | Path, phase: str):
        check_settings(cfg, phase)
        self.cfg, self.phase, self.run_dir = cfg, phase, Path(run_dir)
        self.device = resolve_device(cfg.device)
        self.threads = ThreadShare(cfg.threads, cfg.concurrent_runs)
        seed_everything(cfg.seed)
        self.elapsed_before = 0.0
        self.start_time = self.last_checkpoint = time.time()
        self.checkpointed_at = None  # the done_count of the last checkpoint
        self.snapshots_written: list[Path] = []
        # Set by utils.lifecycle: the stop signals the loop reads after every step, and status.json.
        self.stop = self.status = None
        self.progress = self.logger = None

    # ------------------------------------------------------------------------ what a loop supplies
    @property
    def done_count(self) -> int:
        raise NotImplementedError

    def save_checkpoint(self) -> None:
        raise NotImplementedError

    def snapshot_path(self, count: int) -> Path:
        raise NotImplementedError

    # ---------------------------------------------------------------------------------- shared
    def total_time(self) -> float:
        return self.elapsed_before + time.time() - self.start_time

    def checkpoint_due(self) -> bool:
        return time.time() - self.last_checkpoint >= 60 * self.cfg.checkpoint_every_min

    def checkpoint_written(self) -> None:
        """Called by ``save_checkpoint`` once the file is in place."""
        self.last_checkpoint = time.time()
        self.checkpointed_at = self.done_count

    def open_logger(self, task: str, resumed: dict | None) -> Logger:
        cfg = self.cfg
        wandb_kwargs = dict(project=f"{cfg.project_name}_{self.phase}", group=cfg.agent.name, config=plain(cfg),
                            name=f"{cfg.experiment}_{cfg.agent.name}_{task}_{cfg.obs_type}_{cfg.seed}")
        if resumed and resumed.get("wandb_id"):
            wandb_kwargs.update(id=resumed["wandb_id"], resume="allow")
        return Logger(self.run_dir, cfg.use_tb, cfg.use_wandb, wandb_kwargs, x_key=self.x_key,
                      resume_frame=self.done_count if resumed else None)

    def check_snapshot_targets(self, counts) -> None:
        """At start-up: every snapshot still to write is absent or this run's own (never replaced silently)."""
        for count in counts:
            if count > self.done_count:
                check_snapshot_owner(self.snapshot_path(count), self.run_dir, self.cfg.overwrite_snapshots)

    def save_snapshot_file(self, payload: dict, count: int) -> Path:
        path = self.snapshot_path(count)
        replacing = self.cfg.overwrite_snapshots or path.exists()
        check_snapshot_owner(path, self.run_dir, self.cfg.overwrite_snapshots)
        try:
            # A name that was free at the check must still be free at the publish: another run with
            # the same domain, agent, seed and snapshot folder may have written it in between.
            return save_snapshot(payload, path, exclusive=not replacing)
        except FileExistsError as error:
            check_snapshot_owner(path, self.run_dir, self.cfg.overwrite_snapshots)  # names the other run
            raise SnapshotError(f"could not write snapshot {path}: {error.strerror or error}") from error

    def report_progress(self, force: bool = False) -> None:
        if self.status is not None:
            self.status.progress(self.done_count, self.total_time(), force=force)

    def stop_if_asked(self, where: str, checkpoint=None) -> None:
        """After a step: when a signal asked to stop, write the checkpoint (``checkpoint``, or
        ``save_checkpoint`` unless this step's is written), close everything and raise RunStopped."""
        if self.stop is None or not self.stop.requested:
            return
        if checkpoint is not None:
            checkpoint()
        elif self.checkpointed_at != self.done_count:
            self.save_checkpoint()
        self.report_progress(force=True)
        self.close()
        raise self.stop.stop_line(self.run_dir, where)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self.logger is not None:
            self.logger.close()
        self.threads.close()

    def finish(self, done: str) -> None:
        """The end of a run: the final checkpoint (unless written), status, closing, the summary lines."""
        if self.checkpointed_at != self.done_count:
            self.save_checkpoint()
        self.report_progress(force=True)
        self.close()
        print_summary(self.run_dir, done, self.total_time(), self.snapshots_written, self.cfg.use_tb,
                      self.threads.describe())
