"""Offline pre-training of any agent from an ExORL-layout dataset, no environment steps: the world
model and what the agent learns in imagination train on fixed data (Choreographer: the VQ skills and
the skill actor-critic; docs/algorithm.md §10.2, §10.5). An agent that needs a task reward (dreamer)
trains on the dataset's rewards, and the run says so in its first lines.

    python offline_train.py configs=dmc_states agent=choreo dataset=exorl collection_method=rnd domain=walker seed=1
    python offline_train.py ... dataset_dir=$MYPATH/exorl/walker/rnd/buffer

Rerunning a command in the same run folder (hydra.run.dir=...) continues it; SIGTERM, Ctrl-C,
SIGUSR1 and SIGUSR2 stop it after the current update with a checkpoint (docs/decisions.md D32).
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from utils.settings import preflight


@hydra.main(config_path="configs", config_name="offline_train", version_base=None)
def main(cfg: DictConfig) -> None:
    from utils.lifecycle import run
    run(cfg, "offline")


if __name__ == "__main__":
    preflight("offline_train")
    main()
