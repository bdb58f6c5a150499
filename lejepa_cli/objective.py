"""The LeJEPA objective: the Epps-Pulley statistic, SIGReg, and the LeJEPA loss.

Balestriero & LeCun, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the
Heuristics", arXiv:2511.08544.

Epps-Pulley statistic of a 1-D sample x_1..x_N against N(0, 1):

    EP(x)     = N * integral_{-tmax}^{tmax} |phi_hat(t) - exp(-t^2/2)|^2 * exp(-t^2/2) dt
    phi_hat(t) = (1/N) * sum_n exp(i t x_n)

by the trapezoid rule on a uniform symmetric grid. The integrand is even, so this is the rule on
[0, tmax] with K knots t_k = k * dt, dt = tmax / (K - 1), and every trapezoid weight doubled.

SIGReg(Z), Z of shape (N, D), is the mean of EP(Z a_m) over M unit directions a_m drawn from a
generator seeded by the training step (the same on every rank, new every step).

The statistic needs, per knot and direction, only the two sums C_k = sum_n cos(t_k x_n) and
S_k = sum_n sin(t_k x_n). They are computed by `_EcfSums`, which keeps memory at O(N * M):
exp(i t_k x) = exp(i dt x)^k, so every knot after the first costs one complex multiply instead of
a cosine and a sine, and the sums are taken knot by knot. Its backward saves only x and evaluates
the polynomial sum_k w_k exp(i dt x)^k by Horner's rule, again without an (N, M, K) tensor.
Under torch.distributed the sums are added over ranks (differentiably) before the squaring, so
N is the global batch and the result is the one-process result on the concatenated batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from lejepa_cli.distributed import all_reduce_sum
from lejepa_cli.errors import UsageError

KNOTS = 17  # quadrature knots on [0, t_max]
T_MAX = 3.0  # upper end of the integration range (standard deviations)
NUM_SLICES = 1024  # random directions per SIGReg evaluation
LAMBDA = 0.05  # weight of SIGReg in the LeJEPA loss

# The seed of step s is s + _SEED_OFFSET, so SIGReg's directions do not coincide with draws
# that other code makes from torch.manual_seed(small integer).
_SEED_OFFSET = 0x5EED_5164


class LeJEPALoss(NamedTuple):
    """The LeJEPA loss and its two parts (0-d float32 tensors; `loss` carries the gradient)."""

    loss: torch.Tensor
    pred: torch.Tensor
    sigreg: torch.Tensor


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # bf16/fp16 embeddings are promoted: cos(t x) of a bf16 x keeps about two digits.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_quadrature(knots: int, t_max: float) -> None:
    if isinstance(knots, bool) or not isinstance(knots, int) or knots < 2:
        raise UsageError(
            f"the Epps-Pulley quadrature needs at least 2 knots, got {knots!r}; "
            f"use an integer such as the default {KNOTS}"
        )
    if not math.isfinite(t_max) or t_max <= 0:
        raise UsageError(
            f"the Epps-Pulley integration range t_max must be a positive number, got {t_max!r}; "
            f"use e.g. the default {T_MAX}"
        )


def _quadrature(
    knots: int, t_max: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Knots t_k on [0, t_max] and the weights of the doubled trapezoid rule times exp(-t^2/2)."""
    dt = t_max / (knots - 1)
    t = torch.arange(knots, device=device, dtype=torch.float64) * dt  # (K,)
    trapezoid = torch.full((knots,), 2.0 * dt, device=device, dtype=torch.float64)
    # The end knots have half weight; the one at t = 0 is interior on the symmetric grid, and
    # doubling its half weight gives exactly its weight there.
    trapezoid[0] = dt
    trapezoid[-1] = dt
    weights = trapezoid * torch.exp(-0.5 * t.square())  # (K,)
    return t.to(dtype), weights.to(dtype)


