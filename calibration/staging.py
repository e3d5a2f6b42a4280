"""The staging copy of a bundle where variants are built and measured, and the atomic commit of one.

The copy is a sibling directory of hard links; the variant's graphs are written there, listed in the
copy's manifest and measured. `Staging.commit` then moves them into the bundle under pending names
and commits them through the calibration's `Bundle.edit` (one journal): a killed calibration leaves
either the old bundle or the new one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import salad
from salad.bundle import Bundle, BundleEdit
from salad.errors import CalibrationError
from salad.fsutil import temp_name
from salad.manifest import GraphSpec, Manifest

from .report import CalibrationReport

REPORT_DIR = "calibration"
#: Graph names of a variant: encoder.<p>.onnx and model.<p>.onnx (the scorer is shared and stays fp32).
VARIANT_GRAPHS = ("encoder", "model")


class Staging:
    """A sibling copy of the bundle, where variants are built and measured.

    Files are hard links (copies where linking fails, and always for ONNX external data, which
    onnx.checker refuses to read through a hard link).
    """

    def __init__(self, bundle: Bundle, precision: str) -> None:
        self.root = root = bundle.root
        self.original = manifest = bundle.manifest
        keys = [manifest.graph_key(g, precision) for g in VARIANT_GRAPHS]
        self.replaced = {manifest.graphs[k].file for k in keys if k in manifest.graphs}
        self.external = {f for g in manifest.graphs.values() for f in g.external_data}
        real = root.resolve()
        try:  # a sibling, so that hard links work and the variant files can be moved in with os.replace
            self.path = real.parent / temp_name(f".{real.name}.calibrate-")  # the owner pid lets a later run sweep it
            self.path.mkdir(mode=0o700)
        except OSError:  # a read-only parent: inside the bundle, which must be writable anyway
            self.path = root / temp_name(".calibrate-")
            self.path.mkdir(mode=0o700)
        self._manifest: Manifest | None = None

    def __enter__(self) -> Staging:
        try:
            for name in sorted(self.original.listed_files()):
                if name in self.replaced:
                    continue  # rebuilt here: a link would let the rebuild write into the bundle's own file
                src, dst = self.root / name, self.path / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                if name in self.external:  # onnx's checker refuses hard-linked external data ("hardlink attack")
                    shutil.copy2(src, dst)
                    continue
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
            self.original.write(self.path)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def load_scorer(self) -> Any:
        import onnx

        return onnx.load(str(self.path / self.original.graphs["scorer"].file), load_external_data=False)

    def manifest(self) -> Manifest:
        return self._manifest or self.original

    def stage_variant(self, precision: str, builder: Any, tolerances: dict[str, float]) -> None:
        """Write the builder's two graphs into the staging bundle and list them in its manifest."""
        import onnx

        from salad.manifest import sha256_file
        from salad.merge import normalise_opsets

        from .graphs import opset_of, set_metadata

        base_model = onnx.load(str(self.path / self.original.graphs["model"].file), load_external_data=False)
        base_encoder = onnx.load(str(self.path / self.original.graphs["encoder"].file), load_external_data=False)
        manifest = Manifest.from_dict(json.loads(json.dumps(self.original.to_dict())))
        details = builder.details()
        for name, proto, base in (("encoder", builder.encoder, base_encoder), ("model", builder.model, base_model)):
            key = manifest.graph_key(name, precision)
            file = f"{name}.{precision}.onnx"
            set_metadata(proto, base, {"salad.graph": key, "salad.precision": precision, "salad.toolkit_version": salad.__version__})
            normalise_opsets(proto)  # the quantizer imports every domain it knows; the merge repeats the default one
            (self.path / file).unlink(missing_ok=True)  # never write through a hard link into the bundle itself
            onnx.save_model(proto, str(self.path / file))
            fp32 = self.original.graphs[name]
            manifest.graphs[key] = GraphSpec(
                file=file, sha256=sha256_file(self.path / file), precision=precision, opset=opset_of(proto),
                inputs=list(fp32.inputs), outputs=list(fp32.outputs), external_data=list(fp32.external_data), details=dict(details),
            )
        manifest.parity[precision] = dict(tolerances)
        self.check_files(manifest, precision)
        manifest.write(self.path)
        self._manifest = manifest

    def check_files(self, manifest: Manifest, precision: str) -> None:
        """onnx.checker (full) and the fp32 graph's input/output contract on both written files."""
        import onnx

        from .graphs import io_problems

        problems = []
        for name in VARIANT_GRAPHS:
            spec = manifest.graph(name, precision)
            path = self.path / spec.file
            try:
                onnx.checker.check_model(str(path), full_check=True)
            except Exception as exc:  # noqa: BLE001 - checker and inference raise several types
                problems.append(f"{spec.file}: onnx.checker failed: {type(exc).__name__}: {str(exc).strip()[:300]}")
                continue
            problems += [
                f"{spec.file}: {p}"
                for p in io_problems(onnx.load(str(path), load_external_data=False), self.original.graphs[name])
            ]
        if problems:
            raise CalibrationError(f"the {precision} graphs are not valid:\n  " + "\n  ".join(problems))

    def commit(self, edit: BundleEdit, precision: str, report: CalibrationReport, report_in_bundle: bool) -> None:
        """Commit the variant (and its report) to the bundle in one atomic step, through the calibration's `Bundle.edit`.

        1. the variant's files (and report) are moved into the bundle under pending names (`edit.stage`),
           which the current manifest does not list, so the bundle still verifies as before;
        2. `edit.commit` writes the journal (the renames + the complete new manifest) with one atomic
           rename — the commit point — then applies the renames and manifest.json and removes the journal
           (salad.journal.complete_journal repeats this, idempotently, if this process is killed there).
        Killed before step 2: the old bundle with every accepted variant, plus pending files a later run sweeps.
        """
        staged = self.manifest()
        keys = [staged.graph_key(g, precision) for g in VARIANT_GRAPHS]
        current = edit.manifest
        moves: list[tuple[Path, str]] = [(self.path / staged.graphs[k].file, staged.graphs[k].file) for k in keys]
        report_name = None
        if report_in_bundle:
            folder = self.path / REPORT_DIR
            written = report.write(folder)
            for kind, final in report.file_names().items():
                moves.append((Path(written[kind]), f"{REPORT_DIR}/{final}"))
            report_name = f"{REPORT_DIR}/{report.file_names()['json']}"
        for source, final in moves:
            edit.stage(final, source)
        for k in keys:
            current.graphs[k] = staged.graphs[k]
            current.graphs[k].details["parity"] = {
                m: report.parity.get(m)
                for m in ("images", "label_agreement", "delta_auc", "max_abs_score_diff", "embedding_cosine_min")
            }
        current.parity[precision] = dict(report.tolerances)
        current.calibration[precision] = {
            **report.calibration,
            "layers_in_float": list(report.layers_in_float),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "report": report_name or _relative(report.files.get("json"), self.root),
        }
        edit.commit()
        if report_in_bundle:
            report.files = {kind: str(self.root / REPORT_DIR / name) for kind, name in report.file_names().items()}


def unstage(report: CalibrationReport, staging: Path, root: Path) -> None:
    """Name the bundle, never the staging copy (deleted when calibration ends), in the report's figures and messages."""
    def fix(value: Any) -> Any:
        return json.loads(json.dumps(value).replace(json.dumps(str(staging))[1:-1], json.dumps(str(root))[1:-1]))

    report.parity = fix(report.parity)
    report.notes = fix(report.notes)
    report.failures = fix(report.failures)


def _relative(path: str | None, root: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
