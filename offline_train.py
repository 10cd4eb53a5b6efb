"""Offline pre-training from an ExORL-layout dataset: the world model, the VQ skill module and the
skill actor-critic learn from fixed data, no exploration (spec agent.md 8.2, 11.4).

    python offline_train.py configs=dmc_states agent=choreo dataset=exorl collection_method=rnd domain=walker seed=1
    python offline_train.py ... dataset_dir=$MYPATH/exorl/walker/rnd/buffer
"""
from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from utils.errors import UserError
from utils.snapshot import SnapshotError


@hydra.main(config_path="configs", config_name="offline_train", version_base=None)
def main(cfg: DictConfig) -> None:
    from utils.offline import OfflineRunner
    from utils.runner import TrainingDiverged
    try:
        runner = OfflineRunner(cfg, HydraConfig.get().runtime.output_dir)
        runner.train()
    except (UserError, SnapshotError, TrainingDiverged) as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # disk full, permissions: say which file, keep the last good ones
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
