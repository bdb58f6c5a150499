"""One optimisation step: normalise, forward, loss, backward, update.

Under torchrun every rank computes the loss on its shard; SIGReg sums its statistics over ranks,
so its value is the global one and its gradient with respect to each rank's embeddings is exact.
Parameter gradients are therefore *summed* over ranks (a DDP communication hook), and the
prediction loss, a local mean, is divided by the world size to keep the total exact.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from lejepa_cli import devices, distributed
from lejepa_cli.config import PretrainConfig
from lejepa_cli.distributed import DistInfo
from lejepa_cli.errors import DivergedError, UsageError
from lejepa_cli.model import DataSpec, LeJEPAModel
from lejepa_cli.objective import lejepa_loss
from lejepa_cli.training.optim import Schedule


def _sum_gradients_hook(state, bucket):
    # DDP averages gradients by default; the loss here is already the global loss (see the
    # module docstring), so the per-rank gradients must be added, not averaged.
    import torch.distributed as dist

    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def wrap_model(model: LeJEPAModel, cfg: PretrainConfig, device: torch.device, dist: DistInfo):
    """The module the step calls: the model, in DDP across ranks, compiled with --compile."""
    if device.type == "cuda":
        # NHWC weights and inputs: cuDNN's fast convolution kernels (a no-op for 2-D weights).
        model.to(memory_format=torch.channels_last)
        model.channels_last = True
    module: nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        # BatchNorm statistics stay per rank (as in the reference recipe); newer torch
        # spells the option forward_sync_buffers.
        params = inspect.signature(DDP.__init__).parameters
        sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
        module = DDP(model, device_ids=ids, **{sync: False})
        module.register_comm_hook(None, _sum_gradients_hook)
    if cfg.compile:
        module = torch.compile(module)
    return module


class TrainStep:
    """One optimisation step on a batch of uint8 views: normalise, forward, loss, backward, step.

    The engine's loop and `bench/bench_train.py` both call this object, so the benchmark
    measures exactly what training runs.
    """

    def __init__(
        self,
        model: LeJEPAModel,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        cfg: PretrainConfig,
        spec: DataSpec,
        device: torch.device,
        dist: DistInfo,
    ):
        self.raw_model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.cfg = cfg
        self.device = device
        self.dist = dist
        self.mean = torch.tensor(spec.mean, device=device).view(1, 1, -1, 1, 1)
        self.std = torch.tensor(spec.std, device=device).view(1, 1, -1, 1, 1)
        self.module = wrap_model(model, cfg, device, dist)

    def normalize(self, views: torch.Tensor) -> torch.Tensor:
        """uint8 (V, B, C, H, W) in 0-255, or float in 0-1 (runs with a pixels record) ->
        float (V, B, C, H, W) in the model's mean/std units."""
        x = views.to(self.device, non_blocking=True).float()
        if views.dtype == torch.uint8:
            x = x.div_(255.0)
        return (x - self.mean) / self.std

    def __call__(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor, step: int
    ) -> dict[str, float]:
        lr = self.schedule.apply(self.optimizer, step)
        g = self.normalize(global_crops)  # (Vg, B, 3, G, G)
        loc = self.normalize(local_crops) if local_crops.shape[0] else None  # (Vl, B, 3, L, L)
        with devices.autocast(self.device, self.cfg.precision):
            global_z, all_z = self._forward(g, loc)  # (Vg, B, K), (V, B, K)
        out = lejepa_loss(
            global_z.float(),
            all_z.float(),
            lam=self.cfg.lam,
            step=step,
            num_slices=self.cfg.num_slices,
        )
        lam, world = self.cfg.lam, self.dist.world_size
        # SIGReg is already global; the local prediction mean is a 1/world share of the global.
        backward_loss = (1 - lam) * out.pred / world + lam * out.sigreg
        pred = distributed.all_reduce_mean_detached(out.pred)
        loss = (1 - lam) * pred + lam * out.sigreg.detach()
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise DivergedError(f"loss became {loss_value} at step {step + 1}")
        self.optimizer.zero_grad(set_to_none=True)
        backward_loss.backward()
        self.optimizer.step()
        sig = float(out.sigreg.detach())
        return {"loss": loss_value, "pred": float(pred), "sigreg": sig, "lr": lr}

    def _forward(self, g: torch.Tensor, loc: torch.Tensor | None):
        try:
            return self.module(g, loc)
        except Exception as exc:
            if not (self.cfg.compile and _from_compiler(exc)):
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise UsageError(
                f"--compile failed on this machine ({type(exc).__name__}: {first}); "
                "rerun with --no-compile"
            ) from None


def _from_compiler(exc: BaseException) -> bool:
    """Whether an error was raised by torch.compile's machinery (a missing C++ compiler...)."""
    for e in (exc, exc.__cause__, exc.__context__):
        if e is not None and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            return True
    return False
