"""OrchidBlock: shapes, naive reference (outputs and gradients), shift invariance, causality, precision, config."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from commformer.layers.orchid import OrchidBlock, OrchidConfig, fft_causal_conv
from tests.layers.naive_reference import naive_orchid_block, naive_orchid_kernel

CONDITIONINGS = ["type1", "type2", "none"]


def _block(d: int, conditioning: str, seed: int, randomise: bool = True, **config: Any) -> OrchidBlock:
    """A block with non-trivial parameters (default inits leave some of them near 0 or 1)."""
    torch.manual_seed(seed)
    block = OrchidBlock(d, OrchidConfig(max_len=16, conditioning=conditioning, **config))  # type: ignore[arg-type]
    if randomise:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in block.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return block


def _shift(x: torch.Tensor, s: int, dim: int) -> torch.Tensor:
    """Zero-padded shift right by s along ``dim``, keeping the length: x'[t] = x[t - s] (t >= s), 0 before."""
    length = x.shape[dim]
    return torch.cat([torch.zeros_like(x.narrow(dim, 0, s)), x.narrow(dim, 0, length - s)], dim=dim)


@pytest.mark.parametrize("batch", [(), (2,), (3, 2)])
@pytest.mark.parametrize("length", [1, 7, 16])
@pytest.mark.parametrize("d", [1, 3, 8])
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_shapes(batch: tuple[int, ...], length: int, d: int, conditioning: str) -> None:
    block = _block(d, conditioning, seed=length + d, randomise=False)
    out = block(torch.randn(*batch, length, d))
    assert out.shape == (*batch, length, d)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("length", [1, 7, 16])
