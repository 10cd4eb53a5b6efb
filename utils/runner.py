"""The environment loop shared by pretrain.py and finetune.py (docs/algorithm.md §10;
docs/decisions.md D8, D17, D18).

``OnlineRunner`` turns a config into parts (envs, agent, replay, logger) and runs: (pre-training
only) a seed phase of random actions, act, store, one update every ``train_every_actions`` frames,
evaluation, logging and snapshots. Step = one agent decision; frame = step x action_repeat.
"""
from __future__ import annotations

import time
from pathlib import Path

import hydra.utils
import numpy as np
import torch
from omegaconf import DictConfig

import envs
from agent.report import log_openloop_video
from utils.agents import agent_class, build_agent, load_agent_state, plain, prefetch_batches
from utils.errors import TrainingDiverged, UserError
from utils.progress import Progress
from utils.replay import EpisodeReplay
from utils.checkpoint import (global_rng_state, open_checkpoint, set_aside_unfinished_run, set_global_rng_state,
                              write_checkpoint)
from utils.run_loop import RunLoop
from utils.settings import resolve_task
from utils.snapshot import load_snapshot, save_snapshot
from utils.video import VideoRecorder


def make_env(task: str, cfg: DictConfig, **kwargs):
    if cfg.goals_file is not None:  # Meta-World goal file; relative to where the command was run
        kwargs["goals_file"] = hydra.utils.to_absolute_path(str(Path(str(cfg.goals_file)).expanduser()))
    try:
        return envs.make(task, cfg.obs_type, cfg.action_repeat, cfg.seed, **kwargs)
    except ValueError as error:
        raise UserError(str(error)) from error


def snapshot_agent(cfg: DictConfig) -> str:
    """Whose snapshot fine-tuning starts from: ``snapshot_agent`` (null: this agent's own)."""
    return cfg.snapshot_agent or cfg.agent.name


def finetune_snapshot_path(cfg: DictConfig, domain: str) -> Path:
    """Where finetune.py looks for its starting snapshot (docs/algorithm.md §10.7)."""
    seed_dir = Path(str(cfg.seed))
    if cfg.custom_snap_dir:
        base = Path(hydra.utils.to_absolute_path(cfg.custom_snap_dir))
    elif cfg.from_offline:
        if not cfg.dataset or not cfg.collection_method:
            raise UserError("from_offline=True needs dataset=... and collection_method=... (e.g. dataset=exorl "
                            "collection_method=rnd)")
        base = Path(hydra.utils.to_absolute_path(cfg.offline_snapshot_base_dir)) / cfg.dataset \
            / cfg.collection_method / domain / snapshot_agent(cfg)
    else:
        base = Path(hydra.utils.to_absolute_path(cfg.snapshot_base_dir)) / cfg.obs_type / domain / snapshot_agent(cfg)
    return base / seed_dir / f"snapshot_{cfg.snapshot_ts}.pt"


def load_pretrained(cfg: DictConfig, domain: str) -> dict:
    path = finetune_snapshot_path(cfg, domain)
    if not path.is_file():
        existing = sorted(int(p.stem.split("_")[1]) for p in path.parent.glob("snapshot_*.pt")
                          if p.stem.split("_")[1].isdigit())
        found = ", ".join(map(str, existing)) if existing else "none"
        raise UserError(f"snapshot not found: {path} (snapshot_ts values there: {found}; "
                        f"snapshot_ts=0 trains from scratch)")
    payload = load_snapshot(path)
    if not isinstance(payload.get("agent"), dict) or not isinstance(payload["agent"].get("modules"), dict):
        raise UserError(f"snapshot {path} holds no agent weights (no agent.modules entry); expected a "
                        f"snapshot_<frames>.pt written by pretrain.py or offline_train.py")
    for key, expected in (("obs_type", cfg.obs_type), ("domain", domain)):
        if payload.get(key) != expected:
            raise UserError(f"snapshot {path} was pre-trained with {key}={payload.get(key)!r} but this run "
                            f"has {key}={expected!r}")
    # Snapshots written before agents had names are Choreographer's.
    made_by = payload["agent"].get("name", "choreo")
    accepts = agent_class(cfg).loads_snapshots_of
    if made_by != cfg.agent.name and "*" not in accepts and made_by not in accepts:
        raise UserError(f"snapshot {path} is of agent={made_by}, and agent={cfg.agent.name} cannot start from it; "
                        f"fine-tune it with agent={made_by}")
    if payload.get("action_repeat") not in (None, cfg.action_repeat):
        print(f"warning: snapshot {path} was trained at action_repeat={payload['action_repeat']}, "
              f"this run uses action_repeat={cfg.action_repeat}", flush=True)
    return payload


