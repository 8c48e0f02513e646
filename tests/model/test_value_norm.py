"""ValueNorm: debiased running statistics against a hand computation, and the normalise/denormalise pair."""

from __future__ import annotations

import pytest
import torch

from commformer.value_norm import ValueNorm


def test_identity_before_the_first_update():
    norm = ValueNorm()
    x = torch.tensor([-3.0, 0.5, 7.0])
    torch.testing.assert_close(norm.normalize(x), x)
    torch.testing.assert_close(norm.denormalize(x), x)


def test_debiased_statistics_by_hand():
    beta = 0.9
    norm = ValueNorm(beta=beta)
    batches = [torch.tensor([1.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])]
    m = m2 = d = 0.0
    for b in batches:
        norm.update(b)
        m = beta * m + (1 - beta) * float(b.mean())
        m2 = beta * m2 + (1 - beta) * float((b**2).mean())
        d = beta * d + (1 - beta)
    mean, var = norm.mean_var()
    assert float(mean) == pytest.approx(m / d)
    assert float(var) == pytest.approx(m2 / d - (m / d) ** 2)


def test_one_batch_normalises_to_zero_mean_unit_variance():
    norm = ValueNorm()
    x = torch.tensor([-30.0, -20.0, -25.0, -15.0], dtype=torch.float64)
    norm.update(x)  # debiasing makes one update give exactly that batch's statistics
    z = norm.normalize(x)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-9)
    assert float(z.pow(2).mean()) == pytest.approx(1.0, rel=1e-6)
    torch.testing.assert_close(norm.denormalize(z), x)


def test_statistics_are_buffers_saved_with_the_module():
    norm = ValueNorm()
    norm.update(torch.tensor([5.0, 7.0]))
    clone = ValueNorm()
    clone.load_state_dict(norm.state_dict())
    torch.testing.assert_close(clone.normalize(torch.tensor([6.0])), norm.normalize(torch.tensor([6.0])))
    assert set(norm.state_dict()) == {"running_mean", "running_mean_sq", "debiasing_term"}


def test_bad_beta_is_refused():
    with pytest.raises(ValueError, match=r"beta=1\.0"):
        ValueNorm(beta=1.0)


def test_non_finite_targets_are_left_out():
    """A NaN or inf target must not enter the running statistics: it would poison every later update."""
    clean, dirty = ValueNorm(), ValueNorm()
    clean.update(torch.tensor([1.0, 3.0]))
    dirty.update(torch.tensor([1.0, float("nan"), 3.0, float("inf")]))
    for a, b in zip(clean.mean_var(), dirty.mean_var(), strict=True):
        torch.testing.assert_close(a, b)
    before = [t.clone() for t in dirty.buffers()]
    dirty.update(torch.tensor([float("nan"), float("-inf")]))  # nothing finite: no update at all
    for a, b in zip(before, dirty.buffers(), strict=True):
        torch.testing.assert_close(a, b)
    dirty.update(torch.tensor([10.0, 20.0]))
    clean.update(torch.tensor([10.0, 20.0]))
    for a, b in zip(clean.mean_var(), dirty.mean_var(), strict=True):
        assert torch.isfinite(b)
        torch.testing.assert_close(a, b)