@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_matches_naive_reference(length: int, conditioning: str) -> None:
    """FFT path against direct sums with hand-built DFT matrices (naive_reference.py), float64, outputs and
    gradients."""
    block = _block(3, conditioning, seed=length)
    x = torch.randn(2, length, 3, requires_grad=True)
    upstream = torch.randn(2, length, 3)
    params = [x, *block.parameters()]
    fast = block(x)
    grads_fast = torch.autograd.grad((fast * upstream).sum(), params)
    naive = naive_orchid_block(block, x)
    grads_naive = torch.autograd.grad((naive * upstream).sum(), params)
    torch.testing.assert_close(fast, naive, rtol=1e-10, atol=1e-12)
    names = ["x", *(name for name, _ in block.named_parameters())]
    for name, g_fast, g_naive in zip(names, grads_fast, grads_naive, strict=True):
        torch.testing.assert_close(g_fast, g_naive, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("conditioning", ["type1", "type2"])
def test_kernel_matches_naive_reference(conditioning: str) -> None:
    """The data-dependent kernel on its own: h0 + causal part of irfft(H), against the naive inverse DFT."""
    block = _block(4, conditioning, seed=3, cond_kernel=5)
    v = torch.randn(2, 4, 11)
    torch.testing.assert_close(block.kernel(v), naive_orchid_kernel(block, v), rtol=1e-10, atol=1e-12)


def test_global_conv_is_linear_not_circular() -> None:
    """An impulse at the last step leaves every earlier output exactly 0; a circular (n = L) FFT would wrap it."""
    x = torch.zeros(1, 2, 8)
    x[..., -1] = 1.0
    y = fft_causal_conv(x, torch.rand(1, 2, 8) + 0.5, torch.zeros(2))
    torch.testing.assert_close(y[..., :-1], torch.zeros(1, 2, 7), rtol=0, atol=1e-15)


@pytest.mark.parametrize("kernel_batch", [1, 3])
@pytest.mark.parametrize("length", [1, 5, 8])
def test_fft_conv_gradients_match_direct_sum(kernel_batch: int, length: int) -> None:
    """The hand-written backward (two FFT cross-correlations) against autograd through the direct double sum."""
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(3, 2, length, dtype=torch.float64, generator=gen, requires_grad=True)
    kernel = torch.randn(kernel_batch, 2, length, dtype=torch.float64, generator=gen, requires_grad=True)
    skip = torch.randn(2, dtype=torch.float64, generator=gen, requires_grad=True)
    upstream = torch.randn(3, 2, length, dtype=torch.float64, generator=gen)
    direct = (
        torch.stack([sum(kernel[..., t - s] * x[..., s] for s in range(t + 1)) for t in range(length)], dim=-1)
        + x * skip[:, None]
    )
    fast = fft_causal_conv(x, kernel, skip)
    torch.testing.assert_close(fast, direct, rtol=1e-10, atol=1e-12)
    grads_fast = torch.autograd.grad((fast * upstream).sum(), (x, kernel, skip))
    grads_direct = torch.autograd.grad((direct * upstream).sum(), (x, kernel, skip))
    for name, g_fast, g_direct in zip(("x", "kernel", "skip"), grads_fast, grads_direct, strict=True):
        torch.testing.assert_close(g_fast, g_direct, rtol=1e-10, atol=1e-12, msg=name)


def test_fft_conv_refuses_a_kernel_of_another_shape() -> None:
    with pytest.raises(ValueError, match=r"kernel has shape \(2, 2, 8\); expected \(1 or 3"):
        fft_causal_conv(torch.zeros(3, 2, 8), torch.zeros(2, 2, 8), torch.zeros(2))


def test_static_kernel_does_not_depend_on_window_length() -> None:
    block = _block(3, "none", seed=0)
    torch.testing.assert_close(block.implicit_filter(5, torch.float64), block.implicit_filter(16, torch.float64)[:, :5])


@pytest.mark.parametrize("conditioning", ["type1", "type2"])
@pytest.mark.parametrize("cond_kernel", [1, 3, 5])
@pytest.mark.parametrize("s", [1, 4])
def test_conditioning_is_shift_invariant(conditioning: str, cond_kernel: int, s: int) -> None:
    """Exact: H(S_s v) = H(v) when the last s + cond_kernel - 1 steps of v are zero.

    S_s shifts right by s with zeros entering at the start. The causal, bias-free time convs commute with S_s and,
    given that zero tail, push nothing out of the window; an rfft of size 2L then only gains the phase exp(-i w s),
    which |.|^2 (type1) and conj(K) * Q (type2) cancel. Without the zero tail the shifted window has lost content
    and H changes; the last assertion checks that this precondition is really needed.
    """
    block = _block(4, conditioning, seed=s, cond_kernel=cond_kernel)
    assert block.conditioner is not None
    length = 16
    v = torch.randn(2, 4, length)
    v[..., length - s - (cond_kernel - 1) :] = 0.0
    response = block.conditioner(v)
    torch.testing.assert_close(block.conditioner(_shift(v, s, dim=-1)), response, rtol=0, atol=1e-12)
    torch.testing.assert_close(block.kernel(_shift(v, s, dim=-1)), block.kernel(v), rtol=0, atol=1e-12)

    full = torch.randn(2, 4, length)
    assert (block.conditioner(_shift(full, s, dim=-1)) - block.conditioner(full)).abs().max() > 1e-6


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_block_is_shift_equivariant(conditioning: str) -> None:
    """Exact: out(S_s x)[t] = out(x)[t - s] for t >= s, and out(S_s x)[t] = out_proj.bias for t < s, when
    in_proj and the short conv have zero bias and the last s + cond_kernel - 1 rows of x are zero.

    Zero biases make zero input rows into zero features, so x0, x1, v are shifted copies too; the conditioning
    is then shift-invariant (test above) and the causal convolutions commute with the shift. With the default
    nonzero biases the padded rows become nonzero features and the equality fails (checked at the end).
    """
    block = _block(3, conditioning, seed=7)
    s, length, cond_kernel = 3, 16, block.config.cond_kernel
    x = torch.randn(2, length, 3)
    x[:, length - s - (cond_kernel - 1) :] = 0.0
    shifted = _shift(x, s, dim=-2)
    with_bias = (block(shifted)[:, s:] - block(x)[:, : length - s]).abs().max()
    assert block.short_conv.bias is not None
    with torch.no_grad():
        block.in_proj.bias.zero_()
        block.short_conv.bias.zero_()
    out, out_shifted = block(x), block(shifted)
    torch.testing.assert_close(out_shifted[:, s:], out[:, : length - s], rtol=0, atol=1e-12)
    torch.testing.assert_close(out_shifted[:, :s], block.out_proj.bias.expand(2, s, 3), rtol=0, atol=1e-12)
    assert with_bias > 1e-6


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_every_parameter_gets_a_finite_gradient(conditioning: str) -> None:
    block = _block(4, conditioning, seed=1, randomise=False)
    block(torch.randn(2, 9, 4)).square().sum().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def _spy_fft(monkeypatch: pytest.MonkeyPatch) -> list[torch.dtype]:
    """Record the input dtype of every torch.fft.rfft / irfft call."""
    seen: list[torch.dtype] = []

    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def spy(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            seen.append(x.dtype)
            return fn(x, *args, **kwargs)

        return spy

    monkeypatch.setattr(torch.fft, "rfft", wrap(torch.fft.rfft))
    monkeypatch.setattr(torch.fft, "irfft", wrap(torch.fft.irfft))
    return seen


@pytest.mark.parametrize("conditioning", ["type1", "type2"])
def test_fft_runs_in_float32_under_bf16_autocast(conditioning: str, monkeypatch: pytest.MonkeyPatch) -> None:
    block = _block(8, conditioning, seed=2, randomise=False).float()
    x = torch.randn(2, 16, 8, dtype=torch.float32)
    reference = block(x)
    seen = _spy_fft(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.dtype == torch.bfloat16  # out_proj runs under autocast
    assert seen and set(seen) <= {torch.float32, torch.complex64}, seen
    assert torch.isfinite(out).all()
    error = (out.float() - reference).norm() / reference.norm()
    assert error < 5e-2, f"relative error {error:.3g} against float32"


def test_float64_is_not_downcast(monkeypatch: pytest.MonkeyPatch) -> None:
    block = _block(3, "type2", seed=0, randomise=False)
    seen = _spy_fft(monkeypatch)
    assert block(torch.randn(2, 7, 3)).dtype == torch.float64
    assert set(seen) == {torch.float64, torch.complex128}, seen


@pytest.mark.parametrize("t0", [0, 6, 14])
def test_static_kernel_path_is_causal(t0: int) -> None:
    """conditioning="none" (h0 only): perturbing steps after t0 leaves outputs at steps <= t0 unchanged."""
    block = _block(4, "none", seed=t0)
    x = torch.randn(2, 16, 4)
    perturbed = x.clone()
    perturbed[:, t0 + 1 :] += 5.0 * torch.randn(2, 15 - t0, 4)
    out, out_perturbed = block(x), block(perturbed)
    torch.testing.assert_close(out_perturbed[:, : t0 + 1], out[:, : t0 + 1], rtol=0, atol=1e-12)
    assert (out_perturbed[:, t0 + 1 :] - out[:, t0 + 1 :]).abs().max() > 1e-6


@pytest.mark.parametrize("conditioning", ["type1", "type2"])
def test_conditioned_block_is_not_causal_within_a_window(conditioning: str) -> None:
    """The data-dependent kernel reads the whole window, so the future moves the past (why causal_last exists)."""
    block = _block(4, conditioning, seed=4)
    x = torch.randn(1, 16, 4)
    perturbed = x.clone()
    perturbed[:, -1] += 5.0
    assert (block(perturbed)[:, 0] - block(x)[:, 0]).abs().max() > 1e-6


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_causal_last_sees_no_future(conditioning: str) -> None:
    """Window level: row t of causal_last comes from the window ending at t, so steps after t cannot reach it."""
    block = _block(4, conditioning, seed=5)
    steps, window, t0 = 12, 5, 6
    x = torch.randn(2, steps, 4)
    out = block.causal_last(x, window)
    assert out.shape == (2, steps, 4)

    padded = F.pad(x, (0, 0, window - 1, 0))  # step t's window is padded[:, t : t + window]
    for t in (0, 3, steps - 1):
        torch.testing.assert_close(out[:, t], block(padded[:, t : t + window])[:, -1], rtol=1e-12, atol=1e-13)

    perturbed = x.clone()
    perturbed[:, t0 + 1 :] += 5.0 * torch.randn(2, steps - t0 - 1, 4)
    out_perturbed = block.causal_last(perturbed, window)
    torch.testing.assert_close(out_perturbed[:, : t0 + 1], out[:, : t0 + 1], rtol=0, atol=1e-12)
    assert (out_perturbed[:, t0 + 1 :] - out[:, t0 + 1 :]).abs().amax(-1).min() > 1e-6


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("max_len", 0, "expected an integer >= 1"),
        ("short_kernel", 2.0, "expected an integer in"),
        ("short_kernel", True, "expected an integer in"),
        ("conditioning", "type3", "expected one of"),
        ("cond_kernel", 4, "expected an odd integer"),
        ("filter_order", 0, "expected an integer in"),
        ("filter_bands", -1, "expected an integer in"),
    ],
)
def test_config_errors_name_the_field(field: str, value: object, expected: str) -> None:
    with pytest.raises(ValueError, match=rf"model\.orchid\.{field}=.*{expected}"):
        OrchidConfig(**{field: value})  # type: ignore[arg-type]


def test_input_errors_name_the_value() -> None:
    block = OrchidBlock(4, OrchidConfig(max_len=8))
    with pytest.raises(ValueError, match=r"x has shape \(2, 5, 3\); expected \(\.\.\., L, 4\)"):
        block(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"sequence length L=9; expected 1 <= L <= model\.orchid\.max_len=8"):
        block(torch.randn(2, 9, 4))
    with pytest.raises(ValueError, match=r"sequence length L=9"):
        block.causal_last(torch.randn(2, 3, 4), window=9)
    with pytest.raises(ValueError, match=r"d_model=0"):
        OrchidBlock(0, OrchidConfig())
