"""The parts of the update that fast mode records as CUDA graphs (models/cuda_graph.py) must be pure
device work: a host read inside one would stop the recording on a GPU. CI has no GPU, so the
stages run here on the CPU under a dispatch mode that lists every operation that would make the
host wait for the device."""
from __future__ import annotations

import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TINY, batch_from_rollout, compose_config, walker_rollout
from models.optim import Optimizer
from utils.runner import build_agent

aten = torch.ops.aten
# Operations whose result the host must see before it can go on.
HOST_READS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.is_nonzero.default,
              aten.equal.default, aten.masked_select.default, aten.unique_dim.default, aten._unique2.default}


class HostReads(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # Adam reads its step count on the host unless built capturable, which recording turns on
        # (models/optim.py set_capturable) and which a CPU optimiser cannot be.
        if func in HOST_READS and not any("torch/optim/" in frame.filename for frame in traceback.extract_stack()):
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))


class CheckedStages:
    """Stands in for the agent's GraphStages: runs each stage under ``HostReads``."""

    enabled = False  # the optimisers stay as on the CPU

    def __init__(self):
        self.reads: dict[str, list[str]] = {}

    def run(self, name, fn, *args):
        with HostReads() as mode:
            out = fn(*args)
        self.reads.setdefault(name, []).extend(mode.found)
        return out

    def reset(self):
        pass


@pytest.fixture(scope="module")
def batch():
    batch = batch_from_rollout(walker_rollout("states", 4 * 16), 4, 16)
    return dict(batch, reward=batch["reward"] + 1.0)  # opens the fine-tuning reward gate


def checked_agent(batch):
    cfg = compose_config(TINY)
    torch.manual_seed(0)
    agent = build_agent(cfg, (batch["observation"].shape[-1],), batch["action"].shape[-1], torch.device("cpu"))
    agent.stages = CheckedStages()
    return agent


def test_the_dispatch_check_sees_a_host_read():
    with HostReads() as mode:
        torch.ones(3).sum().item()
        bool(torch.ones(1))
    assert len(mode.found) == 2


def test_recorded_stages_never_read_tensors_on_the_host(batch):
    agent = checked_agent(batch)
    for _ in range(2):
        agent.update(batch)
        agent.update_offline(batch)
    agent.finetune_mode()
    for _ in range(2):
        agent.update(batch)
    reads = agent.stages.reads
    assert set(reads) == {"world_model", "lbs", "exploration", "skill_module", "skill_behaviour", "meta_controller"}
    assert {name: found for name, found in reads.items() if found} == {}


def test_counts_and_target_refreshes_run_outside_the_stages(batch):
    """The stages hold no update counts: the counts still advance once per update and the slow
    target still copies the critic on the first update."""
    agent = checked_agent(batch)
    before = [p.clone() for p in agent.expl_ac.target_critic.parameters()]
    agent.update(batch)
    agent.update(batch)
    assert agent.expl_ac.updates == agent.skill_ac.updates == agent.skill_module.updates == 2
    critic = list(agent.expl_ac.critic.parameters())
    target = list(agent.expl_ac.target_critic.parameters())
    assert any(not torch.equal(b, t) for b, t in zip(before, target))
    # The copy happened after the first critic step and the critic moved again in the second.
    assert any(not torch.equal(c, t) for c, t in zip(critic, target))


def test_optimiser_state_from_a_gpu_run_loads_for_the_host():
    """A snapshot written with capturable step counters (CUDA graphs) resumes on the CPU."""
    param = torch.nn.Parameter(torch.ones(3))
    saving = Optimizer("test", [param], lr=0.1)
    param.grad = None
    saving(param.pow(2).sum())
    state = saving.state_dict()
    for group in state["param_groups"]:
        group["capturable"] = True
    loading = Optimizer("test", [param], lr=0.1)
    loading.load_state_dict(state)
    assert all(not group["capturable"] for group in loading.opt.param_groups)
    assert loading.opt.state[param]["step"].device.type == "cpu"
    loading(param.pow(2).sum())
    assert float(loading.opt.state[param]["step"]) == 2.0
