"""`salad score --drift` decodes each film once (issue 27, acceptance 3) and opens its bundle once: the drift guard
listens to the Scorer's events and reads the Bundle the Scorer was built from.

The real decoders of salad/imageio.py are counted (wrapped, still called); the figures are those of the guard's own
image path (DriftGuard.check on films read again), which is what `--drift` computed before it listened.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from salad import imageio
from salad.bundle import Bundle
from salad.onsite.drift import DriftGuard
from salad.onsite.score import score_command
from tests.conftest import KERMANY


def _films(cls: str, n: int, start: int = 0) -> list[Path]:
    found = sorted((KERMANY / "train" / cls).glob("*.jpeg"))[start : start + n]
    assert len(found) == n, f"{KERMANY}: expected at least {start + n} {cls} films"
    return found


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Path → how many times a decoder of salad/imageio.py decoded it, from here to the end of the test."""
    counts: Counter[str] = Counter()
    for name in ("read_raster", "read_dicom"):
        real = getattr(imageio, name)

        def counting(path: Path, *args: Any, _real: Any = real, **kwargs: Any) -> np.ndarray:
            counts[str(path)] += 1
            return _real(path, *args, **kwargs)  # type: ignore[no-any-return]

        monkeypatch.setattr(imageio, name, counting)
    return counts


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Folder → how many times Bundle.open read its manifest, from here to the end of the test (the real open, counted)."""
    counts: Counter[str] = Counter()
    real = Bundle.open.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Bundle], path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> Bundle:
        counts[str(Path(path))] += 1
        return real(cls, path, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(Bundle, "open", classmethod(counting))
    return counts


def test_score_drift_decodes_each_film_once_and_reports_the_same_figures(tiny_bundle: Path, tmp_path: Path,
                                                                        decoded: Counter[str], opened: Counter[str],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Every open goes through Bundle.open with the caches off: a verification stamp (runtime/verified.py) would let a
    # second open skip Bundle.open, and the count below could not see it.
    monkeypatch.setenv("SALAD_NO_CACHE", "1")
    films = _films("normal", 30) + _films("pneumonia", 30)
    confirmed = _films("normal", 6, start=30)
    out = tmp_path / "scores.json"
    args = [str(tiny_bundle), *map(str, films), "--drift", "--drift-window", "20", "--json", str(out),
            *(a for p in confirmed for a in ("--confirmed-normal", str(p))), "--confirmed-state", str(tmp_path / "state.json")]
    result = CliRunner().invoke(score_command, args, prog_name="salad score")
    assert result.exit_code == 0, result.output
    assert dict(decoded) == {str(p): 1 for p in films + confirmed}  # the scored films and the spot check's, once each
    assert dict(opened) == {str(tiny_bundle): 1}  # the drift guard and the scorer read the one Bundle

    body = json.loads(out.read_text())
    drift = body["drift"]
    assert drift["call"]["n"] == len(films) and [w["n"] for w in drift["windows"]] == [20, 20, 20]
    assert set(drift["call"]["checks"]) == {"score", "brighter", "darker"} and drift["spot_check"]["call"]["films"] == 6
    # the same figures as the guard computes from the films themselves, read again (what --drift did before it listened)
    guard = DriftGuard.from_bundle(tiny_bundle)
    scores = np.array([r[guard.score_name] for r in body["results"]])
    again = guard.check(scores, [imageio.read_image(p) for p in films], window=20).to_dict()
    assert drift["call"] == again["call"] and drift["windows"] == again["windows"]
