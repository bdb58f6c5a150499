"""The LeJEPA objective: Epps-Pulley constants, properties, gradients, a float64 reference,
two-process agreement, bf16 inputs, and the loss parts."""

from __future__ import annotations

import importlib.util
import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lejepa_cli.errors import UsageError
from lejepa_cli.objective import (
    LeJEPALoss,
    _EcfSums,
    epps_pulley,
    lejepa_loss,
    sigreg,
    sigreg_directions,
)

GAUSSIAN_MEAN = 1.0525  # E[EP] of a Gaussian sample under the default quadrature, for every N
ZERO_SAMPLE = 0.402048  # EP of an all-zero sample, divided by N


def reference_epps_pulley(x: torch.Tensor, knots: int = 17, t_max: float = 3.0) -> torch.Tensor:
    """The definition, written out: the trapezoid rule on the full symmetric grid, in float64."""
    x = x.double()
    n = x.shape[0]
    t = torch.linspace(-t_max, t_max, 2 * knots - 1, dtype=torch.float64)  # (T,)
    dt = t[1] - t[0]
    trapezoid = torch.full_like(t, dt)
    trapezoid[0] = trapezoid[-1] = dt / 2
    xt = x.unsqueeze(-1) * t  # (N, M, T)
    real = xt.cos().mean(0)  # (M, T)
    imag = xt.sin().mean(0)  # (M, T)
    gauss = torch.exp(-0.5 * t.square())
    integrand = ((real - gauss).square() + imag.square()) * gauss  # (M, T)
    return n * (integrand * trapezoid).sum(-1)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- constants from the definition -------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "m", "tol"), [(64, 40000, 0.02), (512, 12000, 0.03), (4096, 3000, 0.07)]
)
def test_gaussian_samples_average_the_quadrature_constant(n, m, tol):
    # E[EP] = sum_k w_k (1 - g_k^2) for every N; the spread of EP is about 1, so the mean over m
    # columns is within about 4 standard errors of the constant.
    x = torch.randn(n, m, generator=_generator(n))
    assert epps_pulley(x).mean().item() == pytest.approx(GAUSSIAN_MEAN, abs=tol)


def test_all_zero_sample():
    for n in (1, 7, 300):
        ep = epps_pulley(torch.zeros(n, 3))
        torch.testing.assert_close(ep, torch.full((3,), n * ZERO_SAMPLE), rtol=1e-5, atol=0)


def test_one_dimensional_sample_gives_a_scalar():
    x = torch.randn(50, generator=_generator(3))
    ep = epps_pulley(x)
    assert ep.shape == ()
    torch.testing.assert_close(ep, epps_pulley(x.unsqueeze(1))[0])


# ---- properties --------------------------------------------------------------------------------


def test_permutation_invariance():
    x = torch.randn(200, 8, generator=_generator(4), dtype=torch.float64)
    perm = torch.randperm(200, generator=_generator(5))
    torch.testing.assert_close(epps_pulley(x[perm]), epps_pulley(x), rtol=1e-12, atol=0)


def test_non_gaussian_samples_score_higher():
    n, m = 256, 256
    x = torch.randn(n, m, generator=_generator(6))
    uniform = (torch.rand(n, m, generator=_generator(7)) * 2 - 1) * math.sqrt(3)  # variance 1
    gaussian = epps_pulley(x).mean()
    assert gaussian.item() == pytest.approx(GAUSSIAN_MEAN, abs=0.2)
    others = {
        "shifted": x + 0.5,
        "wider": x * 1.5,
        "narrower": x * 0.6,
        "uniform": uniform,
        "collapsed": torch.full((n, m), 0.3),
    }
    for name, sample in others.items():
        assert epps_pulley(sample).mean() > 3 * gaussian, name


# ---- agreement with the definition -------------------------------------------------------------


@pytest.mark.parametrize(("knots", "t_max"), [(17, 3.0), (5, 2.0), (33, 4.0)])
def test_matches_float64_reference_in_value_and_gradient(knots, t_max):
    x = torch.randn(96, 12, generator=_generator(8)) * 1.3 + 0.2
    x[:, 0] = torch.linspace(-3, 3, 96)  # a deterministic column, and a collapsed one
    x[:, 1] = 0.7
    ours = x.clone().requires_grad_()
    ref = x.double().requires_grad_()
    ep = epps_pulley(ours, knots, t_max)
    ep_ref = reference_epps_pulley(ref, knots, t_max)
    assert ep.dtype == torch.float32
    torch.testing.assert_close(ep.double(), ep_ref.detach(), rtol=1e-5, atol=0)
    weights = torch.linspace(0.5, 1.5, 12)  # a non-uniform upstream gradient
    (ep * weights).sum().backward()
    (ep_ref * weights.double()).sum().backward()
    scale = ref.grad.abs().max()
    assert ((ours.grad.double() - ref.grad).abs().max() / scale).item() < 1e-5
    # in float64 the two agree to rounding
    ep64 = epps_pulley(x.double(), knots, t_max)
    torch.testing.assert_close(ep64, ep_ref.detach(), rtol=1e-10, atol=0)


