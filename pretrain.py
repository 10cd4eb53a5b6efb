"""Reward-free pre-training: the world model learns from LBS exploration while skills are
discovered in imagination (spec agent.md 11.1).

    python pretrain.py configs=dmc_pixels agent=choreo domain=walker
"""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from utils.errors import UserError
from utils.snapshot import SnapshotError


@hydra.main(config_path="configs", config_name="pretrain", version_base=None)
def main(cfg: DictConfig) -> None:
    from utils.runner import OnlineRunner, TrainingDiverged
    try:
        runner = OnlineRunner(cfg, HydraConfig.get().runtime.output_dir)
        runner.train()
    except (UserError, SnapshotError, TrainingDiverged) as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # disk full, permissions: say which file, keep the last good ones
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
