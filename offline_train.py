"""Offline pre-training from an ExORL-layout dataset: the world model, the VQ skill module and the
skill actor-critic learn from fixed data, no exploration (docs/algorithm.md §10.2, §10.5).

    python offline_train.py configs=dmc_states agent=choreo dataset=exorl collection_method=rnd domain=walker seed=1
    python offline_train.py ... dataset_dir=$MYPATH/exorl/walker/rnd/buffer
"""
from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from utils.errors import exit_with_one_line


@hydra.main(config_path="configs", config_name="offline_train", version_base=None)
def main(cfg: DictConfig) -> None:
    from utils.offline import OfflineRunner
    run_dir = HydraConfig.get().runtime.output_dir
    exit_with_one_line(lambda: OfflineRunner(cfg, run_dir).train(), run_dir)


if __name__ == "__main__":
    main()