def test_power_recurrence_matches_direct_cosines():
    # float32 sums built by repeated multiplication by exp(i dt x), against float64 cos/sin.
    x = torch.randn(512, 64, generator=_generator(9)) * 3
    dt = 3.0 / 16
    sums = _EcfSums.apply(x, dt, 17)  # (K, M, 2)
    t = torch.arange(17, dtype=torch.float64) * dt
    xt = x.double().unsqueeze(-1) * t  # (N, M, K)
    direct = torch.stack([xt.cos().mean(0).T, xt.sin().mean(0).T], dim=-1)  # (K, M, 2)
    mean = sums.double() / 512
    assert (mean - direct).abs().max().item() < 1e-5
    big = direct.abs() > 0.05
    assert ((mean - direct).abs()[big] / direct.abs()[big]).max().item() < 1e-5


# ---- gradients ---------------------------------------------------------------------------------


def test_gradcheck_epps_pulley():
    x = torch.randn(6, 3, generator=_generator(10), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: epps_pulley(v), (x,))
    assert torch.autograd.gradcheck(lambda v: epps_pulley(v, knots=4, t_max=2.5), (x,))


def test_gradcheck_sigreg():
    z = torch.randn(7, 4, generator=_generator(11), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: sigreg(v, step=2, num_slices=5), (z,))
    views = torch.randn(3, 5, 4, generator=_generator(12), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: sigreg(v, step=1, num_slices=3), (views,))


def test_gradients_finite_for_huge_inputs():
    z = (torch.randn(64, 16, generator=_generator(13)) * 1e4).requires_grad_()
    value = sigreg(z, num_slices=32)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(z.grad).all()
    assert z.grad.abs().sum() > 0


# ---- SIGReg ------------------------------------------------------------------------------------


def test_sigreg_is_mean_over_directions_and_views():
    z = torch.randn(3, 40, 6, generator=_generator(14), dtype=torch.float64)
    a = sigreg_directions(6, 10, step=5, dtype=torch.float64)
    per_view = [epps_pulley(z[v] @ a).mean() for v in range(3)]
    torch.testing.assert_close(sigreg(z[0], directions=a), per_view[0])
    torch.testing.assert_close(sigreg(z, directions=a), torch.stack(per_view).mean())
    torch.testing.assert_close(sigreg(z, step=5, num_slices=10), torch.stack(per_view).mean())


def test_directions_are_unit_seeded_and_change_every_step():
    a = sigreg_directions(32, 100, step=7)
    assert a.shape == (32, 100) and a.dtype == torch.float32
    torch.testing.assert_close(a.norm(dim=0), torch.ones(100))
    torch.manual_seed(123)  # the global RNG plays no part
    torch.testing.assert_close(sigreg_directions(32, 100, step=7), a, rtol=0, atol=0)
    assert not torch.allclose(sigreg_directions(32, 100, step=8), a)
    assert sigreg_directions(32, 100, 7, dtype=torch.float64).dtype == torch.float64


def test_bf16_input_gives_float32_result():
    z = torch.randn(128, 32, generator=_generator(15))
    low = z.bfloat16().requires_grad_()
    value = sigreg(low, num_slices=64)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(sigreg(z, num_slices=64).item(), rel=2e-2)
    value.backward()
    assert low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad.float()).all()
    loss = lejepa_loss(low[None, :64], torch.stack([low[:64], low[64:]]), num_slices=16)
    assert all(part.dtype == torch.float32 for part in loss)


def test_bad_arguments_say_what_to_use():
    with pytest.raises(UsageError, match="at least 2 knots"):
        epps_pulley(torch.randn(5, 2), knots=1)
    with pytest.raises(UsageError, match="t_max"):
        epps_pulley(torch.randn(5, 2), t_max=0.0)
    with pytest.raises(UsageError, match="non-empty"):
        epps_pulley(torch.randn(0, 2))
    with pytest.raises(UsageError, match=r"\(D, M\)"):
        sigreg(torch.randn(5, 4), directions=torch.randn(3, 2))
    with pytest.raises(UsageError, match="step >= 0"):
        sigreg_directions(4, 2, step=-1)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        lejepa_loss(torch.randn(2, 3, 4), torch.randn(4, 3, 4), lam=1.5)
    with pytest.raises(UsageError, match="first Vg"):
        lejepa_loss(torch.randn(2, 3, 4), torch.randn(4, 3, 5))


# ---- the LeJEPA loss ---------------------------------------------------------------------------


