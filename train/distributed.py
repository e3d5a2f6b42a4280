"""Data-parallel SALAD training with torch.distributed: `torchrun --nproc_per_node N -m salad.train …`.

Each process is one rank of one logical training run, and the global batch is exactly the batch one
process would train on:

- every rank draws the same permutation and the same augmentation of each global batch from the
  shared seed, then keeps its contiguous share (rank r takes rows r·B/N … (r+1)·B/N − 1);
- the model is wrapped in DistributedDataParallel (gradients averaged over ranks = the gradient of
  the global-batch mean), with SyncBatchNorm so BatchNorm normalises over the global batch, not each
  rank's share (plain BatchNorm would make N small batches of a different model);
- the memory bank is one logical bank: after each step every rank all_gathers the batch's indices
  and embeddings and applies the same update, so the banks stay bitwise identical, and the softmax
  over the bank and the anchor/neighbour selection are the single-process ones;
- rank 0 alone writes the run directory; on resume it reads checkpoint.pt and broadcasts it, so a run
  may resume with a different number of processes (or with `salad train`).

NCCL on GPUs (one per process, `LOCAL_RANK`), Gloo on CPU. torch's SyncBatchNorm only runs on GPUs,
and DistributedDataParallel refuses SyncBatchNorm on CPU modules: on CPU the same statistics are
computed by GlooSyncBatchNorm (all_reduces of the count, the sum and the centred squares per layer).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from salad.data import Sample
from salad.errors import BackendUnavailableError, ConfigError, SaladError
from salad.train.models import SaladAutoencoder
from salad.train.trainer import (
    Replicas,
    TrainConfig,
    Trainer,
    claim_run_dir,
    load_checkpoint,
    prepare_data,
)

T = TypeVar("T")
#: Environment variables torchrun sets for every worker.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: How long a collective may wait for a slow rank (validation on rank 0 runs between steps).
DEFAULT_TIMEOUT = dt.timedelta(minutes=30)


def launched_by_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """True inside a worker started by torchrun (or anything that sets the same env:// variables)."""
    env = os.environ if env is None else env
    return all(k in env for k in TORCHRUN_ENV)


def check_batch_split(batch_size: int, world_size: int) -> None:
    """The global batch must split evenly: each rank takes batch_size / world_size images."""
    if world_size < 1:
        raise ConfigError(f"{world_size} processes; expected at least 1.")
    if batch_size % world_size:
        lower, upper = batch_size - batch_size % world_size, batch_size + world_size - batch_size % world_size
        raise ConfigError(
            f"--batch-size {batch_size} does not split over {world_size} processes; the global batch is shared "
            f"equally, so use a multiple of {world_size} (e.g. {lower or upper} or {upper})."
        )


def check_devices(device: str, world_size: int) -> None:
    """A CUDA run needs one GPU per process on each node."""
    if not device.startswith("cuda"):
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise BackendUnavailableError("--device cuda was requested but torch sees no CUDA device; use --device cpu (Gloo).")
    if world_size > count:
        raise ConfigError(f"{world_size} processes on a node with {count} GPU(s); use --nproc ≤ {count} (one GPU per process).")


# -- SyncBatchNorm on CPU -------------------------------------------------------------------------


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with its gradient (the sum of the upstream gradients of every rank)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class GlooSyncBatchNorm(_BatchNorm):
    """BatchNorm over the global batch on CPU (Gloo), where torch's SyncBatchNorm (and DDP with it) refuse to run.

    Same parameters, buffers and state_dict as BatchNorm2d, so checkpoints do not depend on how a
    run was trained. Two-pass statistics (mean, then centred squares) like single-process BatchNorm,
    so the output agrees with one process on the whole batch to float32 rounding. In eval mode, or
    outside a process group, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        self._check_input_dim(input)
        group = dist.group.WORLD
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count_t = torch.tensor([input.numel() // input.shape[1]], dtype=torch.int64)
        dist.all_reduce(count_t, group=group)
        count = int(count_t)
        mean = _SumOverRanks.apply(input.sum(dims), group) / count
        centred = input - mean.view(shape)
        var = _SumOverRanks.apply(centred.square().sum(dims), group) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            with torch.no_grad():
                self.running_mean.mul_(1.0 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1.0 - factor).add_(var.detach() * (count / max(1, count - 1)), alpha=factor)
        return out


def _to_gloo_sync(module: nn.Module) -> nn.Module:
    """convert_sync_batchnorm's recursion, producing GlooSyncBatchNorm (same Parameter objects, same buffers)."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, nn.SyncBatchNorm | GlooSyncBatchNorm):
        out = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _to_gloo_sync(child))
    return out


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """BatchNorm over the global batch: torch.nn.SyncBatchNorm on GPUs, GlooSyncBatchNorm on CPU."""
    if next(model.parameters()).device.type == "cpu":
        return _to_gloo_sync(model)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


# -- the Trainer hooks ----------------------------------------------------------------------------


