"""The two forms of ASAP's equations an estimator can be fitted with, and which one a fitted estimator used.

`paper` is the paper's equations as written (plain-sum Gram matrices, squared distances in both triplet terms,
EQC from mean pairwise distances); `salad-edge-v1` is this toolkit's earlier reading (Grams divided by H·W,
plain distances, EQC from centroids). docs/similarity.md §1 sets them side by side with the benchmark.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from salad.errors import DataError

PAPER = "paper"
V1 = "salad-edge-v1"
#: Every form, the default first.
FORMS = (PAPER, V1)
#: What a fit uses unless told otherwise.
DEFAULT_FORM = PAPER
#: The form of an estimator.json written before forms were recorded (config.loss has no "form").
LEGACY_FORM = V1


def check_form(form: str) -> str:
    """`form` if it names a form; a DataError listing the forms otherwise."""
    if form not in FORMS:
        raise DataError(f"ASAP form {form!r}: expected one of {', '.join(FORMS)}.")
    return form


def form_of(info: Mapping[str, Any]) -> str:
    """The form an estimator.json's content was fitted with; files from before forms were recorded are salad-edge-v1."""
    loss = info.get("config", {}).get("loss", {}) if isinstance(info.get("config"), Mapping) else {}
    return check_form(str(loss.get("form", LEGACY_FORM))) if isinstance(loss, Mapping) else LEGACY_FORM
