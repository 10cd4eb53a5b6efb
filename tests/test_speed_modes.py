"""The fast mode is a faster route to the same numbers: ``mode=fast`` and ``mode=eager`` give the
same losses on the same batch, in fp32 and in bf16 (issue "Speed")."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from conftest import TINY, batch_from_rollout, compose_config, walker_rollout
from utils.runner import build_agent

# fp32: only round-off differs (the fused particle-entropy distances, the prior head batched over all
# steps; ~1e-6). bf16: the same round-off can move a value across a bf16 rounding step (8 bits of
# mantissa, 0.4%; at 0.04-0.1 a step is 2.4e-4-4.9e-4), which reaches the losses and gradient norms
# by a few steps.
TOLERANCE = {32: dict(rel=1e-4, abs=1e-5), 16: dict(rel=1e-2, abs=2e-3)}


@pytest.fixture(scope="module")
def batch():
    return batch_from_rollout(walker_rollout("states", 4 * 16), 4, 16)


def losses(mode: str, precision: int, batch: dict, finetune: bool, extra: tuple[str, ...] = ()) -> dict[str, float]:
    cfg = compose_config(TINY + [f"mode={mode}", f"precision={precision}", *extra])
    torch.manual_seed(0)
    agent = build_agent(cfg, (batch["observation"].shape[-1],), batch["action"].shape[-1], torch.device("cpu"))
    if finetune:
        agent.finetune_mode()
    torch.manual_seed(1)
    first = agent.update(batch)
    second = agent.update(batch)  # after a step of every optimiser, so the parameters matched too
    return {f"{key}@{i}": float(value) for i, metrics in enumerate((first, second)) for key, value in metrics.items()}


@pytest.mark.parametrize("precision", [32, 16])
@pytest.mark.parametrize("finetune", [False, True], ids=["pretrain", "finetune"])
def test_fast_and_eager_give_the_same_losses(batch, precision, finetune):
    if finetune:
        batch = dict(batch, reward=batch["reward"] + 1.0)  # opens the reward gate, so the meta-controller trains
    eager = losses("eager", precision, batch, finetune)
    fast = losses("fast", precision, batch, finetune)
    assert eager.keys() == fast.keys()
    checked = [key for key in eager if "loss" in key or "ent" in key or "reward" in key]
    assert len(checked) >= (8 if finetune else 20)
    for key in eager:
        assert fast[key] == pytest.approx(eager[key], **TOLERANCE[precision]), key


@pytest.mark.parametrize("finetune", [False, True], ids=["pretrain", "finetune"])
def test_compiled_steps_give_the_same_losses(batch, finetune, recwarn):
    """compile=true (torch.compile of the posterior and imagination steps, torch's own random draws)."""
    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("g++ is not installed: torch.compile's CPU backend builds its kernels with it (apt-get install g++)")
    if finetune:
        batch = dict(batch, reward=batch["reward"] + 1.0)
    eager = losses("eager", 32, batch, finetune)
    compiled = losses("fast", 32, batch, finetune, ("compile=true",))
    assert not [str(w.message) for w in recwarn if "could not be compiled" in str(w.message)]
    assert eager.keys() == compiled.keys()
    for key in eager:
        assert compiled[key] == pytest.approx(eager[key], **TOLERANCE[32]), key


@pytest.mark.parametrize("mode", ["fast", "eager"])
@pytest.mark.parametrize("finetune", [False, True], ids=["pretrain", "finetune"])
def test_low_memory_gives_the_same_losses(batch, mode, finetune):
    if finetune:
        batch = dict(batch, reward=batch["reward"] + 1.0)
    stored = losses(mode, 32, batch, finetune)
    recomputed = losses(mode, 32, batch, finetune, ("low_memory=true",))
    assert stored.keys() == recomputed.keys()
    for key in stored:
        # The same random draws are repeated when a step is recomputed; only the summation order of
        # the chunked heads differs (gradient norms move by up to ~1e-4 of themselves).
        assert recomputed[key] == pytest.approx(stored[key], **TOLERANCE[32]), key


def saved_for_backward_mb(low_memory: bool, batch: dict) -> float:
    """Megabytes autograd keeps for the backward pass of one exploration actor-critic update."""
    cfg = compose_config(TINY + [f"low_memory={low_memory}", "imag_horizon=15"])
    torch.manual_seed(0)
    agent = build_agent(cfg, (batch["observation"].shape[-1],), batch["action"].shape[-1], torch.device("cpu"))
    post, _, _ = agent.update_world_model(batch)
    start = agent.imagination_starts(post)
    storages = {}

    def keep(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        agent.update_exploration(start)
    return sum(storages.values()) / 2**20


def test_low_memory_keeps_far_less_for_the_backward_pass(batch):
    stored, recomputed = saved_for_backward_mb(False, batch), saved_for_backward_mb(True, batch)
    assert recomputed < stored / 3, (stored, recomputed)


def test_unknown_mode_is_refused():
    from utils.errors import UserError
    cfg = compose_config(TINY + ["mode=quick"])
    with pytest.raises(UserError, match="mode='quick' is not supported; valid: fast, eager"):
        build_agent(cfg, (24,), 6, torch.device("cpu"))
    from utils.settings import check_config
    with pytest.raises(UserError, match="mode='quick' is not supported; valid: fast, eager"):
        check_config(cfg)


def test_pixel_decoder_first_layer_as_a_matrix_product_matches_the_convolution():
    from models.conv import ConvDecoder
    torch.manual_seed(0)
    decoder = ConvDecoder(40, depth=4)
    feat = torch.randn(2, 3, 40)
    results = []
    for as_matmul in (False, True):
        decoder.first_as_matmul = as_matmul
        decoder.zero_grad()
        image = decoder(feat).mean
        image.pow(2).mean().backward()
        results.append((image.detach(), decoder.net[0].weight.grad.clone(), decoder.net[0].bias.grad.clone()))
    assert results[0][0].shape == (2, 3, 3, 64, 64)
    for conv, matmul in zip(*results):
        torch.testing.assert_close(matmul, conv, rtol=1e-5, atol=1e-6)