class DistributedReplicas(Replicas):
    """The Trainer's hooks over the default process group: DDP + SyncBatchNorm, shards, all_gather, means.

    sync_batchnorm=False keeps per-rank BatchNorm statistics: less communication, but each rank then
    normalises its own share of the batch, which is no longer the single-process model.
    """

    def __init__(self, sync_batchnorm: bool = True) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("torch.distributed is not initialised; start training with torchrun or `salad train --nproc N`.")
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.sync_batchnorm = sync_batchnorm
        self.device = torch.device("cpu")

    def prepare(self, model: SaladAutoencoder, find_unused_parameters: bool) -> tuple[SaladAutoencoder, nn.Module]:
        if self.sync_batchnorm:
            converted = sync_batchnorm(model)
            assert converted is model  # the root is not a BatchNorm: its children were replaced in place
        self.device = next(model.parameters()).device
        ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if self.device.type == "cuda" else None
        # DDP broadcasts rank 0's weights here; salad-no-mse leaves the decoder without gradients.
        net = DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)
        return model, net

    def local(self, batch: torch.Tensor) -> torch.Tensor:
        share = batch.shape[0] // self.world_size
        return batch[self.rank * share : (self.rank + 1) * share]

    def gather(self, idx: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _all_gather_cat(idx, self.world_size), _all_gather_cat(z.detach(), self.world_size)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(values, t.tolist(), strict=True)}

    def describe(self) -> dict[str, Any]:
        return {"distributed": {"world_size": self.world_size, "backend": str(dist.get_backend()), "sync_batchnorm": self.sync_batchnorm}}


def _all_gather_cat(t: torch.Tensor, world_size: int) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


# -- one rank of a run ----------------------------------------------------------------------------


class ReportedByMain(SaladError):
    """An error the main process hit and reports; the other ranks exit without repeating it.

    They exit with status 0: torchrun then names rank 0, whose message says why, as the job's failure,
    instead of stopping rank 0 before it has printed anything.
    """


def init_process_group(device: str, timeout: dt.timedelta = DEFAULT_TIMEOUT) -> None:
    """Join the env:// process group torchrun describes: NCCL on `cuda` (GPU = LOCAL_RANK), else Gloo."""
    if not launched_by_torchrun():
        missing = [k for k in TORCHRUN_ENV if k not in os.environ]
        raise ConfigError(f"not started by torchrun (no {missing} in the environment); use torchrun or `salad train --nproc N`.")
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.startswith("cuda"):
        check_devices(device, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", timeout=timeout, device_id=torch.device("cuda", local_rank))
    else:
        dist.init_process_group("gloo", timeout=timeout)


def from_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and hand its result (or its SaladError) to every rank.

    Used for what must happen once: reading the data lists, claiming the run directory, reading the
    checkpoint (which also makes resuming independent of a shared file system).
    """
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as exc:
            dist.broadcast_object_list([("error", f"{type(exc).__name__}: {exc}")], src=0)
            raise  # rank 0 reports it (a SaladError as one line, anything else with its traceback)
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise ReportedByMain(value)
    return value  # type: ignore[no-any-return]


def train_distributed(
    data: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    val: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    sync_batchnorm: bool = True,
) -> dict[str, Any] | None:
    """One rank of `salad train` under torchrun; returns the run summary on rank 0, None on the others."""
    out = Path(out)
    init_process_group(cfg.device)
    # On an error the group is left to the process's exit (train/__main__.py leaves at once): destroying
    # it while the other ranks are already leaving can make Gloo abort the process.
    check_batch_split(cfg.batch_size, dist.get_world_size())
    lists: tuple[list[Sample], list[Sample], dict[str, Any]] = from_main(lambda: prepare_data(data, val, cfg))
    trainer = Trainer(cfg, out, *lists, replicas=DistributedReplicas(sync_batchnorm=sync_batchnorm))
    state = from_main(lambda: load_checkpoint(out / "checkpoint.pt") if claim_run_dir(out, resume, force) else None)
    if state is not None:
        trainer.load(state)
    summary = trainer.fit()
    dist.barrier()  # rank 0 finishes the run directory before anyone reports success
    rank = dist.get_rank()
    dist.destroy_process_group()
    return summary if rank == 0 else None


# -- the launcher behind `salad train --nproc N` ---------------------------------------------------


def preflight(data: str | Path, out: str | Path, cfg: TrainConfig, val: str | Path | None, resume: bool, force: bool, nproc: int) -> None:
    """Every cheap check of a distributed run, in the launching process: mistakes cost one line, not N workers."""
    cfg.validate()
    check_batch_split(cfg.batch_size, nproc)
    check_devices(cfg.device, nproc)
    prepare_data(data, val, cfg)
    claim_run_dir(Path(out), resume, force, dry_run=True)


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """`torchrun --standalone --nproc-per-node N -m salad.train ARGS` with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "salad.train", *args]


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run `nproc` workers of `-m salad.train ARGS` on this machine with torchrun's launcher; 0 if all succeeded.

    Same as the torchrun command line (standalone rendezvous on a free port), but a failed worker,
    which has printed its own message, is summarised in one line instead of torchrun's traceback.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise ConfigError(f"--nproc {nproc}; expected at least 1.")
    try:
        run(get_args_parser().parse_args(torchrun_command(nproc, args)[3:]))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"error: training process {rank} of {nproc} exited with code {failure.exitcode}; its message is above.", file=sys.stderr)
        return 1
    return 0


def option_args(params: Sequence[Any], values: Mapping[str, Any], skip: Sequence[str] = ("nproc",)) -> list[str]:
    """Turn parsed click option values back into command-line arguments (for the worker processes).

    `params` are a click command's parameters; options left at None or at a false flag are omitted.
    """
    import click

    args: list[str] = []
    for p in params:
        if not isinstance(p, click.Option) or p.name in skip or p.name not in values:
            continue
        value = values[p.name]
        if value is None:
            continue
        if p.is_flag:
            if p.secondary_opts:
                args.append(p.opts[0] if value else p.secondary_opts[0])
            elif value:
                args.append(p.opts[0])
            continue
        for item in value if p.multiple else [value]:
            args += [p.opts[0], str(item)]
    return args
