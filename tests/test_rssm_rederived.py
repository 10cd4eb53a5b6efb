"""The RSSM's posterior (observe) and prior (imagine) steps checked against an independent
re-derivation in float64 numpy, written from docs/algorithm.md §3.2 and §4.1 (issue #27, point 4).

The re-derivation reads only the RSSM's weights (its ``state_dict``); it never calls the module's
submodules or methods, nor ``models/distributions.py``. What it implements:

    x     = ELU(Norm(W_in [flatten(z_{t-1}), a_{t-1}]))
    parts = LayerNorm(W_gru [x, h_{t-1}]);  r, c, u = split(parts, 3)
    r = sigmoid(r);  c = tanh(r * c);  u = sigmoid(u - 1);  h_t = u * c + (1 - u) * h_{t-1}
    logits_prior = W_p2 ELU(Norm(W_p1 h_t));  logits_post = W_q2 ELU(Norm(W_q1 [h_t, embed_t]))
    z ~ OneHotCategorical (one uniform per variable, inverse CDF, docs/decisions.md D27), value one-hot
    is_first: the previous z, h and the action are multiplied by zero before the step.

There is no "unimix" (uniform mixing of the categorical) in this project's spec or code, so none is
re-derived; a change that added one would change the logits/probabilities compared here.

Sampled latents are compared with the torch generator replayed: the test saves the random state,
draws the re-derivation's uniforms itself (same shapes, float32, as D27 documents), restores the
state, runs the module, and asserts both consumed exactly the same random numbers. Tolerance:
rtol 1e-5 (module float32 vs numpy float64).

All weights, layer-norm gains and biases included, are perturbed away from PyTorch's defaults
(gain 1, bias 0), so a re-derivation or module that skipped an affine term would disagree.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY
from models.rssm import RSSM, imagine

RTOL, ATOL = 1e-5, 1e-6
# The TINY sizes of tests/conftest.py.
SIZES = {key.split("=")[0].split(".")[1]: int(key.split("=")[1]) for key in TINY if key.startswith("rssm.")}
DETER, HIDDEN, STOCH, DISCRETE = SIZES["deter"], SIZES["hidden"], SIZES["stoch"], SIZES["discrete"]
ACTION_DIM, EMBED_DIM = 3, 10
# PyTorch's LayerNorm epsilon; docs/algorithm.md does not name one. A change of it is caught (the
# pre-activations are small enough here for 1e-5 vs 1e-3 to matter at rtol 1e-5).
LN_EPS = 1e-5
UPDATE_BIAS = -1.0  # u = sigmoid(u - 1), docs/algorithm.md §3.2


# ------------------------------------------------------------------------------ the re-derivation
def _elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Ref:
    """The RSSM of docs/algorithm.md §3.2 in float64 numpy, from a state dict's weights."""

    def __init__(self, rssm: RSSM, norm: str):
        self.w = {key: np64(value).copy() for key, value in rssm.state_dict().items()}
        self.norm = norm

    def _linear(self, prefix, x):
        return x @ self.w[f"{prefix}.weight"].T + self.w[f"{prefix}.bias"]

    def _layer_norm(self, prefix, x):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + LN_EPS) * self.w[f"{prefix}.weight"] + self.w[f"{prefix}.bias"]

    def _block(self, seq, x):
        """Linear -> Norm (none or layer) -> ELU, the first three entries of an RSSM Sequential."""
        x = self._linear(f"{seq}.0", x)
        if self.norm == "layer":
            x = self._layer_norm(f"{seq}.1", x)
        return _elu(x)

    def gru(self, x, h):
        parts = self._layer_norm("cell.norm", self._linear("cell.linear", np.concatenate([x, h], -1)))
        reset, cand, update = np.split(parts, 3, -1)
        reset = _sigmoid(reset)
        cand = np.tanh(reset * cand)
        update = _sigmoid(update + UPDATE_BIAS)
        return update * cand + (1 - update) * h

    def deter_step(self, stoch, deter, action):
        x = self._block("prior_in", np.concatenate([stoch.reshape(len(stoch), -1), action], -1))
        return self.gru(x, deter)

    def prior_logits(self, deter):
        return self._linear("prior_out.3", self._block("prior_out", deter)).reshape(-1, STOCH, DISCRETE)

    def post_logits(self, deter, embed):
        raw = self._linear("post_out.3", self._block("post_out", np.concatenate([deter, embed], -1)))
        return raw.reshape(-1, STOCH, DISCRETE)


