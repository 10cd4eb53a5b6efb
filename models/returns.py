"""Lambda-returns and the slow target critic (docs/algorithm.md §5.2, §5.3)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def lambda_return(reward: torch.Tensor, value: torch.Tensor, discount: torch.Tensor, lambda_: float
                  ) -> torch.Tensor:
    """TD(lambda) targets over time-major sequences of H+1 entries.

    R_H = v_H and R_t = r_t + g_t ((1 - lambda) v_{t+1} + lambda R_{t+1}); returns R_0..R_{H-1}
    stacked to (H, ...). The reward and discount at index H are not used.
    """
    next_values = value[1:]
    inputs = reward[:-1] + discount[:-1] * next_values * (1 - lambda_)
    ret = value[-1]
    outputs = []
    for t in reversed(range(reward.shape[0] - 1)):
        ret = inputs[t] + discount[t] * lambda_ * ret
        outputs.append(ret)
    return torch.stack(outputs[::-1], 0)


def make_target(critic: nn.Module) -> nn.Module:
    """A frozen, independently initialised copy of ``critic`` (the original's first targets come
    from a separately initialised network, docs/algorithm.md §5.3)."""
    target = copy.deepcopy(critic)
    for module in target.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return target.requires_grad_(False)


@torch.no_grad()
def update_target(target: nn.Module, critic: nn.Module, updates: int, every: int, fraction: float) -> None:
    """Called once per actor-critic update with the number of earlier updates.

    Every ``every`` updates the target moves ``fraction`` of the way to the critic; the very first
    call copies it outright.
    """
    if updates % every == 0:
        mix = 1.0 if updates == 0 else fraction
        torch._foreach_lerp_(list(target.parameters()), list(critic.parameters()), mix)
