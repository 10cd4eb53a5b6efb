"""Fine-tuning: adapt pre-trained skills to a task with the meta-controller, or evaluate them
zero-shot on goal reaching (docs/algorithm.md §8, §9, §10.4).

    python finetune.py configs=dmc_states agent=choreo task=walker_run snapshot_ts=2000000 seed=1
    python finetune.py configs=dmc_pixels task=jaco_reach_top_left snapshot_ts=2000000 num_train_frames=10 \
        num_eval_episodes=100 eval_goals=True
"""
from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from utils.errors import exit_with_one_line


@hydra.main(config_path="configs", config_name="finetune", version_base=None)
def main(cfg: DictConfig) -> None:
    from utils.runner import OnlineRunner
    run_dir = HydraConfig.get().runtime.output_dir
    exit_with_one_line(lambda: OnlineRunner(cfg, run_dir, phase="finetune").train(), run_dir)


if __name__ == "__main__":
    main()
