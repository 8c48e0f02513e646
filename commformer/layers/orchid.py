"""Orchid: a long convolution whose kernel is conditioned on its input (Karami & Ghodsi, arXiv 2402.18508).

Block (order 2, the Hyena layout of the official ``orchid_standalone``)::

    [x0 | x1 | v] = in_proj(x)                            D -> 3D
    x0', x1', v'  = causal depthwise conv of each         width ``short_kernel``, left zero padding
    y             = v' * x1'
    y             = GlobalConv(y; k_v),  k_v = h0 + h_theta(v)
    out           = out_proj(y * x0')                     D -> D

GlobalConv is a causal *linear* convolution per channel plus a learned skip, computed with FFTs of size
n = 2L: ``y = irfft(rfft(y, n) * rfft(k_v, n), n)[:L] + skip * y``. A linear convolution of two length-L
sequences has length 2L - 1 <= n, so nothing wraps around (n = L would be circular and leak the end of the
window into its start). Every step is O(L log L) per channel; there is no L x L matrix anywhere.

Static kernel h0 (Hyena implicit filter, Poli et al. 2023, sec. 3.3): an FFN with sine activations of the
positional features [t, cos(2 pi b t), sin(2 pi b t)] (b = 1..filter_bands) of the normalised lag
t = lag / max_len, times a fixed decay window exp(-t * rate_c) whose per-channel rates make channel c fall to 1 %
between 0.3 and 1.5 of max_len (Hyena's defaults). Because t is normalised by max_len, not by the window
length, h0 at a given lag is the same for every window length.

Data-dependent kernel h_theta(v) (paper sec. 3.2). The conditioning network reads v, the third projection
*before* its short conv (as the official code does), and returns a frequency response H on the rfft grid of
size n = 2L (L + 1 bins). Its time convs are causal and have no bias, its periodograms are divided by L so their
scale does not grow with the window:

* ``type1`` (phase suppression): ``H = Conv_f(|rfft(Conv_t(v), 2L)|^2 / L)``. The squared magnitude (as in the
  official code) rather than |.|: it is smooth, so its gradient exists at a zero bin.
* ``type2`` (cross-correlation): ``H = Conv_f(conj(rfft(Conv_k(v), 2L)) * rfft(Conv_q(v), 2L) / L)``, identity
  nonlinearity on Q (the authors' best ablation); Conv_f mixes the real and imaginary part of each channel.

Conv_t, Conv_k, Conv_q are depthwise over time; Conv_f is depthwise over frequency, centred, with bias.
H is projected onto causal kernels before it is used: ``h_theta = irfft(H, 2L)[:L]``, as the official code does
for type1 (``causal=True``); we do it for type2 too. A real H (type1) is the spectrum of a kernel symmetric in the
lag, whose negative lags would let y[t] read y[s > t]; dropping them keeps GlobalConv a causal convolution for
any given kernel. So ``k_v = h0 + h_theta`` and K(f) = rfft(h0, 2L) + rfft(h_theta, 2L). (The official
standalone GlobalConvolution then uses n = L, a circular convolution; here n = 2L throughout.)

Exact shift invariance. Let ``S_s`` shift a window right by s with zeros entering at the start. If the last
s + cond_kernel - 1 steps of v are zero (nothing is pushed out of the window), then Conv_t(S_s v) = S_s Conv_t(v)
(causal, no bias) still fits in the window, its rfft of size 2L gains only the phase exp(-i w s), and the
squared magnitude (type1) and conj(K) * Q (type2) cancel it: ``H(S_s v) = H(v)`` exactly. The official code puts
a LayerNorm after each conv of the conditioning network; one after the time conv would turn the zeros into its
bias and break this, so there is none, nor after the frequency conv (the division by L fixes the scale, and the
block is meant to sit behind a pre-LN residual). The block is then shift-equivariant, ``out(S_s x)[t] =
out(x)[t - s]`` for t >= s, when additionally in_proj and the short conv have zero bias (so that zero input rows
give zero features); with their biases the padded rows become nonzero features and the equality fails near the
start. tests/layers/test_orchid.py checks exactly these statements.

Causality. h_theta depends on the whole window, so Orchid is *not* causal within a window: the output at
position t moves when v at s > t moves. The policy must therefore compute the action at step t from a window of
the past ``window`` observations ending at t and use the window's last output; the window holds no future, so
nothing after t can reach it. ``OrchidBlock.causal_last`` does this for a whole trajectory at once. With
``conditioning="none"`` (static kernel only, i.e. Hyena) the block is causal position by position.

Precision. torch.fft has no bf16 support and fp16 cuFFT needs power-of-two sizes, so the conditioning network
and GlobalConv run with autocast off, in float32 (float64 inputs stay float64), and the result is cast back to
the input's dtype.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from commformer.config import OrchidConfig
from commformer.validate import require_int

__all__ = [
    "CrossCorrelationConditioner",
    "ImplicitFilter",
    "OrchidBlock",
    "OrchidConfig",
    "PhaseFreeConditioner",
    "fft_causal_conv",
]

# Hyena's ExponentialModulation defaults: channel c decays to DECAY_TARGET at a lag between FAST and SLOW times
# max_len.
DECAY_TARGET = 1e-2
DECAY_FAST = 0.3
DECAY_SLOW = 1.5


def _causal_depthwise(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Depthwise conv over time with left zero padding: ``out[t] = sum_j weight[c, 0, j] * x[t - (k - 1) + j]``.

    Args:
        x: (B, C, L).
        weight: (C, 1, k).
        bias: (C,) or None.

    Returns:
        (B, C, L); out[t] depends on x[t - k + 1 .. t] only.
    """
    k = weight.shape[-1]
    padded = F.pad(x, (k - 1, 0))  # (B, C, L + k - 1)
    return F.conv1d(padded, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), groups=x.shape[-2])