class _EcfSums(torch.autograd.Function):
    """x (..., N, M) -> (K, ..., M, 2): [sum_n cos(t_k x_n), sum_n sin(t_k x_n)], t_k = k * dt.

    Knot 0 holds (N, 0): the count, so that a sum over ranks also yields the global N.
    Forward and backward hold a few (..., N, M) tensors at a time and never one per knot.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, dt: float, knots: int) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.dt = dt
        ctx.knots = knots
        n = x.shape[-2]
        cdtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
        sums = torch.empty((knots, *x.shape[:-2], x.shape[-1]), device=x.device, dtype=cdtype)
        sums[0] = n
        angle = x * dt  # (..., N, M)
        base = torch.polar(torch.ones_like(angle), angle)  # exp(i dt x)    (..., N, M)
        del angle
        power = base.clone()  # exp(i t_k x), advanced in place knot by knot
        for k in range(1, knots):
            torch.sum(power, dim=-2, out=sums[k])
            if k + 1 < knots:
                power.mul_(base)
        return torch.view_as_real(sums)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_sums: torch.Tensor):
        # d/dx_n [g_C cos(t x_n) + g_S sin(t x_n)] = t (g_S cos(t x_n) - g_C sin(t x_n))
        #                                          = Re(t (g_S + i g_C) exp(i t x_n)),
        # so grad_x = Re(sum_k w_k exp(i dt x)^k), w_k = t_k (g_S + i g_C) = i t_k conj(g_C + i g_S)
        (x,) = ctx.saved_tensors
        dt, knots = ctx.dt, ctx.knots
        grad = torch.view_as_complex(grad_sums.to(x.dtype).contiguous())  # (K, ..., M)
        t = torch.arange(knots, device=x.device, dtype=x.dtype) * dt
        coeffs = 1j * grad.conj() * t.view(knots, *([1] * (grad.dim() - 1)))  # (K, ..., M)
        coeffs = coeffs.unsqueeze(-2)  # (K, ..., 1, M), broadcast over the sample
        angle = x * dt
        base = torch.polar(torch.ones_like(angle), angle)  # (..., N, M)
        del angle
        # Horner: w_1 z + ... + w_{K-1} z^{K-1} = z (w_1 + z (w_2 + ... + z w_{K-1})); w_0 = 0.
        acc = base * coeffs[knots - 1]  # (..., N, M)
        for k in range(knots - 2, 0, -1):
            acc.add_(coeffs[k]).mul_(base)
        return acc.real.contiguous(), None, None


def epps_pulley(
    x: torch.Tensor, knots: int = KNOTS, t_max: float = T_MAX, *, sync_ranks: bool = True
) -> torch.Tensor:
    """Epps-Pulley statistic of each column of `x` against N(0, 1) (arXiv:2511.08544).

        EP(x) = N * integral_{-tmax}^{tmax} |phi_hat(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt,
        phi_hat(t) = (1/N) sum_n exp(i t x_n),

    by the trapezoid rule with `knots` knots on [0, t_max] and doubled weights (the symmetric
    rule on [-t_max, t_max]). Large Gaussian samples average about 1.0525 with the defaults;
    an all-zero sample gives N * 0.402048.

    x: (N, M) -> (M,), one statistic per column; more generally (..., N, M) -> (..., M), and a
    1-D sample (N,) -> a 0-d tensor. Differentiable. bf16/fp16 inputs are computed in float32,
    float64 in float64.

    Under torch.distributed (and `sync_ranks`, the default) x holds this rank's rows of the
    sample: the characteristic-function sums are added over ranks before squaring, N is the
    global count, and the gradient is that of the one global statistic with respect to this
    rank's rows. Every rank must then call this with the same column layout. Pass
    `sync_ranks=False` to compute on this rank's rows alone (e.g. an evaluation on rank 0 only).
    """
    _check_quadrature(knots, t_max)
    if x.dim() == 0 or x.shape[-1 if x.dim() == 1 else -2] == 0:
        raise UsageError(
            f"the Epps-Pulley statistic needs a non-empty sample, got shape {tuple(x.shape)}; "
            "pass at least one row"
        )
    if x.dim() == 1:
        return epps_pulley(x.unsqueeze(-1), knots, t_max, sync_ranks=sync_ranks).squeeze(-1)
    dtype = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        x = x.to(dtype)
        t, weights = _quadrature(knots, t_max, x.device, dtype)
        sums = _EcfSums.apply(x, t_max / (knots - 1), knots)  # (K, ..., M, 2)
        if sync_ranks:
            sums = all_reduce_sum(sums)
        count = sums[0, ..., 0].detach()  # (..., M) global N (knot 0 sums cos(0) = 1)
        shape = (knots, *([1] * (sums.dim() - 2)))
        real = sums[..., 0] / count  # (K, ..., M)
        imag = sums[..., 1] / count  # (K, ..., M)
        err = (real - torch.exp(-0.5 * t.square()).view(shape)).square() + imag.square()
        return count * (weights.view(shape) * err).sum(0)  # (..., M)


def sigreg_directions(
    dim: int,
    num_slices: int,
    step: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The (dim, num_slices) unit directions SIGReg uses at `step`.

    Columns of a standard Gaussian matrix, each normalised to unit length, drawn on the CPU from
    a generator seeded by the step: the same on every rank and every device, new every step.
    """
    for name, value in (("dim", dim), ("num_slices", num_slices)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"SIGReg needs a positive integer {name}, got {value!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UsageError(f"SIGReg directions are seeded by a step >= 0, got {step!r}")
    generator = torch.Generator(device="cpu").manual_seed(step + _SEED_OFFSET)
    directions = torch.randn(dim, num_slices, generator=generator)  # (D, M)
    directions /= directions.norm(dim=0, keepdim=True)
    return directions.to(device=device, dtype=dtype)


def sigreg(
    z: torch.Tensor,
    step: int = 0,
    num_slices: int = NUM_SLICES,
    knots: int = KNOTS,
    t_max: float = T_MAX,
    directions: torch.Tensor | None = None,
    *,
    sync_ranks: bool = True,
) -> torch.Tensor:
    """SIGReg: mean over M random unit directions a_m of EP(Z a_m) (arXiv:2511.08544).

        SIGReg(Z) = (1/M) sum_m EP(Z a_m),   Z: (N, D),   a_m: columns of `sigreg_directions`

    z: (N, D) -> 0-d tensor (float32, or float64 for float64 input). A stack (V, N, D) of V
    samples, projected on the same directions in one batched call, gives the mean over views
    and directions. `directions` (D, M) replaces the draw seeded by `step` (then `step` and
    `num_slices` are not used). Distributed behaviour as in `epps_pulley`: N is the global batch.
    """
    if z.dim() < 2:
        raise UsageError(f"SIGReg takes embeddings of shape (N, D), got {tuple(z.shape)}")
    dtype = _compute_dtype(z)
    with torch.autocast(z.device.type, enabled=False):
        z = z.to(dtype)
        if directions is None:
            directions = sigreg_directions(z.shape[-1], num_slices, step, z.device, dtype)
        elif directions.dim() != 2 or directions.shape[0] != z.shape[-1]:
            raise UsageError(
                f"SIGReg directions must have shape (D, M) = ({z.shape[-1]}, M) for embeddings "
                f"of shape {tuple(z.shape)}, got {tuple(directions.shape)}"
            )
        projections = z @ directions.to(device=z.device, dtype=dtype)  # (..., N, M)
        return epps_pulley(projections, knots, t_max, sync_ranks=sync_ranks).mean()


def lejepa_loss(
    global_z: torch.Tensor,
    all_z: torch.Tensor,
    lam: float = LAMBDA,
    step: int = 0,
    num_slices: int = NUM_SLICES,
    *,
    knots: int = KNOTS,
    t_max: float = T_MAX,
    sync_ranks: bool = True,
) -> LeJEPALoss:
    """The LeJEPA loss of projector outputs for Vg global and V views (arXiv:2511.08544).

        centers = mean over the global views of z               (B, K)
        pred    = mean over views, batch and dims of (centers - z_v)^2   (all V views)
        sigreg  = mean over views of SIGReg(z_v)
        loss    = (1 - lam) * pred + lam * sigreg

    global_z: (Vg, B, K); all_z: (V, B, K), the global views first, then the local ones. No
    stop-gradient and no teacher: the gradient flows into the centers too. SIGReg is computed
    for all V views in one batched call, with one draw of directions (seeded by `step`).
    Everything is computed in float32 (float64 for float64 inputs).

    Under torch.distributed, `sigreg` is the global value (N = global batch, exact gradient
    with respect to this rank's rows) while `pred` is the mean over this rank's batch only. If
    parameter gradients are summed over ranks, the global loss is obtained by backpropagating
    (1 - lam) * pred / world_size + lam * sigreg; `loss` itself uses the local pred.
    """
    if not 0.0 <= lam <= 1.0:
        raise UsageError(f"the LeJEPA weight lambda must lie in [0, 1], got {lam!r}; try 0.05")
    if global_z.dim() != 3 or all_z.dim() != 3:
        raise UsageError(
            "lejepa_loss takes global_z (Vg, B, K) and all_z (V, B, K), got shapes "
            f"{tuple(global_z.shape)} and {tuple(all_z.shape)}"
        )
    if global_z.shape[1:] != all_z.shape[1:] or not 0 < global_z.shape[0] <= all_z.shape[0]:
        raise UsageError(
            f"global_z {tuple(global_z.shape)} must hold the first Vg of the V views in all_z "
            f"{tuple(all_z.shape)}, with the same batch and embedding sizes"
        )
    dtype = _compute_dtype(all_z)
    with torch.autocast(all_z.device.type, enabled=False):
        centers = global_z.to(dtype).mean(0)  # (B, K)
        views = all_z.to(dtype)  # (V, B, K)
        pred = (centers - views).square().mean()
        sig = sigreg(views, step, num_slices, knots, t_max, sync_ranks=sync_ranks)
        loss = (1.0 - lam) * pred + lam * sig
    return LeJEPALoss(loss=loss, pred=pred, sigreg=sig)