def ref_sample(logits: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw of one class per variable with the given uniforms (..., 1); one-hot value."""
    probs = _softmax(logits)
    index = np.minimum((np.cumsum(probs, -1) < uniform).sum(-1), DISCRETE - 1)
    return np.eye(DISCRETE)[index]


def ref_mode(logits: np.ndarray) -> np.ndarray:
    return np.eye(DISCRETE)[logits.argmax(-1)]


def draw_uniforms(batch: int) -> np.ndarray:
    """The uniforms of one categorical draw over (batch, STOCH) variables, from torch's generator."""
    return torch.rand(batch, STOCH, 1).double().numpy()


def ref_observe(ref: Ref, embed, action, is_first, state=None, uniforms=None):
    """Posterior/prior over a (B, T) sequence; ``uniforms[t]`` (B, STOCH, 1) or None for the mode."""
    batch, steps = embed.shape[:2]
    stoch = np.zeros((batch, STOCH, DISCRETE)) if state is None else state["stoch"]
    deter = np.zeros((batch, DETER)) if state is None else state["deter"]
    out = {"post_logit": [], "stoch": [], "deter": [], "prior_logit": []}
    for t in range(steps):
        keep = 1.0 - is_first[:, t].astype(np.float64)
        deter = ref.deter_step(stoch * keep[:, None, None], deter * keep[:, None], action[:, t] * keep[:, None])
        logit = ref.post_logits(deter, embed[:, t])
        stoch = ref_mode(logit) if uniforms is None else ref_sample(logit, uniforms[t])
        for key, value in zip(out, (logit, stoch, deter, ref.prior_logits(deter))):
            out[key].append(value)
    return {key: np.stack(value, 1) for key, value in out.items()}


# --------------------------------------------------------------------------------------- helpers
def make_rssm(norm: str, seed: int = 0) -> RSSM:
    torch.manual_seed(seed)
    rssm = RSSM(ACTION_DIM, EMBED_DIM, deter=DETER, hidden=HIDDEN, stoch=STOCH, discrete=DISCRETE, norm=norm)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, param in rssm.named_parameters():
            scale = 0.3 if "norm" in name or name.endswith(".1.weight") or name.endswith(".1.bias") else 0.1
            param.add_(scale * torch.randn(param.shape, generator=gen))
    return rssm


def inputs(seed: int, batch: int = 3, steps: int = 6):
    gen = torch.Generator().manual_seed(seed)
    embed = 2 * torch.randn(batch, steps, EMBED_DIM, generator=gen)
    action = torch.rand(batch, steps, ACTION_DIM, generator=gen) * 2 - 1
    is_first = torch.zeros(batch, steps, dtype=torch.bool)
    is_first[:, 0] = True
    return embed, action, is_first


def np64(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().numpy()


def close(actual: torch.Tensor, expected: np.ndarray, what: str, rtol: float = RTOL, atol: float = ATOL):
    np.testing.assert_allclose(np64(actual), expected, rtol=rtol, atol=atol, err_msg=what)


def replayed(expected_fn, actual_fn):
    """Re-derivation, then the module, from the same torch random state; both must draw the same numbers."""
    state = torch.get_rng_state()
    expected = expected_fn()
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    actual = actual_fn()
    assert torch.equal(torch.get_rng_state(), after), "the module drew other random numbers than one per variable"
    return expected, actual


NORMS = ["none", "layer"]


# ------------------------------------------------------------------------------------------ tests
def test_gru_cell_matches_the_layer_normed_formula():
    """Catches: a dropped or moved update bias (-1), the reset gate applied outside the tanh or to
    h, the gates read in another order, the LayerNorm skipped, or u and 1 - u swapped."""
    rssm = make_rssm("none")
    ref = Ref(rssm, "none")
    gen = torch.Generator().manual_seed(1)
    x, h = torch.randn(5, HIDDEN, generator=gen), torch.randn(5, DETER, generator=gen)
    close(rssm.cell(x, h), ref.gru(np64(x), np64(h)), "GRU")


@pytest.mark.parametrize("norm", NORMS)
def test_obs_step_and_img_step_modes_match_rederivation(norm):
    """One posterior step and one prior step without sampling (the mode): deter, both logits and
    the one-hot latent. Catches a change in any layer of prior_in / GRU / prior_out / post_out, the
    feature order of their inputs (stoch before action, deter before embed), or the norm option
    being ignored."""
    rssm = make_rssm(norm)
    ref = Ref(rssm, norm)
    gen = torch.Generator().manual_seed(2)
    batch = 4
    logits = torch.randn(batch, STOCH, DISCRETE, generator=gen)
    prev = {"logit": logits, "stoch": torch.eye(DISCRETE)[logits.argmax(-1)],
            "deter": torch.randn(batch, DETER, generator=gen)}
    action = torch.rand(batch, ACTION_DIM, generator=gen) * 2 - 1
    embed = torch.randn(batch, EMBED_DIM, generator=gen)
    is_first = torch.zeros(batch)

    post, prior = rssm.obs_step(prev, action, embed, is_first, sample=False)
    np_prev = {key: np64(value) for key, value in prev.items()}
    deter = ref.deter_step(np_prev["stoch"], np_prev["deter"], np64(action))
    post_logit = ref.post_logits(deter, np64(embed))
    close(post["deter"], deter, "posterior deter")
    close(post["logit"], post_logit, "posterior logits")
    close(post["logit"].softmax(-1), _softmax(post_logit), "posterior probabilities")
    close(post["stoch"], ref_mode(post_logit), "posterior mode one-hot")
    close(prior["deter"], deter, "prior deter (shared with the posterior)")
    close(prior["logit"], ref.prior_logits(deter), "prior logits")

    img = rssm.img_step(prev, action, sample=False)
    close(img["deter"], deter, "imagined deter")
    close(img["logit"], ref.prior_logits(deter), "imagined logits")
    close(img["stoch"], ref_mode(ref.prior_logits(deter)), "imagined mode one-hot")


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("batched_prior", [False, True])
def test_observe_sequence_matches_rederivation_with_replayed_draws(norm, batched_prior):
    """observe over 6 steps with sampled posteriors (the same uniforms on both sides): every step's
    deter, posterior and prior logits and the sampled one-hots. Catches a change of the sampling
    rule (inverse CDF over the probabilities, not the logits), of the recurrence, or a prior head
    computed from another deter in the fast mode's batched prior."""
    rssm = make_rssm(norm)
    rssm.batched_prior = batched_prior
    ref = Ref(rssm, norm)
    embed, action, is_first = inputs(3)
    torch.manual_seed(11)
    expected, (post, prior) = replayed(
        lambda: ref_observe(ref, np64(embed), np64(action), is_first.numpy(),
                            uniforms=[draw_uniforms(embed.shape[0]) for _ in range(embed.shape[1])]),
        lambda: rssm.observe(embed, action, is_first))
    assert post["stoch"].shape == (3, 6, STOCH, DISCRETE) and post["deter"].shape == (3, 6, DETER)
    close(post["deter"], expected["deter"], "deter")
    close(post["logit"], expected["post_logit"], "posterior logits")
    close(post["stoch"], expected["stoch"], "sampled one-hots")
    close(prior["logit"], expected["prior_logit"], "prior logits")
    # The draws are not all the mode: the sample path is really exercised.
    assert not np.array_equal(expected["stoch"], ref_mode(expected["post_logit"].reshape(-1, STOCH, DISCRETE))
                              .reshape(expected["stoch"].shape))


@pytest.mark.parametrize("norm", NORMS)
def test_imagine_matches_rederivation_with_replayed_draws(norm):
    """models.rssm.imagine over 3 steps under a fixed policy of the test's own: index 0 is the start
    state with a zero action, then a_i = policy(feat(s_{i-1})), s_i = prior step with a sampled
    latent. Catches the feature order (flatten(z) then h), an action applied one step late, the
    prior sampled from the posterior head, or a change of the prior step."""
    rssm = make_rssm(norm, seed=4)
    ref = Ref(rssm, norm)
    gen = torch.Generator().manual_seed(5)
    count, horizon = 5, 3
    proj = torch.randn(STOCH * DISCRETE + DETER, ACTION_DIM, generator=gen) * 0.3
    logits = torch.randn(count, STOCH, DISCRETE, generator=gen)
    start = {"logit": logits, "stoch": torch.eye(DISCRETE)[logits.argmax(-1)],
             "deter": torch.randn(count, DETER, generator=gen)}

    def policy(feat, _t):
        return torch.tanh(feat @ proj), {"t": torch.full((feat.shape[0],), float(_t))}

    def expected_fn():
        p = np64(proj)
        stoch, deter = np64(start["stoch"]), np64(start["deter"])
        states, actions = [(np64(start["logit"]), stoch, deter)], [np.zeros((count, ACTION_DIM))]
        for _ in range(horizon):
            feat = np.concatenate([stoch.reshape(count, -1), deter], -1)
            act = np.tanh(feat @ p)
            deter = ref.deter_step(stoch, deter, act)
            logit = ref.prior_logits(deter)
            stoch = ref_sample(logit, draw_uniforms(count))
            states.append((logit, stoch, deter))
            actions.append(act)
        return states, np.stack(actions)

    torch.manual_seed(12)
    (states, actions), (got, got_actions, outputs) = replayed(
        expected_fn, lambda: imagine(rssm, policy, start, horizon))
    assert got["deter"].shape == (horizon + 1, count, DETER)
    for i, (logit, stoch, deter) in enumerate(states):
        close(got["logit"][i], logit, f"logits at {i}")
        close(got["stoch"][i], stoch, f"one-hots at {i}")
        close(got["deter"][i], deter, f"deter at {i}")
    close(got_actions, actions, "actions (zero at index 0)")
    close(outputs["t"], np.arange(horizon, dtype=np.float64)[:, None].repeat(count, 1), "policy outputs")


def test_straight_through_gradients_of_sample_and_mode():
    """docs/algorithm.md §4.1: a sample's gradient is that of the probabilities (p - sg(p)), the
    mode's that of the logits (logits - sg(logits)). With a loss sum(w * z) the gradient reaching
    the logits is J_softmax^T w for a sample and w for the mode. Catches a straight-through term on
    the other quantity, or none (a detached one-hot)."""
    rssm = make_rssm("none")
    embed, action, _ = inputs(6, batch=2, steps=1)
    prev = rssm.initial(2, torch.device("cpu"))
    prev["deter"] = torch.randn(2, DETER, generator=torch.Generator().manual_seed(7))
    weight = torch.randn(2, STOCH, DISCRETE, generator=torch.Generator().manual_seed(8))
    for sample in (True, False):
        post, _ = rssm.obs_step(prev, action[:, 0], embed[:, 0], torch.zeros(2), sample=sample)
        post["logit"].retain_grad()
        (post["stoch"] * weight).sum().backward()
        w = np64(weight)
        if sample:
            p = _softmax(np64(post["logit"]))
            expected = p * (w - (p * w).sum(-1, keepdims=True))  # J^T w of the softmax
        else:
            expected = w
        close(post["logit"].grad, expected, f"gradient into the logits (sample={sample})")
        assert set(np.unique(post["stoch"].detach().numpy()).tolist()) <= {0.0, 1.0}, "value stays one-hot"


@pytest.mark.parametrize("norm", NORMS)
def test_is_first_mid_sequence_resets_state_and_action(norm):
    """is_first at t=0 for all rows and at t=K for row 0 only (docs/algorithm.md §3.2: previous z,
    h and action multiplied by zero). Checked four ways:
    (1) the whole sequence against the re-derivation;
    (2) row 0 at K equals the first step of a fresh sequence starting at K (zero state, zero action),
        and its deter is exactly the zero-state deter, whatever the history and a_{K};
    (3) with is_first[0, K] = False the same inputs give another posterior at K: a mask that ignored
        is_first (or reset only h, or only z, or not the action) fails (2);
    (4) row 1, without a reset at K, is unaffected (a mask broadcast across rows fails).
    The posterior is taken by its mode-independent parts (deter, logits) at K, so no draws need to
    line up between the two runs; the sampled sequence itself is replayed against the re-derivation."""
    K = 3
    rssm = make_rssm(norm, seed=9)
    ref = Ref(rssm, norm)
    embed, action, is_first = inputs(13, batch=2, steps=6)
    is_first[0, K] = True
    np_in = (np64(embed), np64(action), is_first.numpy())

    torch.manual_seed(21)
    expected, (post, prior) = replayed(
        lambda: ref_observe(ref, *np_in, uniforms=[draw_uniforms(2) for _ in range(6)]),
        lambda: rssm.observe(embed, action, is_first))
    close(post["deter"], expected["deter"], "deter")                              # (1)
    close(post["logit"], expected["post_logit"], "posterior logits")
    close(post["stoch"], expected["stoch"], "one-hots")
    close(prior["logit"], expected["prior_logit"], "prior logits")

    zero_deter = ref.deter_step(np.zeros((1, STOCH, DISCRETE)), np.zeros((1, DETER)), np.zeros((1, ACTION_DIM)))
    close(post["deter"][0, K], zero_deter[0], "deter after the reset = deter from the zero state")   # (2)
    close(post["deter"][0, 0], zero_deter[0], "deter at t=0 = deter from the zero state")
    fresh, _ = rssm.observe(embed[:, K:], action[:, K:], is_first[:, K:])
    close(post["deter"][0, K], np64(fresh["deter"][0, 0]), "reset deter vs fresh sequence")
    close(post["logit"][0, K], np64(fresh["logit"][0, 0]), "reset posterior vs fresh sequence")
    close(prior["logit"][0, K], ref.prior_logits(zero_deter)[0], "reset prior")
    other_action = action.clone()
    other_action[0, K] = -action[0, K]
    moved, _ = rssm.observe(embed, other_action, is_first)
    torch.testing.assert_close(moved["deter"][0, K], post["deter"][0, K], msg="the action before a reset is masked")

    no_reset = is_first.clone()                                                  # (3)
    no_reset[0, K] = False
    carried, carried_prior = rssm.observe(embed, action, no_reset)
    gap = (carried["deter"][0, K] - post["deter"][0, K]).abs().max().item()
    assert gap > 1e-2, f"without the reset the state entering K is the carried one (gap {gap})"
    assert (carried["logit"][0, K] - post["logit"][0, K]).abs().max().item() > 1e-2
    assert (carried_prior["logit"][0, K] - prior["logit"][0, K]).abs().max().item() > 1e-2
    unmasked_action, _ = rssm.observe(embed, other_action, no_reset)
    assert (unmasked_action["deter"][0, K] - carried["deter"][0, K]).abs().max().item() > 1e-3, \
        "without the reset a_K does reach the state (so the masking check above is not vacuous)"

    # (4) row 1 never resets after t=0: its step-K state is its carried one (and it matched the
    # re-derivation, which masks row by row, in (1)).
    assert np.abs(np64(post["deter"][1, K]) - zero_deter[0]).max() > 1e-2


@pytest.mark.parametrize("reset", [True, False])
def test_is_first_at_zero_discards_a_carried_state(reset):
    """observe(state=...) continues from the given state unless the first step is_first (acting
    passes the previous latent with is_first at an episode start). Catches a reset applied to the
    initial state only when none is given, or a carried state ignored."""
    rssm = make_rssm("none", seed=14)
    ref = Ref(rssm, "none")
    embed, action, is_first = inputs(15, batch=2, steps=3)
    is_first[:, 0] = reset
    gen = torch.Generator().manual_seed(16)
    logits = torch.randn(2, STOCH, DISCRETE, generator=gen)
    state = {"logit": logits, "stoch": torch.eye(DISCRETE)[logits.argmax(-1)],
             "deter": torch.randn(2, DETER, generator=gen)}
    np_state = {key: np64(value) for key, value in state.items()}
    torch.manual_seed(22)
    expected, (post, _) = replayed(
        lambda: ref_observe(ref, np64(embed), np64(action), is_first.numpy(), state=np_state,
                            uniforms=[draw_uniforms(2) for _ in range(3)]),
        lambda: rssm.observe(embed, action, is_first, state=state))
    close(post["deter"], expected["deter"], "deter")
    close(post["logit"], expected["post_logit"], "posterior logits")
    close(post["stoch"], expected["stoch"], "one-hots")
    fresh = ref_observe(ref, np64(embed[:, :1]), np64(action[:, :1]), np.ones((2, 1), bool))
    differs = np.abs(np64(post["deter"][:, 0]) - fresh["deter"][:, 0]).max() > 1e-2
    assert differs != reset