def _centred_conv(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """``conv`` over the last axis (frequency) with zero padding k // 2 on both sides: (B, C, F) -> (B, C', F)."""
    bias = None if conv.bias is None else conv.bias.to(x.dtype)
    return F.conv1d(x, conv.weight.to(x.dtype), bias, padding=conv.kernel_size[0] // 2, groups=conv.groups)


class _CausalFFTConv(torch.autograd.Function):
    """``irfft(rfft(x, 2L) * rfft(k, 2L), 2L)[:L]`` with a backward written as two FFT cross-correlations.

    Autograd's own backward of ``rfft(·, n)`` runs a complex-to-complex FFT of size n per input (about twice a
    real one) and re-derives both spectra. Here the forward keeps X and K, and the backward needs one rfft of
    the incoming gradient g and two irfft: with G = rfft(g, 2L),
    ``grad_x[s] = sum_{t >= s} g[t] k[t - s] = irfft(G * conj(K))[s]`` and
    ``grad_k[j] = sum_{t >= j} g[t] x[t - j] = irfft(G * conj(X))[j]`` for s, j in 0..L-1. The circular lags
    that wrap around (t - s < 0) land on indices >= L + 1 of the zero-padded k (or x), which are zero, so both
    are exact. That is 3 real FFTs forward and 3 backward instead of 3 forward and 2 complex + 1 real backward;
    tests/layers/test_orchid.py checks both gradients against the naive loop in float64. The backward is not
    itself differentiable (`once_differentiable`): second-order gradients through the block raise.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, kernel: Tensor) -> Tensor:
        length = x.shape[-1]
        n = 2 * length
        x_f = torch.fft.rfft(x, n=n)  # (B, C, L + 1)
        k_f = torch.fft.rfft(kernel, n=n)  # (B or 1, C, L + 1)
        ctx.save_for_backward(x_f, k_f)
        ctx.kernel_batch = kernel.shape[0]  # type: ignore[attr-defined]
        return torch.fft.irfft(x_f * k_f, n=n)[..., :length]  # (B, C, L)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x_f, k_f = ctx.saved_tensors  # type: ignore[attr-defined]
        length = grad.shape[-1]
        n = 2 * length
        g_f = torch.fft.rfft(grad, n=n)  # (B, C, L + 1)
        grad_x = grad_k = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            grad_x = torch.fft.irfft(g_f * k_f.conj(), n=n)[..., :length]  # (B, C, L)
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]
            cross = g_f * x_f.conj()  # (B, C, L + 1)
            if ctx.kernel_batch == 1 and cross.shape[0] != 1:  # type: ignore[attr-defined]
                cross = cross.sum(dim=0, keepdim=True)  # the kernel was broadcast over the batch
            grad_k = torch.fft.irfft(cross, n=n)[..., :length]  # (B or 1, C, L)
        return grad_x, grad_k


def fft_causal_conv(x: Tensor, kernel: Tensor, skip: Tensor) -> Tensor:
    """Causal linear convolution per channel with a skip: ``y[t] = sum_{s<=t} k[t - s] x[s] + skip * x[t]``.

    FFTs of size n = 2L: the product of two length-L sequences' spectra is the spectrum of their length-(2L - 1)
    linear convolution, which fits in n, so taking [:L] of the inverse is exact (no circular wrap-around).
    Call it in float32 or float64 (torch.fft has no bf16). The backward reuses the forward's spectra
    (`_CausalFFTConv`).

    Args:
        x: (B, C, L).
        kernel: (B or 1, C, L), lag 0 first.
        skip: (C,).

    Returns:
        (B, C, L).
    """
    if kernel.shape[0] not in (1, x.shape[0]) or kernel.shape[1:] != x.shape[1:]:
        raise ValueError(f"kernel has shape {tuple(kernel.shape)}; expected (1 or {x.shape[0]}, *{tuple(x.shape[1:])})")
    y = _CausalFFTConv.apply(x, kernel)  # (B, C, L)
    return y + x * skip.to(x.dtype)[:, None]


class _Sine(nn.Module):
    """``sin(freq * x)`` with a learned frequency per unit (Hyena's periodic activation)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.freq = nn.Parameter(torch.ones(width))

    def forward(self, x: Tensor) -> Tensor:
        """(..., width) -> (..., width)."""
        return torch.sin(self.freq.to(x.dtype) * x)


class ImplicitFilter(nn.Module):
    """Static long kernel h0(t) = FFN_sin(features(t)) * exp(-t * rate_c), t = lag / max_len.

    Attributes:
        hidden: Linear (1 + 2 * bands) -> order, then the other two layers of the FFN.
        decay_rates: (C,) fixed positive rates (a buffer, as in Hyena where the modulation is not trained).
    """

    def __init__(self, channels: int, config: OrchidConfig) -> None:
        super().__init__()
        self.max_len = config.max_len
        self.bands = config.filter_bands
        order = config.filter_order
        self.hidden = nn.Linear(1 + 2 * self.bands, order)
        self.act_hidden = _Sine(order)
        self.inner = nn.Linear(order, order)
        self.act_inner = _Sine(order)
        self.out = nn.Linear(order, channels, bias=False)
        # Chang et al. (2020) init, the official chang_initialize: std 1 / sqrt(kernel length) keeps the summed
        # taps O(1) instead of growing with max_len.
        nn.init.normal_(self.out.weight, std=1.0 / math.sqrt(self.max_len))
        rates = torch.linspace(-math.log(DECAY_TARGET) / DECAY_SLOW, -math.log(DECAY_TARGET) / DECAY_FAST, channels)
        self.decay_rates: Tensor
        self.register_buffer("decay_rates", rates)

    def features(self, length: int, dtype: torch.dtype) -> Tensor:
        """Positional features of lags 0..length-1: (L, 1 + 2 * bands) = [t, cos(2 pi b t), sin(2 pi b t)]."""
        t = torch.arange(length, dtype=dtype, device=self.decay_rates.device) / self.max_len  # (L,)
        freqs = 2 * math.pi * torch.arange(1, self.bands + 1, dtype=dtype, device=t.device)  # (bands,)
        angles = t[:, None] * freqs  # (L, bands)
        return torch.cat([t[:, None], torch.cos(angles), torch.sin(angles)], dim=-1)

    def forward(self, length: int, dtype: torch.dtype) -> Tensor:
        """The kernel h0 for lags 0..length-1 in ``dtype``: (C, L)."""
        z = self.features(length, dtype)  # (L, 1 + 2 * bands)
        z = self.act_hidden(F.linear(z, self.hidden.weight.to(dtype), self.hidden.bias.to(dtype)))  # (L, order)
        z = self.act_inner(F.linear(z, self.inner.weight.to(dtype), self.inner.bias.to(dtype)))  # (L, order)
        h = F.linear(z, self.out.weight.to(dtype))  # (L, C)
        t = torch.arange(length, dtype=dtype, device=h.device) / self.max_len  # (L,)
        window = torch.exp(-t[:, None] * self.decay_rates.to(dtype))  # (L, C)
        return (h * window).T  # (C, L)


class PhaseFreeConditioner(nn.Module):
    """Type I conditioning network: ``H = Conv_f(|rfft(Conv_t(v), 2L)|^2 / L)``, real.

    Attributes:
        time_conv: depthwise, causal, no bias (a bias would make zero-padded steps nonzero; module docstring).
        freq_conv: depthwise over frequency, centred, with bias.
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.time_conv = nn.Conv1d(channels, channels, kernel, groups=channels, bias=False)
        self.freq_conv = nn.Conv1d(channels, channels, kernel, groups=channels, padding=kernel // 2)

    def forward(self, v: Tensor) -> Tensor:
        """Frequency response from the conditioning input.

        Args:
            v: (B, C, L), float32 or float64.

        Returns:
            (B, C, L + 1) complex, on the rfft grid of size 2L; the imaginary part is 0.
        """
        length = v.shape[-1]
        u = _causal_depthwise(v, self.time_conv.weight, None)  # (B, C, L)
        spectrum = torch.fft.rfft(u, n=2 * length)  # (B, C, L + 1)
        power = (spectrum.real.square() + spectrum.imag.square()) / length  # (B, C, L + 1), periodogram
        response = _centred_conv(power, self.freq_conv)  # (B, C, L + 1)
        return torch.complex(response, torch.zeros_like(response))


class CrossCorrelationConditioner(nn.Module):
    """Type II conditioning network: ``H = Conv_f(conj(rfft(Conv_k(v), 2L)) * rfft(Conv_q(v), 2L) / L)``.

    Attributes:
        key_conv, query_conv: depthwise, causal, no bias.
        freq_conv: over frequency, centred, with bias; groups of 2 -> 2 channels mix each channel's
            [real, imaginary] pair.
    """

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.key_conv = nn.Conv1d(channels, channels, kernel, groups=channels, bias=False)
        self.query_conv = nn.Conv1d(channels, channels, kernel, groups=channels, bias=False)
        self.freq_conv = nn.Conv1d(2 * channels, 2 * channels, kernel, groups=channels, padding=kernel // 2)

    def forward(self, v: Tensor) -> Tensor:
        """Frequency response from the conditioning input.

        Args:
            v: (B, C, L), float32 or float64.

        Returns:
            (B, C, L + 1) complex, on the rfft grid of size 2L.
        """
        length = v.shape[-1]
        keys = torch.fft.rfft(_causal_depthwise(v, self.key_conv.weight, None), n=2 * length)  # (B, C, L + 1)
        queries = torch.fft.rfft(_causal_depthwise(v, self.query_conv.weight, None), n=2 * length)
        cross = torch.conj(keys) * queries / length  # (B, C, L + 1), spectrum of the cross-correlation
        parts = torch.stack([cross.real, cross.imag], dim=-2)  # (B, C, 2, L + 1)
        parts = parts.flatten(-3, -2)  # (B, 2C, L + 1), channels [re_0, im_0, re_1, im_1, ...]
        mixed = _centred_conv(parts, self.freq_conv)  # (B, 2C, L + 1)
        mixed = mixed.unflatten(-2, (-1, 2))  # (B, C, 2, L + 1)
        return torch.complex(mixed[..., 0, :], mixed[..., 1, :])


_CONDITIONERS: dict[str, type[PhaseFreeConditioner] | type[CrossCorrelationConditioner]] = {
    "type1": PhaseFreeConditioner,
    "type2": CrossCorrelationConditioner,
}


class OrchidBlock(nn.Module):
    """Order-2 Orchid block over time: (..., L, D) -> (..., L, D); see the module docstring.

    Not causal within a window when ``config.conditioning != "none"``; use ``causal_last`` over trajectories.

    Attributes:
        in_proj: Linear D -> 3D, output laid out as [x0 | x1 | v].
        short_conv: depthwise Conv1d over the 3D channels, applied causally (left padding by hand).
        implicit_filter: the static kernel h0.
        conditioner: the network for h_theta, or None when ``conditioning == "none"``.
        skip: (D,) the GlobalConv skip ("D" in Hyena).
        out_proj: Linear D -> D.
    """

    def __init__(self, d_model: int, config: OrchidConfig) -> None:
        super().__init__()
        require_int("d_model", d_model, 1)
        self.d_model = d_model
        self.config = config
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.short_conv = nn.Conv1d(3 * d_model, 3 * d_model, config.short_kernel, groups=3 * d_model)
        self.implicit_filter = ImplicitFilter(d_model, config)
        self.conditioner: PhaseFreeConditioner | CrossCorrelationConditioner | None = None
        if config.conditioning != "none":
            self.conditioner = _CONDITIONERS[config.conditioning](d_model, config.cond_kernel)
        self.skip = nn.Parameter(torch.randn(d_model))
        self.out_proj = nn.Linear(d_model, d_model)

    def kernel(self, v: Tensor) -> Tensor:
        """The long-conv kernel k_v = h0 + irfft(H(v), 2L)[:L], lag 0 first.

        Args:
            v: (B, D, L) conditioning input, float32 or float64 (call with autocast off).

        Returns:
            (B, D, L), or (1, D, L) when there is no conditioner.
        """
        length = v.shape[-1]
        static = self.implicit_filter(length, v.dtype).unsqueeze(0)  # (1, D, L)
        if self.conditioner is None:
            return static
        response = self.conditioner(v)  # (B, D, L + 1)
        # Causal projection: lags >= L of the length-2L inverse are the kernel's negative lags; drop them.
        return static + torch.fft.irfft(response, n=2 * length)[..., :length]  # (B, D, L)

    def _global_conv(self, y: Tensor, v: Tensor) -> Tensor:
        """GlobalConv(y; k_v) in float32 (float64 stays float64) with autocast off; (B, D, L) -> (B, D, L)."""
        dtype = torch.promote_types(y.dtype, torch.float32)
        with torch.autocast(device_type=y.device.type, enabled=False):
            kernel = self.kernel(v.to(dtype))  # (B or 1, D, L)
            out = fft_causal_conv(y.to(dtype), kernel, self.skip)  # (B, D, L)
        return out.to(y.dtype)

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[-1] != self.d_model:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (..., L, {self.d_model})")
        length = x.shape[-2]
        if not 1 <= length <= self.config.max_len:
            raise ValueError(
                f"x has shape {tuple(x.shape)}, sequence length L={length}; expected "
                f"1 <= L <= model.orchid.max_len={self.config.max_len}"
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block along time.

        Args:
            x: (..., L, D), any leading batch dims (none allowed), 1 <= L <= max_len.

        Returns:
            (..., L, D) in x's dtype (or autocast's).
        """
        self._check_input(x)
        *batch, length, d = x.shape
        x = x.reshape(-1, length, d)  # (B, L, D)
        z = self.in_proj(x).transpose(1, 2)  # (B, 3D, L)
        features = _causal_depthwise(z, self.short_conv.weight, self.short_conv.bias)  # (B, 3D, L)
        x0, x1, v = features.split(d, dim=1)  # each (B, D, L)
        y = self._global_conv(v * x1, z[:, 2 * d :])  # (B, D, L); kernel from v before its short conv
        out = self.out_proj((y * x0).transpose(1, 2))  # (B, L, D)
        return out.reshape(*batch, length, d)  # (..., L, D)

    def causal_last(self, x: Tensor, window: int) -> Tensor:
        """Causal use over a trajectory: row t is the block's last output on the window ending at step t.

        The window of step t is x[t - window + 1 .. t] with zero rows before step 0, so row t depends on x[<= t]
        only, whatever the conditioning. Costs one forward of length ``window`` per step (T windows batched).

        Args:
            x: (..., T, D) a trajectory.
            window: steps per window, 1 <= window <= max_len.

        Returns:
            (..., T, D).
        """
        require_int("window", window, 1)
        if x.dim() < 2 or x.shape[-1] != self.d_model:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (..., T, {self.d_model})")
        padded = F.pad(x, (0, 0, window - 1, 0))  # (..., T + window - 1, D)
        windows = padded.unfold(-2, window, 1)  # (..., T, D, window)
        windows = windows.movedim(-1, -2)  # (..., T, window, D)
        return self(windows)[..., -1, :]  # (..., T, D)
