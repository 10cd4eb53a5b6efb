"""Output distributions (docs/algorithm.md §4.1) written out by hand.

torch.distributions validates arguments and builds objects on every call; these classes do the
few operations the agent needs and nothing else, which keeps the imagination loops lean.
"""
from __future__ import annotations

import math

import torch

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class UnitNormal:
    """Normal(mean, 1) independent over the last ``event_dims`` axes (the 'mse' head)."""

    def __init__(self, mean: torch.Tensor, event_dims: int = 1):
        self.mean = mean
        self.event_dims = event_dims

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        per_element = -0.5 * (value - self.mean) ** 2 - _LOG_SQRT_2PI
        return per_element.sum(dim=tuple(range(-self.event_dims, 0)))


class ClampedNormal:
    """The original's 'trunc_normal': a Normal whose samples are clamped to (-1, 1).

    Sampling is reparameterised and the clamp passes gradients straight through. ``log_prob``
    and ``entropy`` are those of the unclamped Normal, as in the original (docs/algorithm.md §4.1).
    """

    clamp_eps = 1e-6

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        self.mean = mean
        self.std = std

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self) -> torch.Tensor:
        raw = self.mean + self.std * torch.randn_like(self.mean)
        limit = 1 - self.clamp_eps
        clamped = raw.clamp(-limit, limit)
        # Value of the clamp, gradient of the identity (written so float32 rounding keeps the clamp).
        return clamped.detach() + (raw - raw.detach())

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        per_dim = -0.5 * ((value - self.mean) / self.std) ** 2 - self.std.log() - _LOG_SQRT_2PI
        return per_dim.sum(-1)

    def entropy(self) -> torch.Tensor:
        return (0.5 + _LOG_SQRT_2PI + self.std.log()).sum(-1)


class OneHotCategorical:
    """Categorical over the last axis with straight-through one-hot samples.

    Used for the RSSM's stochastic state (independent over the second-last axis, see
    ``kl_categorical``) and for the meta-controller's skill choice.
    """

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(-1)

    def sample(self) -> torch.Tensor:
        probs = self.probs
        # Inverse-CDF draw: far cheaper than torch.multinomial for many small categoricals.
        uniform = torch.rand(probs.shape[:-1] + (1,), device=probs.device, dtype=probs.dtype)
        index = (probs.detach().cumsum(-1) < uniform).sum(-1).clamp(max=probs.shape[-1] - 1)
        return one_hot(index, probs) + probs - probs.detach()

    def mode(self) -> torch.Tensor:
        # The straight-through term uses the logits, not the probabilities (docs/algorithm.md §4.1).
        index = self.logits.argmax(-1)
        return one_hot(index, self.logits) + self.logits - self.logits.detach()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        index = value.argmax(-1, keepdim=True)
        return self.logits.log_softmax(-1).gather(-1, index).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        log_probs = self.logits.log_softmax(-1)
        return -(log_probs.exp() * log_probs).sum(-1)


def one_hot(index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One-hot rows (..., K) shaped and typed like ``like`` for ``index`` (...,). A scatter rather
    than ``F.one_hot``, whose range check reads the indices on the host on a CPU, so the check that
    recorded stages never do (tests/test_graph_stages.py) can run there."""
    return torch.zeros_like(like).scatter_(-1, index.unsqueeze(-1), 1.0)


def kl_categorical(lhs_logits: torch.Tensor, rhs_logits: torch.Tensor) -> torch.Tensor:
    """KL(lhs || rhs) of independent categoricals ``(..., variables, classes)``, summed over variables."""
    lhs_log = lhs_logits.log_softmax(-1)
    rhs_log = rhs_logits.log_softmax(-1)
    return (lhs_log.exp() * (lhs_log - rhs_log)).sum((-2, -1))


def entropy_categorical(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of independent categoricals ``(..., variables, classes)``, summed over variables."""
    log_probs = logits.log_softmax(-1)
    return -(log_probs.exp() * log_probs).sum((-2, -1))
