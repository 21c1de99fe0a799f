"""Masked reductions, log-probabilities, entropy and KL estimators, against hand values
and properties."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from rlhfkit.core import (AdaptiveKLController, FixedKLController, entropy_from_logits,
                          kl_estimate, logprobs_and_entropy, logprobs_from_logits, masked_mean,
                          masked_var, masked_whiten, position_ids_from_mask)

FAST = settings(max_examples=40, deadline=None)


def random_mask(seed, shape, min_kept=2):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < 0.6
    mask.view(-1)[:min_kept] = True
    return mask


# ---- masked reductions -------------------------------------------------------------------

def test_masked_mean_and_var_by_hand():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    m = torch.tensor([[1, 1, 0], [1, 1, 0]])
    assert masked_mean(x, m).item() == pytest.approx(2.5)
    # entries 1,2,3,4: biased var 1.25, unbiased 5/3
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(1.25)
    assert masked_var(x, m).item() == pytest.approx(5 / 3)
    assert torch.allclose(masked_mean(x, m, dim=1), torch.tensor([1.5, 3.5]))


def test_padded_values_never_leak_even_nan_or_inf():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, float("inf"), 4.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 1]])
    assert masked_mean(x, m).item() == pytest.approx(2.5)
    w = masked_whiten(x, m)
    assert torch.isfinite(w).all() and (w[~m.bool()] == 0).all()


@FAST
@given(seed=st.integers(0, 10_000), b=st.integers(1, 5), t=st.integers(2, 9),
       shift=st.booleans())
def test_whitening_gives_mean_0_and_variance_1_under_the_mask(seed, b, t, shift):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, generator=g, dtype=torch.float64) * 3 + 7
    m = random_mask(seed, (b, t))
    var = masked_var(x, m).item()
    if var < 1e-6:
        return
    w = masked_whiten(x, m, shift_mean=True)
    assert masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-9)
    # exactly 1 but for the eps = 1e-8 under the square root: var / (var + eps)
    assert masked_var(w, m).item() == pytest.approx(var / (var + 1e-8), rel=1e-9)
    assert masked_var(w, m).item() == pytest.approx(1.0, abs=1e-2)
    if not shift:  # scale only: the mean is kept
        ws = masked_whiten(x, m, shift_mean=False)
        assert masked_mean(ws, m).item() == pytest.approx(masked_mean(x, m).item(), rel=1e-9)


@FAST
@given(seed=st.integers(0, 10_000), pad=st.integers(1, 4))
def test_padding_columns_never_change_masked_results(seed, pad):
    # float64: the padded sum adds zeros in another order, so float32 may differ in the last
    # bits when the mean is near 0; the property is exact up to rounding
    g = torch.Generator().manual_seed(seed)
    x, m = torch.randn(3, 5, generator=g, dtype=torch.float64), random_mask(seed, (3, 5))
    junk = torch.randn(3, pad, generator=g, dtype=torch.float64) * 1e6
    xp, mp = torch.cat([x, junk], 1), torch.cat([m, torch.zeros(3, pad, dtype=torch.bool)], 1)
    assert torch.allclose(masked_mean(xp, mp), masked_mean(x, m), atol=1e-12)
    assert torch.allclose(masked_var(xp, mp), masked_var(x, m), atol=1e-12)
    assert torch.allclose(masked_whiten(xp, mp)[:, :5], masked_whiten(x, m), atol=1e-9)


def test_empty_mask_and_shape_mismatch_raise_clear_errors():
    with pytest.raises(ValueError, match="mask: no position is set"):
        masked_mean(torch.ones(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 3\)"):
        masked_mean(torch.ones(2, 3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(torch.ones(2, 3), torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_position_ids_ignore_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


# ---- log-probabilities and entropy -------------------------------------------------------

def test_logprobs_by_hand_with_temperature():
    logits = torch.tensor([[[2.0, 0.0, 0.0]]])
    tokens = torch.tensor([[0]])
    # τ = 2: softmax([1, 0, 0])[0] = e / (e + 2)
    expected = math.log(math.e / (math.e + 2))
    assert logprobs_from_logits(logits, tokens, 2.0).item() == pytest.approx(expected, rel=1e-6)


@FAST
@given(seed=st.integers(0, 10_000), temperature=st.floats(0.1, 3.0))
def test_logprobs_match_log_softmax_and_depend_on_temperature(seed, temperature):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 7, generator=g) * 3
    tokens = torch.randint(0, 7, (2, 4), generator=g)
    ref = torch.log_softmax(logits / temperature, -1).gather(-1, tokens[..., None])[..., 0]
    assert torch.allclose(logprobs_from_logits(logits, tokens, temperature), ref, atol=1e-5)


def test_forgetting_the_temperature_is_caught():
    """The classic bug: log-probs taken at τ = 1 after sampling at τ = 0.7."""
    g = torch.Generator().manual_seed(0)
    logits, tokens = torch.randn(2, 3, 11, generator=g) * 2, torch.randint(0, 11, (2, 3), generator=g)
    at_07 = logprobs_from_logits(logits, tokens, 0.7)
    at_1 = logprobs_from_logits(logits, tokens, 1.0)
    assert (at_07 - at_1).abs().max() > 0.05


def test_logprobs_of_bf16_logits_are_float32_and_keep_gradients():
    logits = torch.randn(2, 3, 5, dtype=torch.bfloat16, requires_grad=True)
    lp = logprobs_from_logits(logits, torch.zeros(2, 3, dtype=torch.long), 1.0)
    assert lp.dtype == torch.float32
    lp.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_entropy_uniform_is_log_v_and_matches_definition():
    assert torch.allclose(entropy_from_logits(torch.zeros(1, 2, 8), 1.0),
                          torch.full((1, 2), math.log(8)))
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 6, generator=g)
    p = torch.softmax(logits / 0.7, -1)
    assert torch.allclose(entropy_from_logits(logits, 0.7), -(p * p.log()).sum(-1), atol=1e-5)


def test_logged_entropy_has_no_graph_and_the_same_values():
    """entropy_grad=False (no entropy bonus: the entropy is only logged): the same numbers,
    no graph through H; the log-probs keep theirs, equal to the last bit. Under no_grad
    both ways agree too."""
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(3, 4, 50, generator=g) * 4).requires_grad_()
    tokens = torch.randint(0, 50, (3, 4), generator=g)
    lp, h = logprobs_and_entropy(logits, tokens, 0.7)
    lp_logged, h_logged = logprobs_and_entropy(logits, tokens, 0.7, entropy_grad=False)
    assert h.requires_grad and not h_logged.requires_grad and lp_logged.requires_grad
    assert torch.allclose(h_logged, h, atol=1e-5) and torch.equal(lp_logged, lp)
    p = torch.softmax(logits.detach() / 0.7, -1)
    assert torch.allclose(h_logged, -(p * p.log()).sum(-1), atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(logprobs_and_entropy(logits, tokens, 0.7)[1], h, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_written_out_gradients_are_autograds(temperature):
    """The written-out backward, (1[v = a] − π_v) / τ for log π(a) and −π_v (log π_v + H) / τ
    for the entropy, times the incoming gradients, equals autograd's through log_softmax,
    gather and −Σ π log π; repeated tokens and zero weights (masked positions) included;
    bf16 logits get a bf16 gradient."""
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 5, 40, generator=g) * 3).requires_grad_()
    tokens = torch.randint(0, 40, (2, 5), generator=g)
    tokens[1] = tokens[0]
    weights, entropy_weights = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    weights[:, -2:] = entropy_weights[:, -2:] = 0
    log_probs = torch.log_softmax(logits / temperature, -1)
    ref_lp = log_probs.gather(-1, tokens[..., None])[..., 0]
    ref_h = -(log_probs.exp() * log_probs).sum(-1)
    for entropy_grad in (False, True):
        lp, h = logprobs_and_entropy(logits, tokens, temperature, entropy_grad=entropy_grad)
        loss = (lp * weights).sum() + (h * entropy_weights).sum() * entropy_grad
        expected = (ref_lp * weights).sum() + (ref_h * entropy_weights).sum() * entropy_grad
        (ours,) = torch.autograd.grad(loss, logits)
        (theirs,) = torch.autograd.grad(expected, logits, retain_graph=True)
        assert torch.allclose(ours, theirs, atol=1e-6), entropy_grad
        assert ours[:, -2:].abs().max() == 0
    half = logits.detach().bfloat16().requires_grad_()
    lp, _ = logprobs_and_entropy(half, tokens, temperature, with_entropy=False)
    lp.sum().backward()
    assert half.grad.dtype == torch.bfloat16 and lp.dtype == torch.float32


def test_logprob_bad_input():
    with pytest.raises(ValueError, match="temperature"):
        logprobs_from_logits(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), 0.0)
    with pytest.raises(ValueError, match="tokens: expected shape"):
        logprobs_from_logits(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match=r"logits: expected 3 dimensions"):
        entropy_from_logits(torch.zeros(2, 3), 1.0)


# ---- KL estimators and controllers -------------------------------------------------------

def test_kl_estimators_on_a_worked_pair():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log π/π_ref = log 2; r = π_ref/π = 1/2
    assert kl_estimate(lp, ref, "k1").item() == pytest.approx(math.log(2))
    assert kl_estimate(lp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_estimate(lp, ref, "k3").item() == pytest.approx(-0.5 + math.log(2))


def test_k1_and_k3_are_unbiased_estimates_of_the_true_kl():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(10, generator=g), -1)
    q = torch.softmax(torch.randn(10, generator=g), -1)
    true_kl = (p * (p / q).log()).sum()
    a = torch.multinomial(p, 400_000, replacement=True, generator=g)
    lp, ref = p.log()[a], q.log()[a]
    for kind in ("k1", "k3"):
        assert kl_estimate(lp, ref, kind).mean().item() == pytest.approx(true_kl.item(), rel=0.03)
    assert (kl_estimate(lp, ref, "k3") >= 0).all() and (kl_estimate(lp, ref, "k2") >= 0).all()


def test_unknown_kl_kind_names_the_choices():
    with pytest.raises(ValueError, match="kind: expected one of k1, k2, k3, got 'k4'"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "k4")


def test_adaptive_controller_by_hand_and_toward_target():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    ctl.update(current_kl=60.0, n_steps=256)  # error clipped to +0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10_000))
    ctl.update(current_kl=4.5, n_steps=1000)  # error −0.25 clipped to −0.2
    assert ctl.value == pytest.approx(0.2 * (1 + 0.2 * 256 / 10_000) * (1 - 0.2 * 0.1))
    # a toy system whose KL falls as β grows: the controller drives KL to the target
    ctl = AdaptiveKLController(0.05, target=2.0, horizon=100)
    for _ in range(300):
        ctl.update(current_kl=0.4 / ctl.value, n_steps=10)
    assert 0.4 / ctl.value == pytest.approx(2.0, rel=0.02)
    state = ctl.state_dict()
    other = AdaptiveKLController(1.0, target=2.0, horizon=100)
    other.load_state_dict(state)
    assert other.value == ctl.value


def test_fixed_controller_never_moves():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 64)
    assert ctl.value == 0.05
    with pytest.raises(ValueError, match="kl_coef"):
        FixedKLController(-1)


@pytest.mark.parametrize("entropy_grad", [True, False])
def test_chunked_logprobs_equal_whole_batch(monkeypatch, entropy_grad):
    """Big batches go through a few rows at a time; small ones whole. Either way the same
    log-probs, entropies and gradients."""
    from rlhfkit.core import logprobs as module
    g = torch.Generator().manual_seed(4)
    logits = (torch.randn(5, 3, 16, generator=g) * 2).requires_grad_()
    tokens = torch.randint(0, 16, (5, 3), generator=g)
    weights = torch.randn(5, 3, generator=g)

    def run():
        lp, h = logprobs_and_entropy(logits, tokens, 0.7, entropy_grad=entropy_grad)
        (grad,) = torch.autograd.grad((lp * weights).sum() + h.sum() * entropy_grad, logits)
        return lp.detach(), h.detach(), grad

    whole = run()
    monkeypatch.setattr(module, "CHUNK_ELEMENTS", 2 * 3 * 16)  # chunks of 2, 2 and 1 rows
    for a, b in zip(whole, run()):
        assert torch.allclose(a, b, atol=1e-6)
