"""Fit the ASAP similarity estimator on a pool of known datasets (dataset membership is the only label).

Balanced triplet sampling (anchor dataset uniform, positive from the same dataset, negative from a
uniformly chosen other one), light geometric augmentation of every film, Adam with a cosine schedule,
a checkpoint every `checkpoint_every` steps for `--resume`, then the encoder is exported to ONNX, checked
against PyTorch in ONNX Runtime, and the estimator directory is written atomically (docs/similarity.md §3).
The form of the equations (config.loss.form: the paper's or salad-edge-v1) is recorded in estimator.json's config.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import salad
from salad.errors import DataError, RunError
from salad.fsutil import write_atomic
from salad.imageio import read_image
from salad.manifest import atomic_directory, sha256_file
from salad.onsite.distance import eqc
from salad.onsite.estimator import GRAPH, INFO, INPUT, OUTPUT, POINTS, SCHEMA, Latent, is_estimator
from salad.preprocess import PreprocessConfig, preprocess
from salad.progress import progress as progress_bar

from .model import LatentOnly, LossConfig, NetConfig, StyleNet, asap_loss

#: The estimator's input: 64² (the paper's experiments), no per-film intensity normalisation (that would erase style).
PREPROCESSING = PreprocessConfig(size=64, resize_mode="stretch", intensity_mode="display")
#: The β values `salad similarity fit` compares by EQC by default (the paper's 0.6, more style, no style terms).
BETA_CHOICES = (0.3, 0.6, 1.0)
#: ONNX Runtime must reproduce the PyTorch latent points to this (absolute, latent units).
PARITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class FitConfig:
    """Everything that decides the fitted estimator (its hash names a checkpoint `--resume` may continue)."""

    steps: int = 600
    batch: int = 16  # triplets per step (48 films)
    lr: float = 1e-3
    seed: int = 0
    max_films: int = 600  # per dataset, drawn at random
    augment: bool = True
    loss: LossConfig = field(default_factory=LossConfig)
    net: NetConfig = field(default_factory=NetConfig)
    checkpoint_every: int = 50

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["loss"], d["net"] = self.loss.to_dict(), self.net.to_dict()
        return d

    def digest(self, datasets: Mapping[str, np.ndarray]) -> str:
        """sha256 of the config and the films' bytes: what a checkpoint must match to be resumed."""
        h = hashlib.sha256(json.dumps({k: v for k, v in self.to_dict().items() if k != "checkpoint_every"},
                                      sort_keys=True).encode())
        for name in sorted(datasets):
            h.update(name.encode())
            h.update(np.ascontiguousarray(datasets[name]).tobytes())
        return h.hexdigest()


