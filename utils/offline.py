"""Offline pre-training from a fixed dataset in the ExORL layout (docs/algorithm.md §10.2, §10.5,
§10.7, §11.7; docs/decisions.md D6, D15, D17, D22-D24).

``OfflineRunner`` reads the dataset (``utils.exorl``), holds out a few episodes for validation,
and runs ``num_train_updates`` updates of the world model, the VQ skill module and the skill
actor-critic (no exploration), one ``batch_size x batch_length`` batch each. The one counter is
updates: the logs' x value (the column ``step``, S on the console) and the snapshots' numbers; rows
hold no frames, episodes or returns (there are none offline; docs/decisions.md D32). Re-running a
command on the same run folder continues from its checkpoint.
"""
from __future__ import annotations

import time
from pathlib import Path

import hydra.utils
import numpy as np
import torch
from omegaconf import DictConfig

import envs
from utils import exorl
from utils.errors import UserError
from utils.progress import Progress
from utils.replay import EpisodeReplay
from utils.checkpoint import open_checkpoint, set_aside_unfinished_run, set_global_rng_state, write_checkpoint
from utils.agents import build_agent, load_agent_state, plain, prefetch_batches
from utils.runner import check_finite
from utils.run_loop import RunLoop

EVAL_KEYS = ("model_loss", "observation_loss", "kl_loss", "reward_loss", "model_kl")


