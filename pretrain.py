"""Reward-free pre-training: the world model learns from LBS exploration while skills are
discovered in imagination (docs/algorithm.md §10.3).

    python pretrain.py configs=dmc_pixels agent=choreo domain=walker
"""
from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from utils.errors import exit_with_one_line


@hydra.main(config_path="configs", config_name="pretrain", version_base=None)
def main(cfg: DictConfig) -> None:
    from utils.runner import OnlineRunner
    run_dir = HydraConfig.get().runtime.output_dir
    exit_with_one_line(lambda: OnlineRunner(cfg, run_dir).train(), run_dir)


if __name__ == "__main__":
    main()