def load_films(paths: Sequence[Path], config: PreprocessConfig = PREPROCESSING, desc: str = "reading films") -> np.ndarray:
    """Films on disk → (n, 1, S, S) float32 estimator input."""
    return np.stack([preprocess(read_image(p), config) for p in progress_bar(paths, desc=desc, unit="img")])


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small positioning changes (rotation ±5°, scale ±7 %, shift ±4 %), black outside the film: content, not style."""
    b = x.shape[0]
    ang = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(5.0)
    scale = 1.0 + (torch.rand(b, generator=gen) * 2 - 1) * 0.07
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * 0.08  # grid units: 0.08 = 4 % of the side
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0


class TripletSampler:
    """Balanced triplets: anchor dataset uniform, positive from it, negative from a uniformly drawn other dataset."""

    def __init__(self, datasets: Mapping[str, np.ndarray], seed: int) -> None:
        self.names = sorted(datasets)
        self.films = [torch.from_numpy(np.ascontiguousarray(datasets[n], dtype=np.float32)) for n in self.names]
        self.gen = torch.Generator().manual_seed(seed)

    def _pick(self, ds: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.films[int(i)][int(torch.randint(len(self.films[int(i)]), (1,), generator=self.gen))]
                            for i in ds])

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k = len(self.names)
        a = torch.randint(k, (batch,), generator=self.gen)
        n = (a + 1 + torch.randint(k - 1, (batch,), generator=self.gen)) % k
        return self._pick(a), self._pick(a), self._pick(n)


def _subsample(datasets: Mapping[str, np.ndarray], limit: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(datasets):
        films = np.asarray(datasets[name], dtype=np.float32)
        if films.ndim != 4 or films.shape[1] != 1 or films.shape[2] != films.shape[3]:
            raise DataError(f"dataset {name!r}: expected (n, 1, S, S) preprocessed films, received shape {films.shape}.")
        if len(films) < 2:
            raise DataError(f"dataset {name!r} has {len(films)} film(s); a known dataset needs at least 2 (anchor and positive).")
        out[name] = films[np.sort(rng.choice(len(films), limit, replace=False))] if len(films) > limit else films
    return out


def _checkpoint_path(out: Path) -> Path:
    return out.parent / f".{out.name}.fit.pt"


def train_estimator(datasets: Mapping[str, np.ndarray], out: Path, config: FitConfig, resume: bool = False,
                    threads: int | None = None, progress: bool = True) -> tuple[StyleNet, dict[str, Any]]:
    """Train the network; returns it (eval mode) and the training record. Resumes a checkpoint of the same digest."""
    if len(datasets) < 2:
        raise DataError(f"fitting needs at least 2 known datasets (membership is the only label); received {sorted(datasets)}.")
    if threads:
        torch.set_num_threads(threads)
    data = _subsample(datasets, config.max_films, config.seed)
    size = next(iter(data.values())).shape[-1]
    if size != config.net.size:
        raise DataError(f"films are {size}² but the network takes {config.net.size}²; preprocess with the estimator's config.")
    torch.manual_seed(config.seed)
    net = StyleNet(config.net)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, config.steps) / config.steps))
    )
    sampler = TripletSampler(data, config.seed)
    aug_gen = torch.Generator().manual_seed(config.seed + 1)
    digest = config.digest(data)
    ckpt = _checkpoint_path(out)
    step, history, seconds, cpu_seconds = 0, [], 0.0, 0.0
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        if state["digest"] == digest:
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            sampler.gen.set_state(state["sampler_rng"])
            aug_gen.set_state(state["aug_rng"])
            step, history, seconds = int(state["step"]), list(state["history"]), float(state["seconds"])
            cpu_seconds = float(state["cpu_seconds"])
    net.train()
    bar = progress_bar(total=config.steps, initial=step, desc="fitting the similarity estimator", unit="step",
                       disable=not progress, leave=True)
    t0 = time.perf_counter() - seconds
    cpu0 = time.process_time() - cpu_seconds
    while step < config.steps:
        a, p, n = sampler.sample(config.batch)
        if config.augment:
            a, p, n = (_augment(t, aug_gen) for t in (a, p, n))
        loss, parts = asap_loss(net, a, p, n, config.loss)
        if not torch.isfinite(loss):
            raise RunError(f"non-finite similarity loss at step {step} ({parts}); lower --lr.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        history.append({"step": step, "loss": float(loss.detach()), **parts})
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            buf = io.BytesIO()
            torch.save({"digest": digest, "net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "sampler_rng": sampler.gen.get_state(), "aug_rng": aug_gen.get_state(), "step": step,
                        "history": history, "seconds": time.perf_counter() - t0,
                        "cpu_seconds": time.process_time() - cpu0}, buf)
            out.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(ckpt, buf.getvalue())
    bar.close()
    net.eval()
    last = history[-min(50, len(history)):]
    record = {"steps": step, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - cpu0,
              "threads": torch.get_num_threads(),
              "final_losses": {k: float(np.mean([h[k] for h in last])) for k in ("loss", "mse", "style_rec", "triplet", "style_triplet")},
              "films": {k: len(v) for k, v in data.items()}}
    return net, record


def export_latent(net: StyleNet, path: Path, opset: int = 17) -> None:
    """Write image[b,1,S,S] → z[b,2] as ONNX (the encoder and head only)."""
    import warnings

    s = net.config.size
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LatentOnly(net).eval(), (torch.zeros(2, 1, s, s),), buf, input_names=[INPUT], output_names=[OUTPUT],  # type: ignore[arg-type]
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    write_atomic(path, buf.getvalue())


def fit_estimator(datasets: Mapping[str, np.ndarray], out: str | os.PathLike[str], config: FitConfig | None = None, *,
                  sources: Mapping[str, str] | None = None, resume: bool = False, force: bool = False,
                  threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Train, export and write an estimator directory; returns its estimator.json content.

    datasets: name → (n, 1, 64, 64) films preprocessed with PREPROCESSING. The known points stored are
    those of every given film (not only the subsample trained on), computed by the exported graph.
    """
    config = config or FitConfig()
    out = Path(out)
    if out.exists() and not force and not resume:
        raise DataError(f"{out}: already exists. Pass --force to replace it, or choose another --out.")
    net, record = train_estimator(datasets, out, config, resume=resume, threads=threads, progress=progress)
    with atomic_directory(out, force=force or resume, replaceable=is_estimator, what="estimator") as tmp:
        export_latent(net, tmp / GRAPH)
        latent = Latent(tmp / GRAPH, PREPROCESSING, threads=threads)
        points = {name: latent.embed(np.asarray(films, np.float32)) for name, films in sorted(datasets.items())}
        probe = np.concatenate([np.asarray(f[:16], np.float32) for f in datasets.values()])
        with torch.no_grad():
            ref = LatentOnly(net)(torch.from_numpy(probe)).numpy()
        worst = float(np.abs(latent.embed(probe) - ref).max())
        if worst > PARITY_TOLERANCE:
            raise RunError(f"ONNX Runtime's latent points differ from PyTorch's by {worst:.2e} (> {PARITY_TOLERANCE}); "
                           "the export is wrong. Report this with your torch and onnxruntime versions.")
        buf = io.BytesIO()
        np.savez(buf, **points)  # type: ignore[arg-type]
        write_atomic(tmp / POINTS, buf.getvalue())
        info = {
            "schema": SCHEMA, "toolkit_version": salad.__version__,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "preprocessing": PREPROCESSING.to_dict(), "latent_dim": int(config.net.latent),
            "graph": {"file": GRAPH, "sha256": sha256_file(tmp / GRAPH), "input": INPUT, "output": OUTPUT,
                      "onnxruntime_vs_torch_max_abs": worst},
            "points": {"file": POINTS, "sha256": sha256_file(tmp / POINTS)},
            "datasets": {name: {"films": int(len(points[name])), "source": (sources or {}).get(name, "")} for name in points},
            "eqc": eqc(points, config.loss.form), "config": config.to_dict(), "training": record,
        }
        write_atomic(tmp / INFO, (json.dumps(info, indent=2) + "\n").encode("utf-8"))
    _checkpoint_path(out).unlink(missing_ok=True)
    return info