def test_pred_by_hand():
    # global views (0, 0) and (2, 4): centre (1, 2); local view (1, 0).
    # squared errors: (1, 4), (1, 4), (0, 4) -> mean 14 / 6
    all_z = torch.tensor([[[0.0, 0.0]], [[2.0, 4.0]], [[1.0, 0.0]]])  # (V=3, B=1, K=2)
    parts = lejepa_loss(all_z[:2], all_z, num_slices=4)
    assert isinstance(parts, LeJEPALoss)
    assert parts.pred.item() == pytest.approx(14 / 6, rel=1e-6)


def test_lambda_selects_the_parts():
    all_z = torch.randn(4, 32, 8, generator=_generator(16))
    only_pred = lejepa_loss(all_z[:2], all_z, lam=0.0, step=3, num_slices=64)
    only_sig = lejepa_loss(all_z[:2], all_z, lam=1.0, step=3, num_slices=64)
    torch.testing.assert_close(only_pred.loss, only_pred.pred)
    torch.testing.assert_close(only_sig.loss, only_sig.sigreg)
    mixed = lejepa_loss(all_z[:2], all_z, step=3, num_slices=64)
    torch.testing.assert_close(mixed.loss, 0.95 * mixed.pred + 0.05 * mixed.sigreg)
    torch.testing.assert_close(mixed.sigreg, sigreg(all_z, step=3, num_slices=64))
    views = [sigreg(all_z[v], step=3, num_slices=64) for v in range(4)]
    torch.testing.assert_close(mixed.sigreg, torch.stack(views).mean())


def test_collapse_has_no_prediction_loss_but_large_sigreg():
    b = 64
    collapsed = torch.randn(8, generator=_generator(17)).expand(4, b, 8)  # every row the same
    parts = lejepa_loss(collapsed[:2], collapsed, num_slices=64)
    assert parts.pred.item() == 0.0
    # a constant sample scores at least as high as the all-zero one: N * 0.402
    assert parts.sigreg.item() > ZERO_SAMPLE * b
    healthy = lejepa_loss(*(2 * [torch.randn(1, b, 8, generator=_generator(18))]), num_slices=64)
    assert parts.sigreg > 10 * healthy.sigreg


def test_gradient_reaches_every_view():
    all_z = torch.randn(4, 16, 8, generator=_generator(19), requires_grad=True)
    lejepa_loss(all_z[:2], all_z, num_slices=32).loss.backward()
    assert (all_z.grad.abs().sum(dim=(1, 2)) > 0).all()


# ---- two processes -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_worker(rank: int, world_size: int, port: int, rows: list, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
    )
    try:
        torch.manual_seed(1000 + rank)  # different global RNG per rank: directions must not care
        z = torch.randn(3, 12, 6, generator=_generator(20))  # (V, N, D), the global batch
        lo, hi = rows[rank]
        local = z[:, lo:hi].clone().requires_grad_()
        value = sigreg(local, step=4, num_slices=16)
        value.backward()
        x = torch.randn(12, 5, generator=_generator(21))[lo:hi].clone().requires_grad_()
        ep = epps_pulley(x)
        ep.sum().backward()
        result = {
            "sigreg": value.detach(),
            "sigreg_grad": local.grad,
            "ep": ep.detach(),
            "ep_grad": x.grad,
            "dir4": sigreg_directions(6, 16, step=4),
            "dir5": sigreg_directions(6, 16, step=5),
        }
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process(tmp_path):
    # uneven halves: the global N comes from the reduction, not from world_size * local N
    rows = [(0, 5), (5, 12)]
    mp.spawn(_rank_worker, args=(2, _free_port(), rows, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    z = torch.randn(3, 12, 6, generator=_generator(20)).requires_grad_()
    value = sigreg(z, step=4, num_slices=16)
    value.backward()
    x = torch.randn(12, 5, generator=_generator(21)).requires_grad_()
    ep = epps_pulley(x)
    ep.sum().backward()
    for rank, (lo, hi) in enumerate(rows):
        got = results[rank]
        torch.testing.assert_close(got["sigreg"], value.detach(), rtol=1e-5, atol=0)
        torch.testing.assert_close(got["sigreg_grad"], z.grad[:, lo:hi], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got["ep"], ep.detach(), rtol=1e-5, atol=0)
        torch.testing.assert_close(got["ep_grad"], x.grad[lo:hi], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(results[0]["dir4"], results[1]["dir4"], rtol=0, atol=0)
    torch.testing.assert_close(results[0]["dir5"], results[1]["dir5"], rtol=0, atol=0)
    assert not torch.allclose(results[0]["dir4"], results[0]["dir5"])


# ---- the benchmark still runs ------------------------------------------------------------------


@pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="the CPU memory probe reads Linux /proc"
)
def test_bench_smoke():
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_sigreg.py"
    spec = importlib.util.spec_from_file_location("bench_sigreg", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lines = []
    (row,) = bench.main(["--sizes", "256", "--repeats", "1"], out=lines.append)
    assert row["n"] == 256 and len(lines) == 5
    assert row["rel_diff"] < 1e-4  # both implementations compute the same SIGReg
    assert 0 < row["memory_fraction"] < 0.5
