"""The node's structured report names what it judged: body part and view from the film, the algorithm (name, version,
bundle sha256), the threshold and the operating score it applies to; every coding scheme it uses is standard or declared.

The SRs are built from real film headers (pydicom-data) and read back with pydicom alone, after a round trip
through a file; tests/serve/test_admission.py reads the same content from SRs a running node wrote.
"""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.serve.conftest import testdata as pydicom_film

pytest.importorskip("highdicom", reason="salad serve needs the dicom extra (pip install 'salad-edge[dicom]')")

#: Coding schemes PS3.16 Table 8-1 defines, which need no declaration in the SR.
STANDARD_SCHEMES = {"DCM", "SCT", "UCUM", "RFC5646"}
SHA = "0123456789abcdef" * 4


def items(ds: Dataset) -> list[Dataset]:
    """Every content item of an SR, depth first."""
    out, stack = [], list(ds.ContentSequence)
    while stack:
        item = stack.pop(0)
        out.append(item)
        stack[:0] = list(item.get("ContentSequence", []))
    return out


def named(ds: Dataset, meaning: str) -> list[Dataset]:
    return [i for i in items(ds) if "ConceptNameCodeSequence" in i and i.ConceptNameCodeSequence[0].CodeMeaning == meaning]


def code(item: Dataset) -> tuple[str, str, str]:
    c = item.ConceptCodeSequence[0]
    return str(c.CodeValue), str(c.CodingSchemeDesignator), str(c.CodeMeaning)


def schemes(ds: Dataset) -> set[str]:
    """Every CodingSchemeDesignator anywhere in the dataset."""
    found: set[str] = set()

    def walk(d: Dataset) -> None:
        for element in d:
            if element.keyword == "CodingSchemeDesignator" and d is not ds:
                found.add(str(element.value))
            elif element.VR == "SQ":
                for sub in element.value:
                    walk(sub)

    for element in ds:
        if element.VR == "SQ" and element.keyword != "CodingSchemeIdentificationSequence":
            for sub in element.value:
                walk(sub)
    return found


def report(header: Dataset, **kwargs: Any) -> Dataset:
    """build_report → bytes → pydicom, as a PACS receives it."""
    from salad.serve.sr import build_report

    args: dict[str, Any] = {"score": 0.8, "knn_angle": 0.4, "label": 1, "threshold": 0.61, "decided_by": "score",
                            "bundle_sha256": SHA, "runtime": "onnxruntime", "precision": "int8", **kwargs}
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, build_report(header, **args), enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def test_the_sr_names_body_part_view_algorithm_and_threshold_from_the_film() -> None:
    header = pydicom.dcmread(pydicom_film("RG1_UNCR.dcm"), stop_before_pixels=True)  # BodyPartExamined CHEST, PA
    sr = report(header)
    [procedure] = named(sr, "Procedure reported")
    assert code(procedure) == ("399208008", "SCT", "Plain chest X-ray")
    sites = {code(i) for i in named(sr, "Finding Site")}
    assert sites == {("816094009", "SCT", "Chest")}
    [view] = named(sr, "Image View")
    assert code(view) == ("272479007", "SCT", "postero-anterior")
    assert {str(i.TextValue) for i in named(sr, "Algorithm Name")} == {"salad-edge"}
    import salad

    assert {str(i.TextValue) for i in named(sr, "Algorithm Version")} == {salad.__version__}
    parameters = {str(i.TextValue) for i in named(sr, "Algorithm Parameters")}
    assert {f"bundle_sha256={SHA}", "decided_by=score", "threshold=0.61", "runtime=onnxruntime/int8"} <= parameters
    [threshold] = named(sr, "Threshold Value")
    assert float(threshold.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.61)
    [method] = [i for i in threshold.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Method"]
    assert code(method) == ("ANOMALY_SCORE", "99SALAD", "Anomaly score")
    [finding] = named(sr, "Finding")
    assert code(finding) == ("263654008", "SCT", "Abnormal")


def test_every_coding_scheme_the_sr_uses_is_standard_or_declared_in_the_sr() -> None:
    header = pydicom.dcmread(pydicom_film("RG1_J2KR.dcm"), stop_before_pixels=True)
    sr = report(header, decided_by="knn_angle", label=0)
    declared = {str(s.CodingSchemeDesignator): s for s in sr.CodingSchemeIdentificationSequence}
    used = schemes(sr)
    assert "99SALAD" in used
    assert used - STANDARD_SCHEMES <= set(declared), used - STANDARD_SCHEMES - set(declared)
    assert str(declared["99SALAD"].CodingSchemeName) and str(declared["99SALAD"].CodingSchemeResponsibleOrganization)
    [threshold] = named(sr, "Threshold Value")
    [method] = [i for i in threshold.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Measurement Method"]
    assert code(method)[0] == "KNN_ANGLE"  # the operating score the threshold applies to
    assert code(named(sr, "Finding")[0]) == ("17621005", "SCT", "Normal")


def test_a_film_that_states_no_body_part_or_view_is_not_reported_as_a_chest_film() -> None:
    header = pydicom.dcmread(pydicom_film("RG1_UNCR.dcm"), stop_before_pixels=True)
    del header.BodyPartExamined, header.ViewPosition
    sr = report(header)
    assert code(named(sr, "Procedure reported")[0]) == ("363680008", "SCT", "Radiographic imaging procedure")
    assert named(sr, "Finding Site") == [] and named(sr, "Image View") == []
