"""Fine-tuning of any agent on a task from its pre-training snapshot (or from scratch with
snapshot_ts=0): Choreographer adapts its skills with the meta-controller, the exploration baselines
fine-tune a task actor-critic, dreamer learns the task; with eval_goals=True, zero-shot goal reaching
on Jaco and Meta-World (docs/algorithm.md §8, §9, §10.4).

    python finetune.py configs=dmc_states agent=choreo task=walker_run snapshot_ts=2000000 seed=1
    python finetune.py configs=dmc_pixels task=jaco_reach_top_left snapshot_ts=2000000 num_train_frames=10 \
        num_eval_episodes=100 eval_goals=True

Rerunning a command in the same run folder (hydra.run.dir=...) continues it; SIGTERM, Ctrl-C,
SIGUSR1 and SIGUSR2 stop it after the current step with a checkpoint (docs/decisions.md D32).
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from utils.settings import preflight


@hydra.main(config_path="configs", config_name="finetune", version_base=None)
def main(cfg: DictConfig) -> None:
    from utils.lifecycle import run
    run(cfg, "finetune")


if __name__ == "__main__":
    preflight("finetune")
    main()