def holdout_split(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) episode positions: round(fraction x count) held out, at least 1 when
    fraction > 0 and there are >= 2 episodes, chosen by a seeded draw; both lists in file order."""
    held = 0
    if fraction > 0 and count >= 2:
        held = min(count - 1, max(1, int(round(fraction * count))))
    picks = set(np.random.default_rng(seed).choice(count, size=held, replace=False).tolist()) if held else set()
    train = [i for i in range(count) if i not in picks]
    return train, sorted(picks)


def make_replay(episodes: list[dict[str, np.ndarray]], batch_size: int, batch_length: int, seed: int,
                device, prefetch: bool = False) -> EpisodeReplay:
    """An in-memory replay holding exactly ``episodes`` (the reader already applied replay.capacity)."""
    capacity = sum(len(ep["reward"]) - 1 for ep in episodes)
    replay = EpisodeReplay(None, capacity, batch_size, batch_length, seed, device, save=False, prefetch=prefetch)
    for episode in episodes:
        replay.add_episode(episode)
    return replay


class OfflineRunner(RunLoop):
    # Logs are by update (the column step): an offline run sees no frames and no episodes.
    x_key = "step"

    def __init__(self, cfg: DictConfig, run_dir: str | Path):
        super().__init__(cfg, run_dir, "offline")
        self.task = cfg.task or envs.primal_task(cfg.domain)
        # A states env at the dataset's own step (action repeat 1), ExORL's Jaco variant: it gives
        # the specs, checks the files' shapes, relabels rewards and renders pixels.
        try:
            self.env = envs.make(self.task, "states", 1, cfg.seed, exorl=True)
        except ValueError as error:
            raise UserError(str(error)) from error
        self.pixels = cfg.obs_type == "pixels"
        obs_shape = (3, 64, 64) if self.pixels else self.env.obs_shape
        self.dataset_dir = exorl.resolve_dataset_dir(cfg.dataset_dir, cfg.dataset, cfg.domain,
                                                     cfg.collection_method)
        data = exorl.load_dataset(self.dataset_dir, self.env, task=self.task, capacity=cfg.replay.capacity,
                                  max_episodes=cfg.max_episodes, relabel=cfg.relabel, pixels=self.pixels,
                                  on_bad_file=cfg.on_bad_file, pixels_dir=cfg.pixels_dir)
        episodes = data.episodes
        train_ids, held_ids = holdout_split(len(episodes), cfg.holdout_fraction, cfg.seed)
        long_enough = [i for i in train_ids if len(episodes[i]["reward"]) >= cfg.batch_length]
        if not long_enough:
            longest = max(len(ep["reward"]) for ep in episodes)
            raise UserError(f"no training episode in {self.dataset_dir} has batch_length={cfg.batch_length} rows "
                            f"(longest: {longest}); lower batch_length")
        self.replay = self._replay([episodes[i] for i in train_ids], cfg.seed, prefetch_batches(cfg, self.device))
        self.eval_replay = None
        held = [episodes[i] for i in held_ids]
        if held and any(len(ep["reward"]) >= cfg.batch_length for ep in held):
            self.eval_replay = self._replay(held, cfg.seed + 1)
        elif held:
            exorl.warn(f"no held-out episode has batch_length={cfg.batch_length} rows; validation losses are off")
        del episodes, data
        print(f"dataset {self.dataset_dir}: {len(train_ids)} training episode(s), {len(self.replay)} transitions; "
              f"{len(held_ids)} held out for validation", flush=True)

        self.agent = build_agent(cfg, obs_shape, self.env.action_dim, self.device)
        if not self.agent.reward_free:
            print(f"note: agent={cfg.agent.name} is not reward-free: it trains on the dataset's rewards for "
                  f"{self.task}{' (relabelled)' if cfg.relabel else ' (as stored)'}", flush=True)
        self.snapshot_dir = Path(hydra.utils.to_absolute_path(cfg.snapshot_base_dir)) / cfg.dataset \
            / cfg.collection_method / cfg.domain / cfg.agent.name / str(cfg.seed)
        self.updates = 0
        set_aside_unfinished_run(self.run_dir, cfg.resume)
        resumed = self.maybe_resume()
        self.check_snapshot_targets(int(count) for count in cfg.snapshots)
        self.logger = self.open_logger(cfg.domain, resumed)

    def _replay(self, episodes: list[dict[str, np.ndarray]], seed: int, prefetch: bool = False) -> EpisodeReplay:
        return make_replay(episodes, self.cfg.batch_size, self.cfg.batch_length, seed, self.device, prefetch)

    @property
    def done_count(self) -> int:
        return self.updates

    # ------------------------------------------------------------------------------------ resuming
    def maybe_resume(self) -> dict | None:
        """Continue from the run folder's checkpoint (resume=auto), or refuse to touch it (never)."""
        found = open_checkpoint(self.run_dir, self.cfg.resume, "offline", self.device, plain(self.cfg))
        if found is None:
            return None
        path, payload = found
        if payload.get("dataset_dir") != str(self.dataset_dir):
            raise UserError(f"the checkpoint in {self.run_dir} trained on {payload.get('dataset_dir')}, not "
                            f"{self.dataset_dir}; use another hydra.run.dir")
        load_agent_state(self.agent, payload["agent"], path)
        self.replay.set_rng_state(payload["replay_rng"])
        self.updates = payload["updates"]
        self.elapsed_before = payload["total_time"]
        set_global_rng_state(payload["rng"])
        print(f"resumed from {path} at update {self.updates}", flush=True)
        return payload

    def save_checkpoint(self) -> None:
        payload = self.snapshot_payload()
        payload["replay_rng"] = self.replay.rng_state()
        write_checkpoint(self.run_dir, payload, "offline", self.total_time(), self.logger.wandb)
        self.checkpoint_written()

    # ---------------------------------------------------------------------------------------- loop
    def train(self) -> None:
        cfg, agent = self.cfg, self.agent
        self.threads.register()
        pending = sorted({int(s) for s in cfg.snapshots if int(s) > self.updates})
        beyond = [s for s in pending if s > cfg.num_train_updates]
        if beyond:
            exorl.warn(f"snapshots {beyond} lie beyond num_train_updates={cfg.num_train_updates} and will not be written")
        if self.eval_replay is not None and self.updates % cfg.eval_every_updates == 0:
            self.evaluate()
        last_dump = time.time()
        show = cfg.progress
        self.progress = Progress(cfg.num_train_updates, unit="update", desc="offline", initial=self.updates,
                                 enabled=None if show == "auto" else bool(show), every_s=cfg.progress_every_s)
        self.logger.echo = self.progress.write
        while self.updates < cfg.num_train_updates:
            metrics = agent.update_offline(self.replay.sample())
            self.updates += 1
            self.progress.update(1, updates=self.updates)
            check_finite(metrics, self.updates)
            if self.updates % cfg.log_every_updates == 0:
                elapsed, last_dump = time.time() - last_dump, time.time()
                self.logger.log_metrics(metrics, self.updates, "train")
                self.logger.log_metrics({
                    "updates_per_s": cfg.log_every_updates / max(elapsed, 1e-9),
                    "total_time": self.total_time(), "buffer_size": len(self.replay),
                }, self.updates, "train")
                self.logger.dump(self.updates, "train")
                self.threads.rebalance()
                self.report_progress()
            if self.eval_replay is not None and self.updates % cfg.eval_every_updates == 0:
                self.evaluate()
            snapshot_written = False
            while pending and self.updates >= pending[0]:
                self.snapshots_written.append(self.save_snapshot(pending.pop(0)))
                snapshot_written = True
            if snapshot_written or self.checkpoint_due():
                self.save_checkpoint()
            self.stop_if_asked(f"update {self.updates}")
        # A finished run re-launched in the same folder resumes here and stops at once.
        self.finish(f"{self.updates} updates")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """World-model losses on a batch of held-out episodes (the validation signal offline).

        The batch and the latent samples come from generators seeded by (seed, updates), so an
        evaluation neither changes the training's random streams nor differs after a resume."""
        cfg = self.cfg
        self.eval_replay.rng = np.random.default_rng([cfg.seed, self.updates])
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(cfg.seed * 1_000_003 + self.updates)
            batch = self.eval_replay.sample()
            with self.agent.autocast():
                loss, _, _, metrics = self.agent.wm.loss(batch)
        metrics["model_loss"] = loss
        values = {key: metrics[key] for key in EVAL_KEYS}
        values.update(total_time=self.total_time())
        self.logger.log_metrics(values, self.updates, "eval")
        return self.logger.dump(self.updates, "eval")

    # ----------------------------------------------------------------------------------- snapshots
    def snapshot_payload(self) -> dict:
        cfg = self.cfg
        return {"agent": self.agent.snapshot_state(), "updates": self.updates, "global_step": self.updates,
                "global_episode": 0, "obs_type": cfg.obs_type, "domain": cfg.domain,
                "task": self.task, "action_repeat": 1, "dataset": cfg.dataset,
                "collection_method": cfg.collection_method, "dataset_dir": str(self.dataset_dir),
                "config": plain(cfg), "run_dir": str(self.run_dir.resolve())}

    def snapshot_path(self, updates: int) -> Path:
        return self.snapshot_dir / f"snapshot_{updates}.pt"

    def save_snapshot(self, updates: int) -> Path:
        return self.save_snapshot_file(self.snapshot_payload(), updates)
