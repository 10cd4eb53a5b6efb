"""Reward-free pre-training of any agent of configs/agent/ in the environment: the world model learns
from the agent's own exploration, and what the agent learns in imagination (Choreographer: LBS
exploration and skills; the baselines: their exploration actor) trains beside it
(docs/algorithm.md §10.3). Agents that need a task reward (dreamer) are refused.

    python pretrain.py configs=dmc_pixels agent=choreo domain=walker

Rerunning a command in the same run folder (hydra.run.dir=...) continues it; SIGTERM, Ctrl-C,
SIGUSR1 and SIGUSR2 stop it after the current step with a checkpoint (docs/decisions.md D32).
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from utils.settings import preflight


@hydra.main(config_path="configs", config_name="pretrain", version_base=None)
def main(cfg: DictConfig) -> None:
    from utils.lifecycle import run
    run(cfg, "pretrain")


if __name__ == "__main__":
    preflight("pretrain")
    main()