def fit_by_eqc(datasets: Mapping[str, np.ndarray], out: str | os.PathLike[str], config: FitConfig, betas: Sequence[float], *,
               sources: Mapping[str, str] | None = None, resume: bool = False, force: bool = False,
               threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Fit one estimator per β and keep the one with the lowest EQC: the paper's label-free choice of hyper-parameters.

    Candidates are fitted into hidden siblings of `out` (each resumable); the winner is copied into `out` atomically
    with every candidate's EQC recorded under "selection", then the candidates are removed.
    """
    out = Path(out)
    if out.exists() and not force and not resume:
        raise DataError(f"{out}: already exists. Pass --force to replace it, or choose another --out.")
    if len(set(betas)) != len(betas) or not betas:
        raise DataError(f"--beta {list(betas)}: expected distinct values.")
    candidates: dict[float, tuple[Path, dict[str, Any]]] = {}
    for beta in betas:
        where = out.parent / f".{out.name}.beta-{beta:g}"
        cfg = replace(config, loss=replace(config.loss, beta=float(beta)))
        done = json.loads((where / INFO).read_text()) if resume and (where / INFO).is_file() else None
        if done is not None and done["config"] == cfg.to_dict():
            info = done
        else:
            info = fit_estimator(datasets, where, cfg, sources=sources, resume=resume, force=True, threads=threads, progress=progress)
        candidates[float(beta)] = (where, info)
    best = min(candidates, key=lambda b: candidates[b][1]["eqc"])
    where, info = candidates[best]
    info = {**info, "selection": {"by": "eqc (lower is better)", "chosen_beta": best,
                                  "eqc_by_beta": {f"{b:g}": c[1]["eqc"] for b, c in candidates.items()}}}
    with atomic_directory(out, force=True, replaceable=is_estimator, what="estimator") as tmp:
        for name in (GRAPH, POINTS):
            shutil.copy2(where / name, tmp / name)
        write_atomic(tmp / INFO, (json.dumps(info, indent=2) + "\n").encode("utf-8"))
    for path, _ in candidates.values():
        shutil.rmtree(path, ignore_errors=True)
    return info