def check_finite(metrics: dict, step: int, frame: int | None = None) -> None:
    """Stop on a non-finite loss instead of training on silently (one host sync per update)."""
    names = [key for key in metrics if key.endswith("_loss")]
    values = torch.stack([metrics[key].detach().float().reshape(()) for key in names]).cpu()
    if not bool(torch.isfinite(values).all()):
        bad = [f"{name}={float(value)}" for name, value in zip(names, values) if not torch.isfinite(value)]
        where = f"step {step}" + (f" (frame {frame})" if frame is not None else "")
        raise TrainingDiverged(f"non-finite loss at {where}: {', '.join(bad)}; "
                               f"the last good checkpoint and snapshots are kept")


class EvaluationStopped(Exception):
    """A stop signal arrived during an evaluation."""


class OnlineRunner(RunLoop):
    """Environment loop for pre-training (``phase='pretrain'``) and fine-tuning (``'finetune'``)."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path, phase: str = "pretrain"):
        super().__init__(cfg, run_dir, phase)
        self.task = resolve_task(cfg)
        self.domain = envs.domain_of(self.task)
        exorl = phase == "finetune" and cfg.from_offline and cfg.dataset == "exorl"
        task_id = cfg.task_id
        self.train_env = make_env(self.task, cfg, exorl=exorl, task_id=task_id)
        self.eval_env = make_env(self.task, cfg, exorl=exorl, task_id=task_id)
        env = self.train_env
        self.agent = build_agent(cfg, env.obs_shape, env.action_dim, self.device)
        if phase == "finetune":
            self.agent.finetune_mode()
            if cfg.snapshot_ts > 0:
                payload = load_pretrained(cfg, self.domain)
                try:
                    self.agent.init_from(payload["agent"]["modules"])
                except ValueError as error:
                    raise UserError(str(error)) from error
        set_aside_unfinished_run(self.run_dir, cfg.resume)
        self.replay = EpisodeReplay(self.run_dir / "buffer", cfg.replay.capacity, cfg.batch_size, cfg.batch_length,
                                    cfg.seed, self.device, prefetch=prefetch_batches(cfg, self.device))
        self.action_rng = np.random.default_rng(cfg.seed)
        self.snapshot_dir = Path(hydra.utils.to_absolute_path(cfg.snapshot_base_dir)) / cfg.obs_type / self.domain \
            / cfg.agent.name / str(cfg.seed)
        self.step = self.episode = self.updates = self.eval_resets = 0
        self.log_due = False
        self.episode_in_progress, self.pending_metrics = None, {}
        resumed = self.maybe_resume()
        self.check_snapshot_targets(self.snapshot_frames())
        self.logger = self.open_logger(self.task, resumed)
        show = cfg.progress
        self.progress = Progress(cfg.num_train_frames, unit="frame", desc=phase, initial=self.frame,
                                 enabled=None if show == "auto" else bool(show), every_s=cfg.progress_every_s)
        self.logger.echo = self.progress.write
        self.video = VideoRecorder(self.run_dir / "eval_video" if cfg.save_video else None, fps=20)

    @property
    def frame(self) -> int:
        return self.step * self.cfg.action_repeat

    @property
    def done_count(self) -> int:
        return self.frame

    # ------------------------------------------------------------------------------------ resuming
    def maybe_resume(self) -> dict | None:
        """Continue from the run folder's checkpoint (resume=auto), or refuse to touch it (never)."""
        found = open_checkpoint(self.run_dir, self.cfg.resume, self.phase, self.device, plain(self.cfg))
        if found is None:
            return None
        path, payload = found
        load_agent_state(self.agent, payload["agent"], path)
        self.replay.load_state(payload["replay"], self.cfg.on_bad_file)
        self.action_rng.bit_generator.state = payload["action_rng"]
        self.step, self.episode, self.updates = payload["global_step"], payload["global_episode"], payload["updates"]
        self.eval_resets, self.log_due = payload["eval_resets"], payload["log_due"]
        self.elapsed_before = payload["total_time"]
        self.episode_in_progress = payload.get("episode_in_progress")
        self.pending_metrics = payload.get("pending_metrics") or {}
        # Initial states come from each env's own generator, consumed only by resets: replay the resets
        # the interrupted run made so the next episode starts where it would have.
        for _ in range(self.episode):
            self.train_env.reset()
        self.fast_forward_eval_env(self.eval_resets)
        set_global_rng_state(payload["rng"])
        where = f"step {self.step}, episode {self.episode}" + (", mid-episode" if self.episode_in_progress else "")
        print(f"resumed from {path} at frame {self.frame} ({where})", flush=True)
        return payload

    def fast_forward_eval_env(self, resets: int) -> None:
        for _ in range(resets):
            self.eval_env.reset()

    def save_checkpoint(self, episode: dict | None = None) -> None:
        """``episode``: the loop's state inside an unfinished episode (a checkpoint a stop signal asked
        for); None at an episode end."""
        payload = self.snapshot_payload()
        payload.update(replay=self.replay.state(), action_rng=self.action_rng.bit_generator.state,
                       eval_resets=self.eval_resets, log_due=self.log_due, episode_in_progress=episode,
                       pending_metrics=self.logger.pending("train"))
        write_checkpoint(self.run_dir, payload, self.phase, self.total_time(), self.logger.wandb)
        self.checkpoint_written()

    def episode_state(self, state, meta: np.ndarray, episode_reward: float, episode_step: int,
                      snapshot_written: bool) -> dict:
        """Everything of an unfinished episode a resumed run needs to go on exactly: its rows so far,
        the agent's latent state and skill, and the loop's counters (the environment is brought back
        by replaying the rows' actions, see ``resume_episode``)."""
        latent, action = state if state is not None else ({}, None)
        return {"rows": self.replay.current_rows(), "latent": dict(latent), "action": action,
                "meta": torch.as_tensor(meta), "episode_reward": float(episode_reward),
                "episode_step": int(episode_step), "snapshot_written": bool(snapshot_written)}

    def resume_episode(self, saved: dict):
        """The unfinished episode of a checkpoint, continued: the environment is reset (the same reset
        the stopped run made) and stepped through the stored actions, which brings its simulator to the
        same state, bit for bit; every replayed observation must equal the stored one."""
        rows = saved["rows"]
        time_step = self.train_env.reset()
        differs = None
        for index in range(len(rows["reward"])):
            if index > 0:
                time_step = self.train_env.step(rows["action"][index])
            if differs is None and not np.array_equal(np.asarray(time_step["observation"]), rows["observation"][index]):
                differs = index
        if differs is not None:
            where = (f"the checkpoint in {self.run_dir} stopped mid-episode and replaying that episode's actions "
                     f"gives other observations from its step {differs} on (another machine or library version?)")
            if self.cfg.on_bad_file != "skip":
                raise UserError(f"{where}; on_bad_file=skip continues from the replayed environment (the run is "
                                f"then no longer exactly an uninterrupted one)")
            print(f"warning: {where}; continuing from the replayed environment (on_bad_file=skip)", flush=True)
        self.replay.set_current_rows(rows)
        state = None
        if saved["action"] is not None:
            state = ({key: value.to(self.device) for key, value in saved["latent"].items()},
                     saved["action"].to(self.device))
        return (time_step, state, saved["meta"].numpy(), saved["episode_reward"], saved["episode_step"],
                saved["snapshot_written"])

    def store(self, time_step: dict) -> None:
        extra = {"physics": self.train_env.physics_state()} if self.cfg.save_dataset else None
        self.replay.add(time_step, extra)

    # ---------------------------------------------------------------------------------------- loop
    def train(self) -> None:
        cfg, agent, env = self.cfg, self.agent, self.train_env
        self.threads.register()
        repeat = cfg.action_repeat
        train_until = cfg.num_train_frames // repeat
        seed_until = cfg.num_seed_frames // repeat
        random_until = seed_until if self.phase == "pretrain" else 0
        update_every = max(1, cfg.train_every_actions // repeat)
        eval_every = max(1, int(cfg.eval_every_frames) // repeat)
        log_every = max(1, cfg.log_every_frames // repeat)
        recon_every = max(1, int(cfg.recon_every_frames) // repeat)
        # The original's zero-shot recipe (num_train_frames < 1000) evaluates once at step 0.
        eval_at_start = self.phase == "finetune" and cfg.num_train_frames < 1000
        pending = [s for s in self.snapshot_frames() if s > self.frame]
        snapshot_written = False

        def begin_episode():
            time_step = env.reset()
            self.store(time_step)
            return time_step, None, agent.init_meta(), 0.0, 0

        if self.episode_in_progress is not None and self.step < train_until:
            time_step, state, meta, episode_reward, episode_step, snapshot_written = \
                self.resume_episode(self.episode_in_progress)
        else:
            time_step, state, meta, episode_reward, episode_step = begin_episode()
        self.logger.restore_pending("train", self.pending_metrics)
        last_dump = time.time()
        while self.step < train_until:
            if time_step["is_last"]:
                time_step, state, meta, episode_reward, episode_step = begin_episode()

            if (self.step > 0 and self.step % eval_every == 0) or (self.step == 0 and eval_at_start):
                if not self.evaluate_unless_stopped():
                    # Checkpointed as before the evaluation, which a resumed run makes again, whole.
                    unfinished = self.episode_state(state, meta, episode_reward, episode_step, snapshot_written)
                    self.stop_if_asked(f"frame {self.frame}, during an evaluation (made again on resume)",
                                       lambda: self.save_checkpoint(unfinished))

            if self.step < random_until:
                action = self.action_rng.uniform(-1.0, 1.0, env.action_dim).astype(np.float32)
            else:
                action, state = agent.act(time_step, meta, self.step, eval_mode=False, state=state)

            self.log_due = self.log_due or self.step % log_every == 0
            metrics = None
            if self.step >= seed_until and self.step % update_every == 0 and self.replay.can_sample():
                metrics = agent.update(self.replay.sample())
                self.updates += 1

            if (cfg.obs_type == "pixels" and self.step >= seed_until and self.step % recon_every == 0
                    and self.replay.can_sample()):
                log_openloop_video(self.logger, agent, self.replay.sample(), self.frame)

            # The action was chosen before the update and the batch drawn before this step is stored,
            # so the environment steps (and renders) while an asynchronous (CUDA) update runs; the
            # losses are read after it.
            time_step = env.step(action)
            if metrics is not None:
                check_finite(metrics, self.step, self.frame)
                if self.log_due:
                    self.logger.log_metrics(metrics, self.frame, "train")
                    self.log_due = False
            episode_reward += time_step["reward"]
            episode_step += 1
            self.store(time_step)
            self.step += 1
            self.progress.update(repeat, updates=self.updates)
            if not time_step["is_last"]:
                meta = agent.update_meta(meta, self.step)
            while pending and self.frame >= pending[0]:
                self.snapshots_written.append(self.save_snapshot(pending.pop(0)))
                snapshot_written = True
            if time_step["is_last"]:
                # Logged here, not when the next episode begins, so the run's last episode is logged too.
                self.episode += 1
                elapsed, last_dump = time.time() - last_dump, time.time()
                self.logger.log_metrics({
                    "fps": episode_step * repeat / max(elapsed, 1e-9), "total_time": self.total_time(),
                    "episode_reward": episode_reward, "episode_length": episode_step * repeat,
                    "episode": self.episode, "buffer_size": len(self.replay), "step": self.step,
                }, self.frame, "train")
                self.logger.dump(self.frame, "train")
                self.threads.rebalance()
                self.report_progress()
                if snapshot_written or self.checkpoint_due():
                    self.save_checkpoint()
                    snapshot_written = False
            if not time_step["is_last"] and self.stop is not None and self.stop.requested:
                unfinished = self.episode_state(state, meta, episode_reward, episode_step, snapshot_written)
                self.stop_if_asked(f"frame {self.frame}", lambda: self.save_checkpoint(unfinished))
            self.stop_if_asked(f"frame {self.frame}")
        if self.phase == "finetune" and cfg.save_ft_model:
            self.snapshots_written.append(save_snapshot(self.snapshot_payload(), self.run_dir / "finetuned_snapshot.pt"))
        # A finished run re-launched in the same folder resumes here and stops at once.
        self.finish(f"{self.frame} frames, {self.episode} episodes, {self.updates} updates")

    # ---------------------------------------------------------------------------------- evaluation
    def eval_episodes(self) -> list[int | None]:
        """The goal of each evaluation episode, as the environment lists them (docs/algorithm.md §11.8)."""
        return self.eval_env.evaluation_goals(self.cfg.task_id, self.cfg.num_eval_episodes)

    def run_eval_episode(self, task_id, meta, eval_mode: bool, counter: list[int], pick_skill=None
                         ) -> tuple[float, np.ndarray]:
        """One evaluation episode; ``counter`` is the evaluation's cumulative step count
        (docs/algorithm.md §10.4)."""
        env, agent = self.eval_env, self.agent
        time_step, state = env.reset(task_id=task_id), None
        self.eval_resets += 1
        if pick_skill is not None:
            meta = pick_skill(env, time_step)
        self.video.init(enabled=counter[0] == 0 and pick_skill is None)
        self.record_frame(time_step)
        total = 0.0
        while not time_step["is_last"]:
            if self.stop is not None and self.stop.requested:
                raise EvaluationStopped
            action, state = agent.act(time_step, meta, self.step, eval_mode=eval_mode, state=state)
            time_step = env.step(action)
            self.record_frame(time_step)
            total += time_step["reward"]
            counter[0] += 1
            if not time_step["is_last"] and pick_skill is None:
                meta = agent.update_meta(meta, counter[0])
        self.video.save(f"{self.frame}.mp4")
        return total, meta

    def record_frame(self, time_step: dict) -> None:
        if self.video.enabled:
            pixels = self.cfg.obs_type == "pixels"
            self.video.record(time_step["observation"] if pixels else
                              self.eval_env.render_physics(self.eval_env.physics_state()))

    def evaluate_unless_stopped(self) -> bool:
        """``evaluate``; False when a stop signal came during it. Then nothing of it is kept: the
        random generators and the evaluation environment's reset count are as before it, so the
        evaluation a resumed run makes is the one this run would have made. (A long evaluation, like
        the 100 episodes of zero-shot, would otherwise outlast a cluster's grace period.)"""
        rng, agent_rng, resets = global_rng_state(), self.agent.rng.bit_generator.state, self.eval_resets
        try:
            self.evaluate()
        except EvaluationStopped:
            set_global_rng_state(rng)
            self.agent.rng.bit_generator.state = agent_rng
            self.eval_resets = resets
            return False
        return True

    def evaluate(self) -> None:
        cfg, agent = self.cfg, self.agent
        eval_goals = bool(cfg.eval_goals)
        goal_ids = self.eval_episodes()
        returns, counter = [], [0]
        meta = agent.init_meta()
        bar = Progress(len(goal_ids), unit="episode", desc="eval", leave=False, enabled=self.progress.enabled)
        try:
            for task_id in goal_ids:
                if eval_goals:
                    meta = agent.init_meta()
                episode_return, meta = self.run_eval_episode(task_id, meta, not eval_goals, counter)
                returns.append(episode_return)
                bar.update(1)
        finally:
            bar.close()
        episodes = max(1, len(returns))
        metrics = {
            "episode_reward": sum(returns) / episodes,
            "episode_length": counter[0] * cfg.action_repeat / episodes,
            "episode": self.episode, "step": self.step, "total_time": self.total_time(),
        }
        threshold = self.eval_env.success_threshold
        if threshold is not None and (self.eval_env.goal_task or eval_goals):
            metrics["success_rate"] = float(np.mean([r > threshold for r in returns]))
        goal_skill = cfg.goal_skill
        picks_skills = agent.has_skills  # agents with skills: the goal-conditioned mode
        if eval_goals and goal_skill and goal_skill != "none" and threshold is not None and picks_skills:
            goal_returns = [self.run_eval_episode(task_id, None, False, [0], self.goal_skill_picker(goal_skill))[0]
                            for task_id in goal_ids]
            metrics["goal_success_rate"] = float(np.mean([r > threshold for r in goal_returns]))
            metrics["goal_episode_reward"] = float(np.mean(goal_returns))
        self.logger.log_metrics(metrics, self.frame, "eval")
        self.logger.dump(self.frame, "eval")

    def goal_skill_picker(self, mode: str):
        """The skill for the goal of a freshly reset env (docs/decisions.md D8), as a one-hot meta vector."""
        def pick(env, time_step: dict) -> np.ndarray:
            return self.agent.skill_for_goal(env.goal_observation(), self.cfg.goal_steps, mode, time_step)
        return pick

    # ----------------------------------------------------------------------------------- snapshots
    def snapshot_payload(self) -> dict:
        cfg = self.cfg
        return {"agent": self.agent.snapshot_state(), "global_step": self.step, "global_episode": self.episode,
                "global_frame": self.frame, "updates": self.updates, "obs_type": cfg.obs_type,
                "domain": self.domain, "task": self.task, "action_repeat": cfg.action_repeat,
                "config": plain(cfg), "run_dir": str(self.run_dir.resolve())}

    def snapshot_frames(self) -> list[int]:
        """The frames pre-training writes a snapshot at; fine-tuning writes one at the end
        (save_ft_model), never into the pre-training folders."""
        return sorted(int(s) for s in self.cfg.snapshots or []) if self.phase == "pretrain" else []

    def snapshot_path(self, frame: int) -> Path:
        return self.snapshot_dir / f"snapshot_{frame}.pt"

    def save_snapshot(self, frame: int) -> Path:
        return self.save_snapshot_file(self.snapshot_payload(), frame)
