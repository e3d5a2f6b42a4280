"""Decode + preprocessing of the DICOM node's films (issue 28): where the time goes, old against new, reduced J2K.

    python measure.py stages OUT.json [--n 31]                 time of each step, the LUT steps both ways
    python measure.py alternate OLD_SALAD OUT.json [--n 30]    read_image+preprocess, old and new code in turns
    python measure.py reduced BUNDLE OUT.json [--n 9]          JPEG 2000 at reduced resolution against full decoding

OLD_SALAD: a folder with imageio.py and preprocess.py of the commit before issue 28's changes
(git show 6730fab:salad/imageio.py, …:salad/preprocess.py).
The films: pydicom-data's RG3_UNCR (raw), RG3_J2KI and RG1_J2KI (JPEG 2000), and JPEG-LL relabelled CR (as
benchmarks/dicom_load.py sends them); each figure is a median of --n repeats; the load average is recorded.
"""

# ruff: noqa: B023  - every lambda below is timed at once, inside the iteration whose variables it reads
from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from salad.dicom_display import display_by_table, display_values, stretch
from salad.filmcheck import check_film
from salad.imageio import _numeric_tags, read_image
from salad.preprocess import BORDER_SD, PreprocessConfig, _resize, normalise_intensity, preprocess, trim_uniform_border

CONFIG = PreprocessConfig(size=256)
#: The alternating comparison's modes: the issue's 256² network, and the node benchmark's bundle (64², border trim).
ALTERNATE = {"256": CONFIG, "64-trim": PreprocessConfig(size=64, border="trim")}


def films() -> dict[str, str]:
    """The node benchmark's four films; JPEG-LL (modality NM) relabelled CR in a temporary copy, as the benchmark does."""
    relabelled = Path(tempfile.gettempdir()) / "salad-decode-JPEG-LL-CR.dcm"
    if not relabelled.exists():
        ds = pydicom.dcmread(str(get_testdata_file("JPEG-LL.dcm")))
        ds.Modality = "CR"
        ds.save_as(relabelled)
    named = {n: str(get_testdata_file(n)) for n in ("RG3_UNCR.dcm", "RG3_J2KI.dcm", "RG1_J2KI.dcm")}
    return named | {"JPEG-LL.dcm (relabelled CR)": str(relabelled)}


def median_ms(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t))
    return round(statistics.median(times), 2)


def stages(n: int) -> dict[str, Any]:
    """Each step of read_image + preprocess on its own; old_* are the pixel-by-pixel LUT steps the table replaced."""
    out: dict[str, Any] = {}
    for name, path in films().items():
        ds = pydicom.dcmread(path)
        raw, photometric = ds.pixel_array, str(ds.PhotometricInterpretation)
        windowed = "VOILUTSequence" in ds or "WindowCenter" in ds
        modality = apply_modality_lut(raw, ds)
        values = apply_voi_lut(modality, ds, index=0, prefer_lut=True) if windowed else modality
        f32 = np.asarray(values, dtype=np.float32)
        unit = stretch(f32, float(f32.min()), float(f32.max()))
        image = read_image(path)
        small = preprocess(image, CONFIG)[0]
        step: dict[str, Any] = {"shape": list(raw.shape), "syntax": ds.file_meta.TransferSyntaxUID.name, "photometric": photometric}
        step["dcmread"] = median_ms(lambda: pydicom.dcmread(path), n)
        step["pixel_decode"] = round(median_ms(lambda: pydicom.dcmread(path).pixel_array, n) - step["dcmread"], 2)
        step["old_modality_lut"] = median_ms(lambda: apply_modality_lut(raw, ds), n)
        step["old_voi_window_float64"] = median_ms(lambda: apply_voi_lut(modality, ds, index=0, prefer_lut=True), n) if windowed else 0.0
        step["old_to_float32"] = median_ms(lambda: np.asarray(values, dtype=np.float32), n)
        step["old_finite_check"] = median_ms(lambda: np.all(np.isfinite(f32)), n)
        step["old_stretch_minmax"] = median_ms(lambda: stretch(f32, float(f32.min()), float(f32.max())), n)
        step["old_monochrome1_invert"] = median_ms(lambda: np.float32(1.0) - unit, n) if photometric == "MONOCHROME1" else 0.0
        step["new_display_table"] = median_ms(lambda: display_by_table(raw, ds, photometric, Path(path), {}), n)
        step["check_film"] = median_ms(lambda: check_film(image, path), n)
        step["preprocess_256"] = median_ms(lambda: preprocess(image, CONFIG), n)
        step["resize_area_256"] = median_ms(lambda: _resize(image, 256, 256), n)
        step["preprocess_64"] = median_ms(lambda: preprocess(image, PreprocessConfig(size=64)), n)
        step["old_border_sd_every_row_and_column"] = median_ms(lambda: (image.std(axis=1) >= BORDER_SD, image.std(axis=0) >= BORDER_SD), n)
        step["border_trim"] = median_ms(lambda: trim_uniform_border(image), n)
        step["zscore_256"] = median_ms(lambda: normalise_intensity(small, "zscore"), n)
        step["clahe_256"] = median_ms(lambda: normalise_intensity(small, "clahe"), n)
        step["read_image_and_preprocess_256"] = median_ms(lambda: preprocess(read_image(path), CONFIG), n)
        out[name] = step
        print(name, json.dumps(step), flush=True)
    return out


