"""SALAD training: a pre-training round, then R rounds with entropy-ranked progressive anchors.

A run directory holds config.json (everything to rebuild the model), checkpoint.pt (weights, bank,
bank labels, optimiser and RNG state; loadable with weights_only=True), metrics.jsonl (one line per
epoch), train.csv / val.csv (the exact image lists) and val_scores.npz. Training resumes from the
last completed epoch of checkpoint.pt.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import salad
from salad.data import Sample, read_samples, require_normals
from salad.errors import BackendUnavailableError, ConfigError, DataError, RunError
from salad.metrics import auc as _auc  # None unless both classes are present
from salad.progress import progress
from salad.scoring import by_name, check_k, score_torch
from salad.train.config import (  # noqa: F401 - moved to train/config.py; importable from here as before
    CPU,
    METHODS,
    PAPER,
    PRESETS,
    RUN_SCHEMA,
    Method,
    TrainConfig,
    method_of,
    round_of,
)
from salad.train.console import epoch_line, say, validation_line
from salad.train.datasets import preload, training_pair
from salad.train.losses import discrimination_terms, neighbours_of_round, select_anchors
from salad.train.memory_bank import MemoryBank
from salad.train.models import SaladAutoencoder
from salad.train.rundir import (  # noqa: F401 - moved to train/rundir.py; importable from here as before
    RUN_FILES,
    RUN_MARKERS,
    claim_run_dir,
    is_run_dir,
    split_by_patient,
    write_list,
)
from salad.train.tilt import pad_bank


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def scoring_bank(model: SaladAutoencoder, rows: torch.Tensor) -> torch.Tensor:
    """The bank the score compares `model.embed` with: the learned rows, padded with φ = 0 when the model is tilted."""
    return pad_bank(rows) if model.tilted else rows


@torch.no_grad()
def embed_all(model: SaladAutoencoder, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Unit embeddings of preprocessed images [N,1,S,S] with the model in eval mode."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = [model.embed(images[s : s + batch].to(dev)).cpu() for s in range(0, len(images), batch)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, model.config.embedding_dim)


class Replicas:
    """How the training step is shared among processes. This base is one process: every hook is the identity.

    salad.train.distributed.DistributedReplicas implements the hooks with torch.distributed (DDP,
    SyncBatchNorm, all_gather), so the Trainer's loop is the same code in both cases.
    """

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes the run directory (config, lists, metrics, checkpoints)."""
        return self.rank == 0

    def prepare(self, model: SaladAutoencoder, find_unused_parameters: bool) -> tuple[SaladAutoencoder, torch.nn.Module]:
        """(the model to save and evaluate, the module that runs the training forward)."""
        return model, model

    def local(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's share of a global batch."""
        return batch

    def gather(self, idx: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bank indices and embeddings of the whole global batch, in global-batch order."""
        return idx, z

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Per-process metric sums → their mean over processes."""
        return values

    def describe(self) -> dict[str, Any]:
        """Extra entries for config.json (none for one process)."""
        return {}


class Trainer:
    """Owns one run directory: builds the model and bank, trains, checkpoints, resumes, scores validation."""

    #: Print a line per epoch and the validation figure at the end (train/console.py); `salad -q` silences them.
    log_epochs = True

    def __init__(
        self, cfg: TrainConfig, out: Path, train: Sequence[Sample], val: Sequence[Sample], data_desc: dict[str, Any],
        replicas: Replicas | None = None,
    ):
        cfg.validate()
        self.cfg, self.out = cfg, out
        self.replicas = replicas or Replicas()
        self.train_samples, self.val_samples = list(train), list(val)
        self.data_desc = data_desc
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError("--device cuda was requested but torch sees no CUDA device; use --device cpu.")
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.model = SaladAutoencoder(cfg.model_config()).to(self.device)
        if cfg.weights:
            from salad.train.models import load_weights

            load_weights(self.model.encoder, cfg.weights)
        self.bank = MemoryBank(len(self.train_samples), cfg.model_config().embedding_dim, cfg.bank_momentum, self.gen).to(self.device)
        self.bank.labels.copy_(torch.tensor([s.label for s in self.train_samples], dtype=torch.int64))
        n_normal = int((self.bank.labels == 0).sum())
        check_k(cfg.score_k, n_normal)
        # Without the reconstruction term the decoder has no gradient: DDP must be told it is unused.
        self.model, self.net = self.replicas.prepare(self.model, find_unused_parameters=not method_of(cfg.method).reconstruction)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.start_epoch = 0
        self.is_anchor: torch.Tensor | None = None
        self.neighbours: torch.Tensor | None = None

    # ---- persistence -------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            "schema_version": RUN_SCHEMA,
            "toolkit_version": salad.__version__,
            "train": self.cfg.to_dict(),
            "model": self.cfg.model_config().to_dict(),
            "preprocessing": self.cfg.preprocess_config().to_dict(),
            "data": self.data_desc,
            "n_train": len(self.train_samples),
            "n_train_anomalous": int(sum(s.label for s in self.train_samples)),
            "n_val": len(self.val_samples),
            **self.replicas.describe(),
        }

    def save(self, epoch: int, finished: bool = False) -> None:
        if not self.replicas.is_main:
            return
        state = {
            "schema_version": RUN_SCHEMA,
            "config": self.config_dict(),
            "model": self.model.state_dict(),
            "bank": self.bank.rows.cpu(),
            "bank_labels": self.bank.labels.cpu(),
            "optimizer": self.opt.state_dict(),
            "epoch": epoch,
            "is_anchor": None if self.is_anchor is None else self.is_anchor.cpu(),
            "neighbours": None if self.neighbours is None else self.neighbours.cpu(),
            "rng": self.gen.get_state(),
            "finished": finished,
        }
        atomic_torch_save(state, self.out / "checkpoint.pt")

    def load(self, state: dict[str, Any] | None = None) -> None:
        """Resume from checkpoint.pt, or from `state` already read from it (by the main process)."""
        state = load_checkpoint(self.out / "checkpoint.pt") if state is None else state
        saved = state["config"]["train"]
        mine = self.cfg.to_dict()
        diff = {k: (saved.get(k), mine[k]) for k in mine if k not in ("device", "threads", "checkpoint_every") and saved.get(k) != mine[k]}
        if diff:
            raise ConfigError(
                f"{self.out}: cannot resume, the checkpoint was trained with other settings {diff} "
                "(saved, requested). Resume with the same options, or use --force to start again."
            )
        if state["bank"].shape[0] != len(self.bank):
            raise DataError(f"{self.out}: checkpoint bank has {state['bank'].shape[0]} rows but the data has {len(self.bank)} images.")
        self.model.load_state_dict(state["model"])
        self.bank.rows.copy_(state["bank"])
        self.opt.load_state_dict(state["optimizer"])
        self.is_anchor = None if state["is_anchor"] is None else state["is_anchor"].to(self.device)
        self.neighbours = None if state["neighbours"] is None else state["neighbours"].to(self.device)
        self.gen.set_state(state["rng"])
        self.start_epoch = int(state["epoch"]) + 1

    # ---- training ----------------------------------------------------------------------------
    def _lr(self, epoch: int) -> float:
        if self.cfg.lr_schedule == "constant":
            return self.cfg.lr
        frac = epoch / max(1, self.cfg.epochs)
        return self.cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * frac)))

    def _val_scores(self, val_images: torch.Tensor, bank_rows: torch.Tensor) -> np.ndarray:
        z = embed_all(self.model, val_images)
        outputs = by_name(score_torch(z, bank_rows.cpu(), min(self.cfg.score_k, bank_rows.shape[0])))
        return outputs[self.cfg.score].numpy()

    def fit(self) -> dict[str, Any]:
        """Train to the configured epochs (from `start_epoch`); the main process writes the run and returns its summary."""
        cfg = self.cfg
        main = self.replicas.is_main
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(self.config_dict(), indent=2))
            write_list(self.out / "train.csv", self.train_samples)
            write_list(self.out / "val.csv", self.val_samples)
        pcfg = cfg.preprocess_config()
        images = preload(self.train_samples, pcfg, "reading training films")
        val_images = preload(self.val_samples, pcfg, "reading validation films") if self.val_samples and main else None
        val_labels = np.array([s.label for s in self.val_samples])
        method = method_of(cfg.method)  # the registry says which terms this member of the family uses
        metrics_path = self.out / "metrics.jsonl"
        if main and self.start_epoch == 0 and metrics_path.exists():
            metrics_path.unlink()
        t_run = time.perf_counter()
        bar = progress(range(self.start_epoch, cfg.epochs), desc="training", unit="epoch", initial=self.start_epoch,
                       total=cfg.epochs, disable=not main, leave=True)
        for epoch in bar:
            t0 = time.perf_counter()
            rnd = round_of(cfg, epoch)
            round_start = epoch == cfg.pretrain_epochs + (rnd - 1) * cfg.round_epochs if rnd > 0 else False
            if method.aggregation and rnd > 0 and (round_start or self.is_anchor is None):
                # Entropies and neighbour sets from clean (un-augmented, eval-mode) embeddings of this round's model.
                clean = embed_all(self.model, images).to(self.device)
                k = neighbours_of_round(cfg.neighbours, cfg.neighbours_growth, rnd)
                self.is_anchor, self.neighbours = select_anchors(clean, cfg.tau, k, rnd)
            for g in self.opt.param_groups:
                g["lr"] = self._lr(epoch)
            row = self._train_epoch(images, epoch, rnd, method)
            if not main:
                continue
            anchors = int(self.is_anchor.sum()) if self.is_anchor is not None and method.aggregation and rnd > 0 else 0
            row.update(epoch=epoch, round=rnd, lr=self._lr(epoch), anchors=anchors)
            if val_images is not None and len(val_images):
                vs = self._val_scores(val_images, self.bank.normal_rows())
                row["val_score_mean"] = float(vs.mean())
                auc = _auc(val_labels, vs)
                if auc is not None:
                    row["val_auc"] = auc
            row["seconds"] = time.perf_counter() - t0
            with open(metrics_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            postfix = {"loss": f"{row['loss']:.3f}"} | ({"val_auc": f"{row['val_auc']:.3f}"} if "val_auc" in row else {})
            bar.set_postfix(postfix)
            if self.log_epochs:
                say(epoch_line(row, cfg.epochs))
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                self.save(epoch)
        if not main:
            return {}
        return self._finish(images, val_images, val_labels, t_run)

    def _train_epoch(self, images: torch.Tensor, epoch: int, rnd: int, method: Method) -> dict[str, Any]:
        """One epoch's steps over the shuffled films: loss, reconstruction and discrimination means over every process."""
        cfg, n = self.cfg, len(images)
        use_mse, use_disc, use_agg = method.reconstruction, method.discrimination, method.aggregation
        self.model.train()
        perm = torch.randperm(n, generator=self.gen)
        sums = {"loss": 0.0, "mse": 0.0, "disc": 0.0}
        steps = 0
        for s in range(0, n - cfg.batch_size + 1 if n >= cfg.batch_size else 1, cfg.batch_size):
            idx = perm[s : s + cfg.batch_size]
            # Every process draws the whole global batch's augmentation from the shared generator, then
            # keeps its share: the global batch is the single-process batch, whatever the process count.
            view, target = training_pair(images[idx], cfg.augment, self.gen)
            x = self.replicas.local(view).to(self.device)
            idx_d = self.replicas.local(idx).to(self.device)
            z, recon = self.net(x)
            mse = F.mse_loss(recon, self.replicas.local(target).to(self.device)) if use_mse else torch.zeros((), device=self.device)
            if use_disc:
                terms = discrimination_terms(
                    z, idx_d, self.bank.rows, cfg.tau,
                    self.neighbours if use_agg and rnd > 0 else None,
                    self.is_anchor if use_agg and rnd > 0 else None, form=cfg.latent_loss,
                )
                disc = terms.mean()
            else:
                disc = torch.zeros((), device=self.device)
            loss = mse + cfg.lam * disc
            if not math.isfinite(float(loss.detach())):
                raise RunError(
                    f"{self.out}: the training loss became {float(loss.detach())} at epoch {epoch}, step {steps} "
                    f"(reconstruction {float(mse.detach())}, discrimination {float(disc.detach())}). The run stops "
                    "here; the last checkpoint is from the previous epoch. Check the films for non-finite pixels "
                    "and lower --lr."
                )
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.bank.update(*self.replicas.gather(idx_d, z))
            sums["loss"] += float(loss.detach())
            sums["mse"] += float(mse.detach())
            sums["disc"] += float(disc.detach())
            steps += 1
        return {k: v / max(1, steps) for k, v in self.replicas.mean(sums).items()}

    def _finish(self, images: torch.Tensor, val_images: torch.Tensor | None, val_labels: np.ndarray,
                t_run: float) -> dict[str, Any]:
        """After the last epoch: the final bank and tilt, the finished checkpoint, the validation scores and threshold."""
        cfg = self.cfg
        if cfg.bank_refresh:
            # Score against clean (un-augmented, eval-mode) embeddings: the same view a console will see.
            self.bank.replace(embed_all(self.model, images).to(self.device))
        if self.model.tilt is not None:  # fitted on the training normals and the final bank (train/tilt.py)
            normal = (self.bank.labels == 0).cpu()
            self.model.tilt.fit(images[normal].to(self.device), self.bank.normal_rows(), cfg.score_k)
        self.save(cfg.epochs - 1, finished=True)
        summary: dict[str, Any] = {"epochs": cfg.epochs, "train_seconds": time.perf_counter() - t_run}
        if val_images is not None and len(val_images):
            z = embed_all(self.model, val_images)
            outputs = by_name(score_torch(z, scoring_bank(self.model, self.bank.normal_rows().cpu()), cfg.score_k))
            np.savez(
                self.out / "val_scores.npz",
                **{name: value.numpy() for name, value in outputs.items()}, label=val_labels,
                path=np.array([str(Path(s.path).resolve()) for s in self.val_samples]),
            )
            auc = _auc(val_labels, outputs[cfg.score].numpy())
            summary["val_auc"] = auc
            if auc is not None:
                normal_images = images[self.bank.labels.cpu() == 0].numpy()
                summary["validation"] = write_validation(self.out, cfg, val_labels, outputs[cfg.score].numpy(),
                                                         normal_images, val_images.numpy())
        if self.log_epochs:
            say(validation_line(summary, cfg.score, len(self.val_samples)))
        return summary

VALIDATION = "validation.json"


def floor_margin(floor: float) -> float:
    """How far a learned AUC must beat a floor: 0.05, or half the floor's distance to 1.0 if that is smaller."""
    return min(0.05, (1.0 - floor) / 2.0)


def write_validation(out: Path, cfg: TrainConfig, labels: np.ndarray, scores: np.ndarray, train_normals: np.ndarray,
                     val_images: np.ndarray) -> dict[str, Any]:
    """AUC on the labelled validation films beside every training-free floor (same preprocessing and bank).

    Written to RUN/validation.json; export refuses a run whose AUC does not beat every floor by floor_margin.
    """
    from salad.train.floors import floors

    auc = _auc(labels, scores)
    floor_aucs = {f.name: _auc(labels, f.score(train_normals, val_images)) for f in floors(cfg.model_config(), cfg.score_k, cfg.seed)}
    short = {name: round(value + floor_margin(value), 4) for name, value in floor_aucs.items() if value is not None}
    result = {
        "score": cfg.score, "auc": auc, "n_normal": int((labels == 0).sum()), "n_abnormal": int((labels == 1).sum()),
        "floors": floor_aucs, "needed": short,
        "beats_floors": auc is not None and all(auc >= need for need in short.values()),
    }
    (out / VALIDATION).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a run checkpoint safely (weights_only=True) and check its schema."""
    if not path.is_file():
        raise DataError(f"{path}: no checkpoint. Is this a run directory written by `salad train`?")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot load checkpoint ({type(exc).__name__}: {exc}). Is the file complete?") from exc
    if not isinstance(state, dict) or state.get("schema_version") != RUN_SCHEMA:
        got = state.get("schema_version") if isinstance(state, dict) else type(state).__name__
        raise DataError(
            f"{path}: run schema {got!r}, this toolkit reads schema {RUN_SCHEMA}. Retrain or use a matching salad-edge version."
        )
    return state


def prepare_data(
    data: str | Path, val: str | Path | None, cfg: TrainConfig
) -> tuple[list[Sample], list[Sample], dict[str, Any]]:
    """Training samples (normals, plus known anomalies in the AR setting) and validation samples."""
    samples = read_samples(data)
    normals = require_normals(samples, data)
    desc: dict[str, Any] = {"train_source": str(data), "val_source": str(val) if val else None}
    if val is not None:
        val_samples = read_samples(val)
        train_normals = normals
    else:
        train_normals, val_samples = split_by_patient(normals, cfg.val_fraction, cfg.seed)
        # Abnormal films in --data are not trained on (unless as known anomalies): those of a held-out share of
        # their patients label the validation set, so training and export can tell a run that detects from one
        # that does not (an all-normal validation set cannot).
        seen = {s.patient for s in train_normals if s.patient}
        candidates = [s for s in samples if s.label == 1 and (s.patient is None or s.patient not in seen)]
        val_abnormal = split_by_patient(candidates, cfg.val_fraction, cfg.seed)[1] if candidates else []
        val_samples = list(val_samples) + val_abnormal
        desc["val_source"] = f"{cfg.val_fraction:.0%} of the training normals, held out by patient" + (
            f", and {len(val_abnormal)} abnormal films of {cfg.val_fraction:.0%} of the abnormal patients" if val_abnormal else "")
    train = list(train_normals)
    if cfg.known_anomaly_ratio > 0:
        held = {s.path for s in val_samples}
        abnormal = [s for s in samples if s.label == 1 and s.path not in held]
        want = int(round(cfg.known_anomaly_ratio * len(train_normals) / (1.0 - cfg.known_anomaly_ratio)))
        if want > len(abnormal):
            raise DataError(f"{data}: --known-anomaly-ratio {cfg.known_anomaly_ratio} needs {want} abnormal films, found {len(abnormal)} "
                            "outside validation. Give a folder with normal/ and a folder of confirmed abnormal films (any other "
                            "name), or a CSV path,label[,patient_id]; or lower --known-anomaly-ratio.")
        rng = random.Random(cfg.seed)
        train += rng.sample(abnormal, want)
    if len(train) < cfg.batch_size:
        raise DataError(f"{data}: {len(train)} training images is fewer than one batch ({cfg.batch_size}); lower --batch-size.")
    return train, val_samples, desc


def train_run(
    data: str | Path,
    out: str | Path,
    cfg: TrainConfig,
    val: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    log_epochs: bool = True,
) -> dict[str, Any]:
    """Train a run directory from `data`; the public entry point behind `salad train`.

    log_epochs: print a line per epoch and the validation figure on stderr (off in the demo, which prints its steps).
    """
    out = Path(out)
    train, val_samples, desc = prepare_data(data, val, cfg)
    trainer = Trainer(cfg, out, train, val_samples, desc)
    trainer.log_epochs = log_epochs
    if claim_run_dir(out, resume, force):
        trainer.load()
    return trainer.fit()
