"""export_bundle: a trained run directory → the self-verifying bundle of docs/architecture.md §4–5.

Order matters: every cheap check (options, run schema, bank, K, threshold inputs) runs before any
graph is traced, and the bundle is written into a temporary sibling that becomes `out` only after
onnx.checker, shape inference and ONNX Runtime have reproduced PyTorch on the reference images.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import salad
from salad.data import Sample, list_hash
from salad.errors import ConfigError, DataError, ExportValidationError, RunError, SaladError
from salad.fsutil import parse_json
from salad.manifest import DEFAULT_TOLERANCES, GraphSpec, Manifest, atomic_directory, sha256_file
from salad.manifest_blocks import Bank, Reference, Scores, Threshold
from salad.merge import merge_encoder_scorer, normalise_opsets
from salad.renames import renamed_keywords
from salad.scoring import NORM_EPS, SCORE_DEFINITIONS, SCORE_NAMES, check_k

from .graphs import (
    bank_tensor,
    bind_bank,
    export_encoder,
    export_scorer,
    set_metadata,
    write_bank_data,
)
from .reference import REFERENCE_KEYS, reference_outputs, select_reference, write_reference
from .spec import (
    BANK_DATA_FILE,
    BANK_FILE,
    BANK_INITIALIZER,
    BANK_INPUT,
    CHECKPOINT_FILE,
    PROTOBUF_LIMIT,
    REFERENCE_FILE,
    VALIDATION_BATCH_SIZES,
    GraphContract,
    check_opset,
    graph_contracts,
)
from .threshold import choose_threshold, drift_calibration, parse_operating_point, read_val_scores
from .validate import validate_bundle

#: Room left for the graph itself (nodes, encoder weights are counted separately) under the size limit.
_GRAPH_HEADROOM = 1 << 24
#: Bank rows must be unit vectors (the score is an arccos of dot products); float32 renormalisation is ~1e-7 off.
_UNIT_TOLERANCE = 1e-3
#: val_scores.npz must agree with what the checkpoint computes now (else the threshold is stale).
_VAL_SCORE_TOLERANCE = 1e-4


def read_run_config(run: Path) -> dict[str, Any]:
    """run/config.json, refusing anything that is not a run directory of a schema this toolkit knows."""
    from salad.train.trainer import RUN_SCHEMA

    if not run.is_dir():
        raise DataError(
            f"{run}: not a run directory. Expected the --out folder of `salad train` "
            "(config.json, checkpoint.pt, val.csv, val_scores.npz)."
        )
    path = run / "config.json"
    if not path.is_file():
        raise DataError(f"{path}: missing, so {run} is not a run directory written by `salad train`.")
    config = parse_json(path.read_bytes(), path, SaladError, "The run directory is damaged.")
    version = config.get("schema_version") if isinstance(config, dict) else None
    if version != RUN_SCHEMA:
        raise DataError(
            f"{path}: unknown run schema {version!r}; salad-edge {salad.__version__} exports run schema {RUN_SCHEMA}. "
            "Export with the salad-edge version that trained the run, or retrain it with this one."
        )
    return config


def checked_bank(rows: np.ndarray, labels: np.ndarray, dim: int, k: int, where: str) -> np.ndarray:
    """The normal bank rows as float32 [N, D], refusing NaN/Inf, zero or non-unit rows and an impossible K."""
    bank = np.ascontiguousarray(rows, dtype=np.float32)
    original = np.flatnonzero(labels == 0)  # row numbers in the run's full bank, for messages

    def rows_of(mask: np.ndarray) -> str:
        bad = original[np.flatnonzero(mask)]
        return f"{bad.size} row(s) (training rows {bad[:5].tolist()}{' …' if bad.size > 5 else ''})"

    if bank.ndim != 2 or bank.shape[1] != dim:
        raise DataError(f"{where}: memory bank has shape {tuple(bank.shape)}, expected [N, {dim}].")
    if bank.shape[0] == 0:
        raise DataError(f"{where}: the memory bank has no normal rows; retrain on normal films.")
    finite = np.asarray(np.isfinite(bank).all(axis=1))
    if not finite.all():
        raise RunError(
            f"{where}: memory bank has NaN/Inf in {rows_of(~finite)}; the run diverged. "
            "Retrain (e.g. with a lower --lr); a bundle with such a bank would score NaN."
        )
    norms = np.linalg.norm(bank.astype(np.float64), axis=1)
    if (norms < 1e-6).any():
        raise DataError(
            f"{where}: memory bank has all-zero {rows_of(norms < 1e-6)}; every bank row must be a unit vector. "
            "Retrain the run (a zero row gives arccos(0) = π/2 for every image)."
        )
    off = np.abs(norms - 1.0) > _UNIT_TOLERANCE
    if off.any():
        raise DataError(
            f"{where}: memory bank has {rows_of(off)} that are not unit vectors (norms {norms[off][:3].round(4).tolist()}); "
            "expected ‖m‖ = 1. Retrain, or re-normalise the bank in the checkpoint."
        )
    try:
        check_k(k, bank.shape[0])
    except SaladError as exc:
        raise SaladError(f"{where}: {exc}") from exc
    return bank


def _check_val_scores(run: Path, val: dict[str, np.ndarray], samples: list[Sample], ref: dict[str, np.ndarray]) -> None:
    """Refuse a val_scores.npz that the checkpoint no longer reproduces (a threshold on stale scores)."""
    index = {str(p): i for i, p in enumerate(val["path"].tolist())}
    pairs = [(j, index[str(s.path.resolve())]) for j, s in enumerate(samples) if str(s.path.resolve()) in index]
    if not pairs:
        return
    now = ref["score"][[j for j, _ in pairs]].astype(np.float64)
    then = val["score"][[i for _, i in pairs]].astype(np.float64)
    worst = int(np.abs(now - then).argmax())
    if abs(now[worst] - then[worst]) > _VAL_SCORE_TOLERANCE:
        name = samples[pairs[worst][0]].path.name
        raise DataError(
            f"{run / 'val_scores.npz'} does not match {run / CHECKPOINT_FILE}: {name} scored {then[worst]:.6f} at the end "
            f"of training but {now[worst]:.6f} now. The threshold would come from stale scores; finish or re-run training."
        )


def _graph_spec(contract: GraphContract, sha256: str, opset: int, external: list[str], details: dict[str, Any]) -> GraphSpec:
    return GraphSpec(
        file=contract.file, sha256=sha256, precision="fp32", opset=opset,
        inputs=list(contract.inputs), outputs=list(contract.outputs), external_data=external, details=details,
    )


@renamed_keywords(reference_images="reference_films")
def export_bundle(
    run: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    bank_as_input: bool = False,
    slim: bool = False,
    reference_films: int = 32,
    operating_point: str = "specificity:0.95",
    opset: int = 17,
    external_data_threshold: int = PROTOBUF_LIMIT,
    allow_below_floors: bool = False,
) -> Path:
    """Export run directory `run` to the bundle `out` and validate it; return `out`.

    A run whose labelled validation (≥ FLOOR_CHECK_MIN films of each class) shows it does not beat its own
    training-free floors is refused unless allow_below_floors: such a model has learned nothing a pixel
    statistic does not already know, and would ship anyway (docs/quality.md).

    bank_as_input: the scorer takes the bank as input "bank" [N, 200] (stored once as bank.npy)
    instead of holding it; slim: leave checkpoint.pt out (its sha256 stays in the manifest);
    external_data_threshold: a graph file that would be larger than this many bytes keeps the bank
    in bank.data (ONNX external data) — protobuf cannot write 2 GiB. reference_films: the films whose PyTorch outputs
    reference.npz keeps (`salad-export --reference-films`; the old reference_images= warns).
    """
    from salad.train.evaluate import load_run

    run, out = Path(run), Path(out)
    check_opset(opset)
    parse_operating_point(operating_point)
    run_config = read_run_config(run)
    validation = check_floors(run, allow_below_floors)
    if out.resolve() == run.resolve() or out.resolve() in run.resolve().parents:
        raise ConfigError(f"--out {out} would replace the run directory {run} it is exported from; choose another --out.")
    with atomic_directory(out, force=force) as tmp:
        loaded = load_run(run)
        cfg_model = loaded.model.config  # the scoring embedding: 200 wide, 201 with the centre-density tilt
        dim = int(cfg_model.output_dim if loaded.model.tilted else cfg_model.embedding_dim)
        labels = loaded.bank_labels.numpy()
        bank = checked_bank(loaded.bank.numpy(), labels, dim, loaded.score_k, str(run / CHECKPOINT_FILE))
        val = read_val_scores(run)
        threshold = choose_threshold(val[loaded.score_name], val["label"], operating_point, loaded.score_name)
        threshold["validation"]["drift"] = drift_calibration(val, loaded.score_name, loaded.preprocessing)

        samples = select_reference(run, reference_films)
        ref = reference_outputs(loaded, samples)
        _check_val_scores(run, val, samples, ref)

        graphs, files, bank_block = _write_graphs(tmp, loaded, bank, dim, opset, bank_as_input, external_data_threshold)
        bank_block = dataclasses.replace(bank_block, dropped_anomalous=int((labels != 0).sum()))
        write_reference(tmp / REFERENCE_FILE, ref)
        files[REFERENCE_FILE] = sha256_file(tmp / REFERENCE_FILE)
        checkpoint_sha = sha256_file(run / CHECKPOINT_FILE)
        if not slim:
            shutil.copyfile(run / CHECKPOINT_FILE, tmp / CHECKPOINT_FILE)
            files[CHECKPOINT_FILE] = checkpoint_sha

        manifest = Manifest(
            toolkit_version=salad.__version__,
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            source={"checkpoint_sha256": checkpoint_sha, "run_config": run_config, "slim": slim, "validation": validation},
            preprocessing=loaded.preprocessing.to_dict(),
            embedding_dim=dim,
            bank=bank_block,
            k=loaded.score_k,
            scores=Scores(
                default=loaded.score_name, outputs=tuple(SCORE_NAMES), definitions=dict(SCORE_DEFINITIONS),
                range=(0.0, 1.0), norm_eps=NORM_EPS,
            ),
            threshold=Threshold.from_json(threshold),
            graphs=graphs,
            files=files,
            parity={"fp32": dict(DEFAULT_TOLERANCES["fp32"])},
            reference=Reference(
                file=REFERENCE_FILE, images=len(samples), keys=tuple(REFERENCE_KEYS),
                n_normal=int((ref["label"] == 0).sum()), n_abnormal=int((ref["label"] == 1).sum()),
                source="val.csv", list_sha256=list_hash(samples), batch_sizes=tuple(VALIDATION_BATCH_SIZES),
            ),
        )
        _validate(manifest, tmp, out)
    return out


def _write_graphs(
    tmp: Path, loaded: Any, bank: np.ndarray, dim: int, opset: int, bank_as_input: bool, external_data_threshold: int,
) -> tuple[dict[str, GraphSpec], dict[str, str], Bank]:
    """Trace the encoder, build the scorer and the merged model, bind or store the bank, and write the three graphs.

    Returns their specs, the bank's files (bank.npy or bank.data → sha256) and the manifest's bank block
    (dropped_anomalous is the caller's).
    """
    import torch

    n_rows, k, size = int(bank.shape[0]), loaded.score_k, loaded.preprocessing.size
    contracts = graph_contracts(size, dim, n_rows, bank_as_input)
    encoder = export_encoder(loaded.model, contracts["encoder"], opset)
    scorer = export_scorer(k, dim, n_rows, contracts["scorer"], opset)
    model = merge_encoder_scorer(encoder, scorer)

    bank_sha = hashlib.sha256(bank.data).hexdigest()  # float32 C-order bytes, no copy
    files: dict[str, str] = {}
    external: list[str] = []
    if bank_as_input:
        np.save(tmp / BANK_FILE, bank, allow_pickle=False)
        files[BANK_FILE] = sha256_file(tmp / BANK_FILE)
    else:
        if bank.nbytes + encoder.ByteSize() + _GRAPH_HEADROOM > external_data_threshold:
            write_bank_data(bank, tmp / BANK_DATA_FILE)
            files[BANK_DATA_FILE] = sha256_file(tmp / BANK_DATA_FILE)
            external = [BANK_DATA_FILE]
        tensor = bank_tensor(bank, external[0] if external else None)
        scorer, model = bind_bank(scorer, tensor), bind_bank(model, tensor)
    form = "input" if bank_as_input else "initializer"
    bank_note = (
        f"graph input {BANK_INPUT!r} [N, D]" if bank_as_input
        else f"initializer {BANK_INITIALIZER!r} [D, N] (transposed bank rows)" + (f" in {BANK_DATA_FILE}" if external else "")
    )
    graphs: dict[str, GraphSpec] = {}
    for key, proto in (("encoder", encoder), ("scorer", scorer), ("model", model)):
        contract = contracts[key]
        props = {"salad.graph": key, "salad.toolkit_version": salad.__version__}
        if key != "encoder":
            props.update({"salad.k": str(k), "salad.bank_sha256": bank_sha, "salad.bank_form": form})
        set_metadata(proto, props)
        normalise_opsets(proto)
        onnx.save_model(proto, tmp / contract.file)
        details: dict[str, Any] = {"exporter": f"torch {torch.__version__} (TorchScript), onnx {onnx.__version__}"}
        if key != "encoder":
            details["bank"] = bank_note
        graphs[key] = _graph_spec(contract, sha256_file(tmp / contract.file), opset, external if key != "encoder" else [], details)
    block = Bank(
        rows=n_rows, dim=dim, dtype="float32", sha256=bank_sha, form=form,
        file=BANK_FILE if bank_as_input else None, initializer=None if bank_as_input else BANK_INITIALIZER,
        external_data=external[0] if external else None,
    )
    return graphs, files, block


def _validate(manifest: Manifest, tmp: Path, out: Path) -> None:
    """Write the manifest, run export's checks on the bundle in `tmp`, and record their figures in each graph's details."""
    manifest.write(tmp)
    try:
        measured = validate_bundle(tmp)
    except ExportValidationError as exc:
        raise ExportValidationError(
            str(exc).replace(str(tmp), str(out)) + f"\nNothing was written to {out}"
            + (f" ({out} is unchanged)." if out.exists() else "."),
            failures=[{**f, "message": str(f.get("message", "")).replace(str(tmp), str(out))} for f in exc.failures],
        ) from exc
    for key, values in measured.items():
        manifest.graphs[key].details["parity"] = values
    manifest.write(tmp)


#: Films of each class a run's labelled validation needs before export holds it to its floors: with fewer,
#: the AUC's standard error (about 0.05 at 40 + 40) is as large as the margin being judged.
FLOOR_CHECK_MIN = 100


def check_floors(run: Path, allow_below_floors: bool) -> dict[str, Any]:
    """The run's validation.json, checked: an ExportValidationError if the run does not beat its floors."""
    from salad.errors import ExportValidationError

    path = run / "validation.json"
    if not path.is_file():
        return {"checked": False, "reason": "no labelled validation films (normal and abnormal) in the run"}
    try:
        validation = json.loads(path.read_text(encoding="utf-8"))
        n_normal, n_abnormal = int(validation["n_normal"]), int(validation["n_abnormal"])
        auc, floors, needed = float(validation["auc"]), dict(validation["floors"]), dict(validation["needed"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: unreadable ({type(exc).__name__}: {exc}); it is written when training finishes.") from exc
    if min(n_normal, n_abnormal) < FLOOR_CHECK_MIN:
        return {**validation, "checked": False,
                "reason": f"{n_normal} normal / {n_abnormal} abnormal validation films: fewer than {FLOOR_CHECK_MIN} of a class"}
    short = {name: floors[name] for name, need in needed.items() if auc < float(need)}
    if short and not allow_below_floors:
        shown = ", ".join(f"{name} {floors[name]:.3f} (needs ≥ {float(needed[name]):.3f})" for name in short)
        raise ExportValidationError(
            f"{run}: validation AUC {auc:.3f} ({n_normal} normal / {n_abnormal} abnormal films) does not beat its "
            f"training-free floors: {shown}. The model adds nothing a pixel statistic does not already know. "
            "Retrain (see docs/quality.md), or pass --allow-below-floors to export it anyway (for testing a deployment).",
            failures=[{"check": "floor", "floor": name, "auc": auc, "floor_auc": floors[name], "needed": float(needed[name])}
                      for name in short],
        )
    return {**validation, "checked": True, "exported_below_floors": bool(short)}