def load_module(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def alternate(old_salad: Path, n: int) -> dict[str, Any]:
    """read_image + preprocess with the old code and the new in turns (order swapped every repeat), per mode."""
    old_io = load_module("old_imageio", old_salad / "imageio.py")
    old_pp = load_module("old_preprocess", old_salad / "preprocess.py")
    out: dict[str, Any] = {}
    for label, config in ALTERNATE.items():
        old_config = old_pp.PreprocessConfig(**config.to_dict())
        for name, path in films().items():
            old_input, new_input = old_pp.preprocess(old_io.read_image(path), old_config), preprocess(read_image(path), config)
            assert np.array_equal(old_input, new_input), (label, name)
            times: dict[str, list[float]] = {"old": [], "new": []}
            ratios = []
            for i in range(n):
                order: tuple[tuple[str, Callable[[], object]], ...] = (
                    ("old", lambda: old_pp.preprocess(old_io.read_image(path), old_config)),
                    ("new", lambda: preprocess(read_image(path), config)),
                )
                for side, run in order if i % 2 == 0 else order[::-1]:
                    t = time.perf_counter()
                    run()
                    times[side].append(1e3 * (time.perf_counter() - t))
                ratios.append(times["new"][-1] / times["old"][-1])
            key = f"{name} @ {label}"
            out[key] = {"old_ms_p50": round(statistics.median(times["old"]), 1), "new_ms_p50": round(statistics.median(times["new"]), 1),
                        "new_over_old_p50_of_pairs": round(statistics.median(ratios), 3), "bit_identical": True}
            print(key, out[key], flush=True)
    return out


def reduced_film(path: str, reduce: int) -> np.ndarray:
    """The film's JPEG 2000 codestream decoded without its `reduce` finest wavelet levels (Pillow → OpenJPEG cp_reduce)."""
    import PIL.Image
    from pydicom.encaps import generate_fragmented_frames

    ds = pydicom.dcmread(path)
    stream = b"".join(next(generate_fragmented_frames(ds.PixelData, number_of_frames=1)))
    picture = PIL.Image.open(io.BytesIO(stream))
    picture.reduce = reduce  # type: ignore[method-assign,assignment]  # Pillow's JPEG 2000 plugin: a property there
    picture.load()
    raw = (np.asarray(picture) >> (16 - int(ds.BitsStored))).astype(np.uint16)  # Pillow scales samples to 16 bits
    unit = display_values(raw, ds, str(ds.PhotometricInterpretation).upper(), Path(path), _numeric_tags(ds, Path(path)))
    return check_film(unit, path)


def reduced(bundle: Path, n: int) -> dict[str, Any]:
    """Per J2K film and network size: the most levels dropped that keep 2× the size, |Δ| pixels, |Δ| score, times."""
    from salad.runtime.scorer import Scorer
    from salad.verdict import default_tolerances

    scorer = Scorer.from_bundle(bundle, "onnxruntime", "fp32", threads=1)
    size_of_bundle = scorer.preprocess_config.size
    tolerance = default_tolerances("fp32")["max_abs_score_diff"]
    rows = []
    for name in ("RG3_J2KI.dcm", "RG3_J2KR.dcm", "RG1_J2KI.dcm", "RG1_J2KR.dcm"):
        path = str(get_testdata_file(name))
        full = read_image(path)
        for size in sorted({64, 256, size_of_bundle}):
            level = 0
            while min(full.shape) >> (level + 1) >= 2 * size:
                level += 1
            failed = []
            while level:
                try:
                    small = reduced_film(path, level)
                    break
                except OSError as exc:  # Pillow's reduced size disagrees with OpenJPEG's on odd sides
                    failed.append(f"reduce={level}: {exc}")
                    level -= 1
            if not level:
                continue
            config = PreprocessConfig(size=size)
            diff = float(np.abs(preprocess(full, config) - preprocess(small, config)).max())
            row: dict[str, Any] = {"film": name, "size": size, "reduce": level, "reduced_shape": list(small.shape),
                                   "pillow_failed": failed, "max_abs_pixel_diff": round(diff, 5)}
            if size == size_of_bundle:
                a, b = scorer.score([full, small])
                delta = abs(a.score - b.score)
                row |= {"score_full": round(a.score, 6), "score_reduced": round(b.score, 6),
                        "abs_score_diff": float(f"{delta:.3g}"), "within_fp32_tolerance": delta <= tolerance}
            row["read_full_ms"] = median_ms(lambda: read_image(path), n)
            row["read_reduced_ms"] = median_ms(lambda: reduced_film(path, level), n)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"bundle": str(bundle), "bundle_size": size_of_bundle, "fp32_max_abs_score_diff_tolerance": tolerance, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("stages", "alternate", "reduced"))
    ap.add_argument("args", nargs="+", type=Path, help="OUT.json, after OLD_IMAGEIO.py (alternate) or BUNDLE (reduced)")
    ap.add_argument("--n", type=int, default=None)
    a = ap.parse_args()
    start = os.getloadavg()
    if a.what == "stages":
        result = stages(a.n or 31)
    elif a.what == "alternate":
        result = alternate(a.args[0], a.n or 30)
    else:
        result = reduced(a.args[0], a.n or 9)
    record = {"what": a.what, "repeats": a.n, "load_average_at_start": [round(x, 2) for x in start],
              "load_average_at_end": [round(x, 2) for x in os.getloadavg()], "result": result}
    a.args[-1].write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
