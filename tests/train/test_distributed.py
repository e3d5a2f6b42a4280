"""Data-parallel training: 2 Gloo processes on real films train the same model and bank as one process.

The multi-process runs are bounded (killed after TIMEOUT_S) and rendezvous on a free localhost port.

Float32 and Adam: two correct runs that only sum in a different order (two processes, or even one
process with 1 vs 2 threads) differ by ~1e-7 after the first forward, but Adam's first update is
≈ lr·sign(g), so a gradient element that rounding flips moves its weight by 2·lr: at lr 1e-3 the
embeddings of a 1- and a 2-thread single-process run differ by 2e-3 two steps later. So the
step-by-step equivalence is shown in float64 at the real learning rate (same code; the ranks'
banks are compared bitwise), and the float32 torchrun run at lr 1e-6.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import click  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from salad.cli import train as train_command  # noqa: E402
from salad.errors import SaladError  # noqa: E402
from salad.train import trainer as trainer_module  # noqa: E402
from salad.train.distributed import (  # noqa: E402
    GlooSyncBatchNorm,
    check_batch_split,
    option_args,
    preflight,
    sync_batchnorm,
    torchrun_command,
    train_distributed,
)
from salad.train.memory_bank import MemoryBank  # noqa: E402
from salad.train.models import SaladAutoencoder  # noqa: E402
from salad.train.trainer import TrainConfig, load_checkpoint, train_run  # noqa: E402

from ..conftest import SAMPLE_TRAIN, tiny_config  # noqa: E402

TIMEOUT_S = 240
#: 64 films (57 train after the 10 % patient hold-out), 3 global batches of 16 per epoch, 2 epochs (round 1 has anchors).
N_FILMS = 64
CLI_OPTIONS = ["--preset", "cpu", "--method", "salad", "--size", "64", "--width", "0.125", "--pretrain-epochs", "1", "--rounds", "1",
               "--round-epochs", "1", "--batch-size", "16", "--k", "5", "--threads", "1", "--centre-tilt", "0"]


def small_config() -> TrainConfig:
    """tiny_config as CLI_OPTIONS spell it (resume compares every setting)."""
    return tiny_config(pretrain_epochs=1, rounds=1, round_epochs=1, batch_size=16, score_k=5, threads=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _record(log: dict[str, Any], snapshot: Path | None) -> None:
    """In this process: log every bank update (indices, embeddings, bank after), the first step's gradients,
    every checkpoint write, and copy the checkpoint written after epoch 0 to `snapshot` (what an interrupted
    run leaves behind)."""
    log.update(steps=[], saves=0, grads=None)
    update, save, step = MemoryBank.update, trainer_module.atomic_torch_save, torch.optim.Adam.step

    def recording_update(self: MemoryBank, idx: torch.Tensor, z: torch.Tensor) -> None:
        update(self, idx, z)
        log["steps"].append((idx.clone(), z.detach().clone(), self.rows.clone()))

    def recording_save(state: dict[str, Any], path: Path) -> None:
        save(state, path)
        log["saves"] += 1
        if snapshot is not None and state["epoch"] == 0 and not state["finished"]:
            shutil.copyfile(path, snapshot)

    def recording_step(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        if log["grads"] is None:
            log["grads"] = [None if p.grad is None else p.grad.clone() for p in self.param_groups[0]["params"]]
        return step(self, *args, **kwargs)

    MemoryBank.update = recording_update  # type: ignore[method-assign]
    trainer_module.atomic_torch_save = recording_save
    torch.optim.Adam.step = recording_step  # type: ignore[method-assign]


@contextmanager
def float64() -> Iterator[None]:
    """Train in float64: the same code, with rounding too small for Adam to amplify (see the module docstring)."""
    dtype, preload = torch.get_default_dtype(), trainer_module.preload
    torch.set_default_dtype(torch.float64)
    trainer_module.preload = lambda *a, **k: preload(*a, **k).to(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        trainer_module.preload = preload


def _worker(rank: int, world: int, port: int, data: str, out: str, cfg: dict[str, Any], record: str) -> None:
    """One rank, set up exactly as torchrun sets up a worker (env://), then train_distributed in float64."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    log: dict[str, Any] = {}
    _record(log, Path(record) / "epoch0.pt" if rank == 0 else None)
    with float64():
        log["summary"] = train_distributed(data, out, TrainConfig.from_dict(cfg))
    torch.save(log, Path(record) / f"rank{rank}.pt")


def spawn_run(data: Path, out: Path, cfg: TrainConfig, record: Path, world: int = 2) -> list[dict[str, Any]]:
    """Train with `world` Gloo processes; return each rank's log. Fails (and kills them) after TIMEOUT_S."""
    record.mkdir(parents=True, exist_ok=True)
    args = (world, _free_port(), str(data), str(out), cfg.to_dict(), str(record))
    ctx = mp.start_processes(_worker, args=args, nprocs=world, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"{world}-process training did not finish in {TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    return [torch.load(record / f"rank{r}.pt", weights_only=False) for r in range(world)]


def single_run(data: Path, root: Path, cfg: TrainConfig, *, use_float64: bool) -> dict[str, Any]:
    """One process, same data and seed, every step recorded; the reference."""
    log: dict[str, Any] = {"root": root}
    update, save, step = MemoryBank.update, trainer_module.atomic_torch_save, torch.optim.Adam.step
    try:
        _record(log, root / "epoch0.pt")
        with float64() if use_float64 else nullcontext():
            train_run(data, root / "run", cfg)
    finally:
        MemoryBank.update, trainer_module.atomic_torch_save, torch.optim.Adam.step = update, save, step  # type: ignore[method-assign]
    return log


@pytest.fixture(scope="module")
def films(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("films")
    for src in sorted(SAMPLE_TRAIN.iterdir())[:N_FILMS]:
        (root / src.name).symlink_to(src)
    return root


@pytest.fixture(scope="module")
def single(films: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return single_run(films, tmp_path_factory.mktemp("single"), small_config(), use_float64=True)


@pytest.fixture(scope="module")
def two_ranks(films: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("two")
    return {"logs": spawn_run(films, root / "run", small_config(), root), "root": root}


def test_two_gloo_ranks_keep_one_bank_equal_to_one_process(single: dict[str, Any], two_ranks: dict[str, Any]) -> None:
    rank0, rank1 = two_ranks["logs"]
    steps = len(single["steps"])
    assert steps == 6 and len(rank0["steps"]) == len(rank1["steps"]) == steps  # 2 epochs × 3 global batches
    for s in range(steps):
        idx0, z0, bank0 = rank0["steps"][s]
        idx1, z1, bank1 = rank1["steps"][s]
        idx, z, bank = single["steps"][s]
        # One logical bank: both ranks hold bitwise the same rows after every step ...
        assert torch.equal(bank0, bank1), f"step {s}: the ranks' banks differ"
        assert torch.equal(idx0, idx1) and torch.equal(z0, z1)
        # ... which are the single-process rows: same global batch, same embeddings (SyncBatchNorm).
        assert torch.equal(idx0, idx), f"step {s}: global batch {idx0.tolist()} ≠ single-process batch {idx.tolist()}"
        assert (z0 - z).abs().max() <= 1e-5, f"step {s}: embeddings differ by {(z0 - z).abs().max():.2e}"
        assert (bank0 - bank).abs().max() <= 1e-5, f"step {s}: banks differ by {(bank0 - bank).abs().max():.2e}"
    # DDP's averaged gradient (through SyncBatchNorm's backward) is the global-batch gradient.
    for i, (g, g0, g1) in enumerate(zip(single["grads"], rank0["grads"], rank1["grads"], strict=True)):
        assert g is not None and g0 is not None and torch.equal(g0, g1)
        assert (g0 - g).norm() <= 1e-9 * g.norm(), f"parameter {i}: gradients differ by {(g0 - g).norm() / g.norm():.1e} (relative)"


def test_only_rank_0_writes_the_run_directory(single: dict[str, Any], two_ranks: dict[str, Any]) -> None:
    rank0, rank1 = two_ranks["logs"]
    assert rank0["saves"] == single["saves"] == 3 and rank1["saves"] == 0  # epoch 0, epoch 1, finished
    assert rank0["summary"]["epochs"] == 2 and rank1["summary"] is None
    run = two_ranks["root"] / "run"
    config = json.loads((run / "config.json").read_text())
    assert config["distributed"] == {"world_size": 2, "backend": "gloo", "sync_batchnorm": True}
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    a, b = load_checkpoint(single["root"] / "run" / "checkpoint.pt"), load_checkpoint(run / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()  # SyncBatchNorm leaves a plain BatchNorm checkpoint
    _assert_same_run(single["root"] / "run", run, atol=1e-6)


def _assert_same_run(a: Path, b: Path, atol: float) -> None:
    x, y = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    assert x["finished"] and y["finished"]
    assert (x["bank"] - y["bank"]).abs().max() <= atol, f"banks differ by {(x['bank'] - y['bank']).abs().max():.2e}"
    for key, value in x["model"].items():
        assert torch.allclose(value, y["model"][key], atol=atol), key
    # Adam's state came through the resume: a fresh optimizer would count 3 steps, not 6, and its second
    # moments would lack epoch 0's gradients (a ~50 % difference; rounding makes ~1e-4).
    for k, s in x["optimizer"]["state"].items():
        t = y["optimizer"]["state"][k]
        assert int(s["step"]) == int(t["step"]) == 6
        assert (s["exp_avg_sq"] - t["exp_avg_sq"]).norm() <= 1e-2 * s["exp_avg_sq"].norm()


def _interrupted_copy(run: Path, snapshot: Path, out: Path) -> Path:
    """`run` as it was after epoch 0: its epoch-0 checkpoint and first metrics line."""
    shutil.copytree(run, out)
    shutil.copyfile(snapshot, out / "checkpoint.pt")
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    (out / "metrics.jsonl").write_text(metrics[0] + "\n")
    return out


def test_a_two_process_run_resumes_in_one_process(films: Path, single: dict[str, Any], two_ranks: dict[str, Any], tmp_path: Path) -> None:
    part = _interrupted_copy(two_ranks["root"] / "run", two_ranks["root"] / "epoch0.pt", tmp_path / "part")
    assert load_checkpoint(part / "checkpoint.pt")["epoch"] == 0
    with float64():
        train_run(films, part, small_config(), resume=True)
    _assert_same_run(single["root"] / "run", part, atol=1e-6)


def test_torchrun_resumes_a_one_process_run_with_two(films: Path, tmp_path: Path) -> None:
    """The real entry point, in float32: `torchrun -m salad.train --resume` continues a `salad train` run.

    At --lr 1e-6, float32 rounding stays below the tolerance (at 1e-3 Adam amplifies it: see the docstring).
    """
    cfg = dataclasses.replace(small_config(), lr=1e-6)
    reference = single_run(films, tmp_path / "single", cfg, use_float64=False)
    part = _interrupted_copy(reference["root"] / "run", reference["root"] / "epoch0.pt", tmp_path / "part")
    cmd = torchrun_command(2, ["--data", str(films), "--out", str(part), "--resume", "--lr", "1e-6", *CLI_OPTIONS])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and json.loads(printed[0])["epochs"] == 2  # the summary, once (rank 0)
    _assert_same_run(reference["root"] / "run", part, atol=1e-5)
    assert [json.loads(line)["epoch"] for line in (part / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert json.loads((part / "config.json").read_text())["distributed"]["world_size"] == 2


def test_a_worker_error_is_reported_once_by_rank_0(films: Path, tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("someone's run")
    # What `salad train --nproc 2` runs once its own checks pass (here the launcher is not told about --out).
    args = ["--data", str(films), "--out", str(existing), *CLI_OPTIONS]
    code = f"import sys; from salad.train.distributed import launch; sys.exit(launch(2, {args!r}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert errors == [
        f"error: {existing}: run directory already exists. Pass --resume to continue it or --force to start again.",
        "error: training process 0 of 2 exited with code 1; its message is above.",
    ]  # rank 1 stays quiet: rank 0 decided about the directory and reported it
    assert "Traceback (most recent call last)" not in done.stderr
    assert (existing / "notes.txt").exists()


def test_plain_batchnorm_on_half_batches_is_another_model() -> None:
    """Why SyncBatchNorm: each rank normalising its own half-batch changes the embeddings (not so with sync)."""
    torch.manual_seed(0)
    model = SaladAutoencoder(small_config().model_config()).train()
    x = torch.rand(16, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        whole = model.embed(x)
        halves = torch.cat([model.embed(x[:8]), model.embed(x[8:])])
    assert (whole - halves).abs().max() > 1e-3


def test_gloo_sync_batchnorm_is_batchnorm_outside_a_process_group() -> None:
    torch.manual_seed(0)
    model = SaladAutoencoder(small_config().model_config())
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        before = model.embed(x)
    converted = sync_batchnorm(model)
    assert converted is model and any(isinstance(m, GlooSyncBatchNorm) for m in model.modules())
    assert model.state_dict().keys() == plain.keys()
    with torch.no_grad():
        assert torch.equal(model.embed(x), before)


def test_launcher_checks_before_starting_workers(films: Path, tmp_path: Path) -> None:
    with pytest.raises(SaladError, match=r"--batch-size 15 does not split over 2 processes.*e\.g\. 14 or 16"):
        check_batch_split(15, 2)
    with pytest.raises(SaladError, match="does not split over 4"):
        preflight(films, tmp_path / "new", dataclasses.replace(small_config(), batch_size=18), None, False, False, nproc=4)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "config.json").write_text("{}")
    with pytest.raises(SaladError, match="already exists. Pass --resume"):
        preflight(films, existing, small_config(), None, False, False, nproc=2)
    preflight(films, existing, small_config(), None, False, True, nproc=2)
    assert (existing / "config.json").exists()  # --force is checked, not carried out, by the launcher
    if not torch.cuda.is_available():
        with pytest.raises(SaladError, match="torch sees no CUDA device"):
            preflight(films, tmp_path / "gpu", dataclasses.replace(small_config(), device="cuda"), None, False, False, nproc=2)


def test_worker_arguments_reproduce_the_parsed_options(films: Path, tmp_path: Path) -> None:
    argv = ["--data", str(films), "--out", str(tmp_path), "--no-bank-refresh", "--resume", "--lr", "0.5", "--encoder", "cxr"]
    parsed = train_command.make_context("train", list(argv)).params
    again = train_command.make_context("train", option_args(train_command.params, parsed)).params
    assert again == parsed
    assert "--force" not in option_args(train_command.params, parsed)  # a false flag is left out


def test_module_entry_point_has_the_train_options() -> None:
    from salad.train.__main__ import main

    names = {p.name for p in main.params}
    assert {p.name for p in train_command.params} - {"nproc"} == names
    assert isinstance(main, click.Command)
    assert torchrun_command(3, ["--x"])[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3", "-m"]
    assert sys.executable == torchrun_command(1, [])[0]


def test_salad_train_nproc_hands_the_same_options_to_torchrun(films: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from salad.train import distributed

    launched: list[tuple[int, list[str]]] = []
    monkeypatch.setattr(distributed, "launch", lambda nproc, args: launched.append((nproc, list(args))) or 0)
    argv = ["--data", str(films), "--out", str(tmp_path / "run"), *CLI_OPTIONS]
    result = CliRunner().invoke(train_command, [*argv, "--nproc", "2"])
    assert result.exit_code == 0, result.output
    (nproc, args), = launched
    assert nproc == 2 and "--nproc" not in args
    assert train_command.make_context("train", list(args)).params == train_command.make_context("train", list(argv)).params
    refused = CliRunner().invoke(train_command, [*argv, "--nproc", "3"])  # 16 films per batch do not split in 3
    assert refused.exit_code == 2 and "does not split over 3 processes" in refused.output and len(launched) == 1
