"""commformer.functional.log_softmax against PyTorch's: values, gradients, masked and fully masked rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from commformer.functional import log_softmax


@pytest.mark.parametrize("actions", [1, 2, 9, 15, 16, 40])  # both sides of the switch to PyTorch's kernel (16)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradient_match_pytorch(actions, dtype):
    generator = torch.Generator().manual_seed(actions)
    x = (5.0 * torch.randn(64, 3, actions, generator=generator)).to(dtype)
    x[0, 0, 0] = 80.0  # exp would overflow float32 without the shift
    upstream = torch.randn(64, 3, actions, generator=generator).to(dtype)
    ours = x.clone().requires_grad_()
    ref = x.clone().requires_grad_()
    out, expected = log_softmax(ours), F.log_softmax(ref, dim=-1)
    out.backward(upstream)
    expected.backward(upstream)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(out, expected, **tol)
    torch.testing.assert_close(ours.grad, ref.grad, **tol)


def test_gradcheck_small_dimension():
    x = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(log_softmax, (x,))


def test_masked_actions_and_fully_masked_rows():
    """Masked entries (finfo.min, as the policy masks) get ~0 probability; a row with every action masked gets
    the uniform -log(A), as PyTorch's does, and every value stays finite."""
    low = torch.finfo(torch.float32).min
    x = torch.tensor([[1.0, low, 2.0, low], [low, low, low, low]])
    out = log_softmax(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, [0, 2]], F.log_softmax(torch.tensor([1.0, 2.0]), dim=-1))
    assert out[0, [1, 3]].exp().sum() == 0.0
    torch.testing.assert_close(out[1], torch.full((4,), -torch.log(torch.tensor(4.0))))
    torch.testing.assert_close(out, F.log_softmax(x, dim=-1))
