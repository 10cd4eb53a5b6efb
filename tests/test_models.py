"""Unit tests of the numerical building blocks in ``models/`` against hand-computed values
(docs/algorithm.md §3.2, §3.4, §4, §5). Small tensors, real numbers, no mocks.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.distributions import ClampedNormal, OneHotCategorical, kl_categorical  # noqa: E402
from models.mlp import ActorHead  # noqa: E402
from models.normalise import StreamNorm  # noqa: E402
from models.optim import Optimizer  # noqa: E402
from models.returns import lambda_return, make_target, update_target  # noqa: E402
from models.rssm import RSSM  # noqa: E402


# ----------------------------------------------------------------------------- helpers


def softmax_py(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def kl_py(lhs: list[list[float]], rhs: list[list[float]]) -> float:
    """KL(lhs || rhs) for independent categoricals given as logits, summed over variables."""
    total = 0.0
    for lhs_row, rhs_row in zip(lhs, rhs):
        p, q = softmax_py(lhs_row), softmax_py(rhs_row)
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return total


POST = [[1.0, 0.0, -1.0], [0.5, 2.0, -0.3]]
PRIOR = [[0.0, 0.2, 0.1], [-1.0, 1.0, 0.0]]


def tiny_rssm() -> RSSM:
    return RSSM(action_dim=1, embed_dim=1, deter=4, hidden=4, stoch=2, discrete=3)


def kl_pair(requires_grad: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    post = torch.tensor([POST], dtype=torch.float64, requires_grad=requires_grad)   # (1, 2, 3)
    prior = torch.tensor([PRIOR], dtype=torch.float64, requires_grad=requires_grad)
    return post, prior


# ------------------------------------------------------------------- 1. KL balancing


def test_kl_categorical_matches_hand_computation():
    post, prior = kl_pair(requires_grad=False)
    expected = kl_py(POST, PRIOR)
    assert expected == pytest.approx(0.4248242528, abs=1e-9)  # value fixed by the chosen logits
    value = kl_categorical(post, prior)
    assert value.shape == (1,)
    assert value.item() == pytest.approx(expected, rel=1e-12)
    # Not symmetric, and zero against itself.
    assert kl_categorical(prior, post).item() == pytest.approx(kl_py(PRIOR, POST), rel=1e-12)
    assert kl_categorical(prior, post).item() != pytest.approx(expected, rel=1e-3)
    assert kl_categorical(post, post).item() == pytest.approx(0.0, abs=1e-15)


def test_kl_loss_value_and_gradient_split_free_below_kl():
    rssm = tiny_rssm()
    kl_value = kl_py(POST, PRIOR)
    free = 0.3
    assert free < kl_value
    post, prior = kl_pair()
    loss, per_step = rssm.kl_loss({"logit": post}, {"logit": prior}, balance=0.8, free=free)
    # Both balanced terms have the value of the plain KL, weighted 0.2 + 0.8.
    assert loss.item() == pytest.approx(0.2 * kl_value + 0.8 * kl_value, rel=1e-12)
    assert per_step.shape == (1,)
    assert per_step.item() == pytest.approx(kl_value, rel=1e-12)
    loss.backward()

    ref_post, ref_prior = kl_pair()
    kl_categorical(ref_post, ref_prior).sum().backward()
    assert ref_post.grad.abs().sum() > 1e-3 and ref_prior.grad.abs().sum() > 1e-3
    torch.testing.assert_close(post.grad, 0.2 * ref_post.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(prior.grad, 0.8 * ref_prior.grad, rtol=1e-10, atol=1e-14)


def test_kl_loss_per_step_target_only_trains_posterior():
    rssm = tiny_rssm()
    post, prior = kl_pair()
    _, per_step = rssm.kl_loss({"logit": post}, {"logit": prior}, balance=0.8, free=1.0)
    per_step.sum().backward()
    ref_post, ref_prior = kl_pair()
    kl_categorical(ref_post, ref_prior).sum().backward()
    torch.testing.assert_close(post.grad, ref_post.grad)
    assert prior.grad is None or torch.count_nonzero(prior.grad) == 0


def test_kl_loss_free_nats_above_kl_gives_free_value_and_zero_gradients():
    rssm = tiny_rssm()
    kl_value = kl_py(POST, PRIOR)
    free = 1.0
    assert free > kl_value
    post, prior = kl_pair()
    loss, per_step = rssm.kl_loss({"logit": post}, {"logit": prior}, balance=0.8, free=free)
    assert loss.item() == pytest.approx(0.2 * free + 0.8 * free, rel=1e-12)
    assert per_step.item() == pytest.approx(kl_value, rel=1e-12)  # the LBS target is unclipped
    loss.backward()
    for grad in (post.grad, prior.grad):
        assert grad is None or torch.count_nonzero(grad) == 0


def test_kl_loss_free_nats_applied_after_averaging():
    """Free nats clip the mean over (b, t), not every step: with free between the smallest
    per-step KL and the mean KL the loss is exactly the mean KL."""
    rssm = tiny_rssm()
    gen = torch.Generator().manual_seed(3)
    post = (2 * torch.randn(2, 3, 2, 3, generator=gen, dtype=torch.float64)).requires_grad_(True)
    prior = (2 * torch.randn(2, 3, 2, 3, generator=gen, dtype=torch.float64)).requires_grad_(True)
    per_step_ref = [[kl_py(post[b, t].tolist(), prior[b, t].tolist()) for t in range(3)] for b in range(2)]
    flat = [v for row in per_step_ref for v in row]
    mean_kl = sum(flat) / len(flat)
    free = (min(flat) + mean_kl) / 2
    assert min(flat) < free < mean_kl
    loss, per_step = rssm.kl_loss({"logit": post}, {"logit": prior}, balance=0.8, free=free)
    torch.testing.assert_close(per_step.detach(), torch.tensor(per_step_ref, dtype=torch.float64))
    assert loss.item() == pytest.approx(mean_kl, rel=1e-12)
    clipped_per_step = sum(max(v, free) for v in flat) / len(flat)
    assert clipped_per_step > mean_kl + 1e-6  # the two conventions really differ here
    # Mean above free, so the gradients are the weighted mean-KL gradients.
    loss.backward()
    ref_post, ref_prior = post.detach().clone().requires_grad_(True), prior.detach().clone().requires_grad_(True)
    kl_categorical(ref_post, ref_prior).mean().backward()
    torch.testing.assert_close(post.grad, 0.2 * ref_post.grad)
    torch.testing.assert_close(prior.grad, 0.8 * ref_prior.grad)


# ------------------------------------------------------------------------ 2. lambda-return


def lambda_return_py(reward, value, discount, lam):
    """Plain-Python float64 recursion of docs/algorithm.md §5.2 for lists indexed [t][n]."""
    steps, count = len(reward), len(reward[0])
    horizon = steps - 1
    out = [[0.0] * count for _ in range(horizon)]
    for n in range(count):
        ret = value[horizon][n]
        for t in reversed(range(horizon)):
            ret = reward[t][n] + discount[t][n] * ((1 - lam) * value[t + 1][n] + lam * ret)
            out[t][n] = ret
    return out


def random_sequences(horizon: int = 6, count: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    reward = torch.randn(horizon + 1, count, generator=gen, dtype=torch.float64)
    value = torch.randn(horizon + 1, count, generator=gen, dtype=torch.float64)
    discount = 0.5 + 0.5 * torch.rand(horizon + 1, count, generator=gen, dtype=torch.float64)
    return reward, value, discount


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.95, 1.0])
def test_lambda_return_matches_python_recursion(lam):
    reward, value, discount = random_sequences()
    result = lambda_return(reward, value, discount, lam)
    assert result.shape == (6, 4)
    expected = torch.tensor(lambda_return_py(reward.tolist(), value.tolist(), discount.tolist(), lam),
                            dtype=torch.float64)
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)


def test_lambda_return_lambda_zero_is_one_step_td():
    reward, value, discount = random_sequences(seed=1)
    result = lambda_return(reward, value, discount, 0.0)
    expected = reward[:-1] + discount[:-1] * value[1:]
    torch.testing.assert_close(result, expected, rtol=1e-12, atol=1e-12)


def test_lambda_return_lambda_one_is_monte_carlo_with_bootstrap():
    reward, value, discount = random_sequences(seed=2)
    horizon = reward.shape[0] - 1
    result = lambda_return(reward, value, discount, 1.0)
    r, v, g = reward.tolist(), value.tolist(), discount.tolist()
    for t in range(horizon):
        for n in range(reward.shape[1]):
            total, running = 0.0, 1.0
            for i in range(t, horizon):
                total += running * r[i][n]
                running *= g[i][n]
            total += running * v[horizon][n]
            assert result[t, n].item() == pytest.approx(total, rel=1e-12, abs=1e-12)


def test_lambda_return_ignores_last_reward_and_discount():
    reward, value, discount = random_sequences(seed=4)
    base = lambda_return(reward, value, discount, 0.95)
    reward[-1] += 100.0
    discount[-1] = 0.0
    torch.testing.assert_close(lambda_return(reward, value, discount, 0.95), base)


# ---------------------------------------------------------------- 5. output distributions


def test_clamped_normal_samples_stay_inside_open_interval_in_actor_range():
    """Means in (-1, 1) (tanh) and the widest std 2.1: the reachable range of ActorHead."""
    torch.manual_seed(0)
    mean = torch.tensor([[0.999, -0.999, 0.0, 0.5]]).repeat(5000, 1)
    std = torch.full_like(mean, 2.1)
    sample = ClampedNormal(mean, std).sample()
    assert sample.shape == mean.shape
    assert (sample < 1).all() and (sample > -1).all()
    assert sample.max().item() == pytest.approx(1 - 1e-6, abs=2e-7)  # the limit is hit
    assert sample.min().item() == pytest.approx(-1 + 1e-6, abs=2e-7)
    inside = (sample.abs() < 0.999)
    assert inside.float().mean() > 0.3  # and most samples are not clamped at all


def test_clamped_normal_samples_stay_inside_open_interval_for_huge_means():
    torch.manual_seed(0)
    mean = torch.tensor([[50.0, -50.0, 0.0, 0.999]]).repeat(500, 1)
    std = torch.full_like(mean, 2.1)
    sample = ClampedNormal(mean, std).sample()
    assert (sample < 1).all() and (sample > -1).all()
    assert torch.equal(sample[:, 0], torch.full((500,), 1 - 1e-6))
    assert torch.equal(sample[:, 1], torch.full((500,), -(1 - 1e-6)))


def test_clamped_normal_straight_through_gradient_is_one_even_when_clamped():
    torch.manual_seed(1)
    mean = torch.tensor([[50.0, -50.0, 3.0, 0.0, 0.3]], requires_grad=True)
    std = torch.full((1, 5), 0.5, requires_grad=True)
    sample = ClampedNormal(mean, std).sample()
    assert 1 - 3e-6 < sample[0, 2].item() < 1  # clamped (raw is about 3)
    sample.sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones(1, 5))
    # Reparameterised: d sample / d std = the standard-normal noise, also through the clamp.
    noise = (sample.detach() - mean.detach()) / std.detach()
    torch.testing.assert_close(std.grad[:, 3:], noise[:, 3:])
    assert (std.grad[0, :3].abs() > 0).all()


def test_clamped_normal_log_prob_and_entropy_are_untruncated_normal():
    gen = torch.Generator().manual_seed(2)
    mean = torch.rand(5, 3, generator=gen) * 2 - 1
    std = 0.1 + 2 * torch.rand(5, 3, generator=gen)
    value = torch.rand(5, 3, generator=gen) * 2 - 1
    dist = ClampedNormal(mean, std)
    reference = torch.distributions.Normal(mean, std)
    torch.testing.assert_close(dist.log_prob(value), reference.log_prob(value).sum(-1))
    torch.testing.assert_close(dist.entropy(), reference.entropy().sum(-1))
    # Outside (-1, 1) too: no truncation correction anywhere.
    outside = torch.full((5, 3), 1.7)
    torch.testing.assert_close(dist.log_prob(outside), reference.log_prob(outside).sum(-1))
    assert torch.equal(dist.mode(), mean)


def test_actor_head_mean_is_tanh_and_std_in_bounds():
    torch.manual_seed(3)
    head = ActorHead(in_dim=5, action_dim=3, layers=2, units=16, norm="none", min_std=0.1)
    x = torch.randn(64, 5)
    dist = head(x)
    hidden = head.trunk(x)
    torch.testing.assert_close(dist.mean, torch.tanh(head.mean(hidden)))
    torch.testing.assert_close(dist.std, 2 * torch.sigmoid(head.std(hidden) / 2) + 0.1)
    assert (dist.mean.abs() < 1).all()
    assert (dist.std > 0.1).all() and (dist.std < 2.1).all()
    # Saturated raw outputs reach (but never leave) the bounds.
    with torch.no_grad():
        head.std.bias.fill_(1e4)
        assert torch.allclose(head(x).std, torch.full((64, 3), 2.1))
        head.std.bias.fill_(-1e4)
        assert torch.allclose(head(x).std, torch.full((64, 3), 0.1))


def test_onehot_sample_is_one_hot_with_straight_through_gradient():
    torch.manual_seed(4)
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0]], requires_grad=True)
    dist = OneHotCategorical(logits)
    sample = dist.sample()
    values = sample.detach()
    assert set(values.flatten().tolist()) <= {0.0, 1.0}
    assert values.sum(-1).tolist() == [1.0]
    weight = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    (sample * weight).sum().backward()
    reference_logits = logits.detach().clone().requires_grad_(True)
    (reference_logits.softmax(-1) * weight).sum().backward()
    assert logits.grad.abs().sum() > 1e-3
    torch.testing.assert_close(logits.grad, reference_logits.grad)


def test_onehot_empirical_frequencies_match_probabilities():
    torch.manual_seed(5)
    logits = torch.tensor([0.5, -0.5, 1.5, 0.0, -30.0])
    probs = logits.softmax(-1)
    samples = OneHotCategorical(logits.expand(4000, 5)).sample()
    assert torch.equal(samples.sum(-1), torch.ones(4000))
    freq = samples.mean(0)
    assert (freq - probs).abs().max().item() < 0.03
    assert freq[4].item() == 0.0  # probability ~1e-14


def test_onehot_mode_and_log_prob():
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.0], [4.0, 1.0, 0.0, 0.5]], requires_grad=True)
    dist = OneHotCategorical(logits)
    mode = dist.mode()
    torch.testing.assert_close(mode.detach(), torch.tensor([[0.0, 0, 1, 0], [1, 0, 0, 0]]))
    # Straight-through term uses the logits (docs/algorithm.md §4.1): d mode / d logits = identity.
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.0, 1.0, 2.0]])
    (mode * weight).sum().backward()
    torch.testing.assert_close(logits.grad, weight)

    log_softmax = logits.detach().log_softmax(-1)
    one_hot = torch.tensor([[0.0, 1, 0, 0], [0, 0, 0, 1]])
    torch.testing.assert_close(dist.log_prob(one_hot).detach(), torch.stack([log_softmax[0, 1], log_softmax[1, 3]]))
    soft = torch.tensor([[0.1, 0.2, 0.6, 0.1], [0.5, 0.3, 0.1, 0.1]])  # argmax 2 and 0
    torch.testing.assert_close(dist.log_prob(soft).detach(), torch.stack([log_softmax[0, 2], log_softmax[1, 0]]))
    probs = log_softmax.exp()
    torch.testing.assert_close(dist.entropy().detach(), -(probs * log_softmax).sum(-1))


# ------------------------------------------------------------------ 7. optimiser wrapper


def test_optimizer_clips_gradient_and_reports_pre_clip_norm():
    param = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = Optimizer("toy", [param], lr=1.0, clip=1.0, wd=0.0, opt="sgd")
    loss = (torch.tensor([3.0, 4.0]) * param).sum()  # gradient (3, 4), norm 5
    metrics = opt(loss)
    assert set(metrics) == {"toy_loss", "toy_grad_norm"}
    assert metrics["toy_loss"].item() == pytest.approx(11.0)
    assert metrics["toy_grad_norm"].item() == pytest.approx(5.0)
    # Clipped gradient (0.6, 0.8) applied with lr 1.
    torch.testing.assert_close(param.detach(), torch.tensor([1.0 - 0.6, 2.0 - 0.8]))


def test_optimizer_leaves_small_gradients_unclipped():
    param = nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = Optimizer("toy", [param], lr=0.5, clip=100.0, wd=0.0, opt="sgd")
    metrics = opt((torch.tensor([3.0, 4.0]) * param).sum())
    assert metrics["toy_grad_norm"].item() == pytest.approx(5.0)
    torch.testing.assert_close(param.detach(), torch.tensor([1.0 - 1.5, 2.0 - 2.0]))


def test_optimizer_decoupled_weight_decay_with_zero_gradient():
    param = nn.Parameter(torch.tensor([1.0, -2.0, 4.0]))
    opt = Optimizer("toy", [param], lr=1.0, clip=100.0, wd=0.1, opt="sgd")
    opt((0 * param).sum())
    torch.testing.assert_close(param.detach(), torch.tensor([0.9, -1.8, 3.6]))
    # Independent of the learning rate, and also with Adam (zero gradient -> zero Adam step).
    param2 = nn.Parameter(torch.tensor([1.0, -2.0, 4.0]))
    opt2 = Optimizer("toy", [param2], lr=1e-3, eps=1e-5, clip=100.0, wd=0.1, opt="adam")
    opt2((0 * param2).sum())
    torch.testing.assert_close(param2.detach(), torch.tensor([0.9, -1.8, 3.6]))


def test_optimizer_weight_decay_is_applied_before_the_step():
    param = nn.Parameter(torch.tensor([2.0]))
    opt = Optimizer("toy", [param], lr=1.0, clip=100.0, wd=0.5, opt="sgd")
    opt(3.0 * param.sum())  # gradient 3
    # before the step: 2 * 0.5 - 3 = -2 ; after the step it would be (2 - 3) * 0.5 = -0.5
    assert param.item() == pytest.approx(-2.0)


def test_optimizer_rejects_unknown_name_and_empty_params():
    with pytest.raises(ValueError, match="unknown optimiser"):
        Optimizer("toy", [nn.Parameter(torch.zeros(1))], lr=1.0, opt="rmsprop")
    with pytest.raises(ValueError, match="no parameters"):
        Optimizer("toy", [], lr=1.0)


# ---------------------------------------------------------------------- 8. StreamNorm


def test_streamnorm_momentum_one_is_identity():
    norm = StreamNorm(momentum=1.0, scale=1.0, eps=1e-8)
    reward = torch.tensor([[3.0, -7.0], [0.5, 12.0]])
    for _ in range(3):
        out, metrics = norm(reward.clone(), prefix="skill_reward")
        torch.testing.assert_close(out, reward / (1 + 1e-8))
        assert norm.mag.item() == 1.0
    assert set(metrics) == {"skill_reward_mean", "skill_reward_std", "skill_reward_normed_mean",
                            "skill_reward_normed_std"}


def test_streamnorm_momentum_half_follows_formula():
    norm = StreamNorm(momentum=0.5, scale=2.0, eps=1e-8)
    r1 = torch.tensor([1.0, -3.0, 2.0, 6.0])          # mean |r| = 3
    r2 = torch.tensor([-10.0, 10.0, 4.0, 0.0])        # mean |r| = 6
    out1, metrics1 = norm(r1.clone())
    mag1 = 0.5 * 1.0 + 0.5 * 3.0                      # 2
    assert norm.mag.item() == pytest.approx(mag1)
    torch.testing.assert_close(out1, 2.0 * r1 / (mag1 + 1e-8))
    assert metrics1["reward_mean"].item() == pytest.approx(1.5)
    assert metrics1["reward_std"].item() == pytest.approx(r1.std().item())
    assert metrics1["reward_normed_mean"].item() == pytest.approx(1.5)
    out2, _ = norm(r2.clone())
    mag2 = 0.5 * mag1 + 0.5 * 6.0                     # 4
    assert norm.mag.item() == pytest.approx(mag2)
    torch.testing.assert_close(out2, 2.0 * r2 / (mag2 + 1e-8))


# ----------------------------------------------------------------- 8. slow target critic


def test_make_target_is_independent_frozen_copy():
    torch.manual_seed(6)
    critic = nn.Sequential(nn.Linear(3, 4), nn.ELU(), nn.Linear(4, 1))
    target = make_target(critic)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(p.requires_grad for p in critic.parameters())
    for p, q in zip(critic.parameters(), target.parameters()):
        assert p.shape == q.shape and not torch.equal(p, q)
        assert p.data_ptr() != q.data_ptr()


def test_update_target_first_call_copies_then_every_n():
    torch.manual_seed(7)
    critic = nn.Sequential(nn.Linear(3, 2), nn.ELU(), nn.Linear(2, 1))
    target = make_target(critic)

    def same():
        return all(torch.equal(p, q) for p, q in zip(critic.parameters(), target.parameters()))

    assert not same()
    update_target(target, critic, updates=0, every=3, fraction=1.0)
    assert same()
    history = []
    for updates in range(1, 7):
        with torch.no_grad():
            for p in critic.parameters():
                p.add_(1.0)
        update_target(target, critic, updates=updates, every=3, fraction=1.0)
        history.append(same())
    assert history == [False, False, True, False, False, True]


def test_update_target_fraction_mixes_after_first_copy():
    critic = nn.Sequential(nn.Linear(1, 1))
    target = make_target(critic)
    with torch.no_grad():
        critic[0].weight.fill_(2.0)
        critic[0].bias.fill_(-1.0)
    update_target(target, critic, updates=0, every=2, fraction=0.25)  # first call copies outright
    assert target[0].weight.item() == 2.0 and target[0].bias.item() == -1.0
    with torch.no_grad():
        critic[0].weight.fill_(6.0)
        critic[0].bias.fill_(3.0)
    update_target(target, critic, updates=1, every=2, fraction=0.25)  # not due
    assert target[0].weight.item() == 2.0
    update_target(target, critic, updates=2, every=2, fraction=0.25)
    assert target[0].weight.item() == pytest.approx(0.75 * 2.0 + 0.25 * 6.0)
    assert target[0].bias.item() == pytest.approx(0.75 * -1.0 + 0.25 * 3.0)


def test_make_target_reinitialises_a_leaf_critic():
    torch.manual_seed(8)
    critic = nn.Linear(3, 2)
    target = make_target(critic)
    assert not torch.equal(critic.weight, target.weight)
