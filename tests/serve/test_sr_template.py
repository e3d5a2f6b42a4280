"""The node's SR from its prepared template equals highdicom's whole build (serve/sr.py), element for element.

Real film headers from pydicom-data (CR raw and JPEG 2000, a JPEG Lossless film relabelled CR, one that states no
body part or view); both SRs go through bytes and back through pydicom, as a PACS receives them. Only the times of
creation may differ (each build stamps its own).
"""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.serve.conftest import testdata as pydicom_film

pytest.importorskip("highdicom", reason="salad serve needs the dicom extra (pip install 'salad-edge[dicom]')")

SHA = "0123456789abcdef" * 4
#: Stamped with the time of each build.
VOLATILE = {"InstanceCreationDate", "InstanceCreationTime", "ContentDate", "ContentTime", "ContributionDateTime"}


def differences(a: Dataset, b: Dataset, path: str = "") -> list[str]:
    """Where two datasets differ (element present in one only, other value, other number of items), times aside."""
    out = []
    for tag in sorted(set(a.keys()) | set(b.keys())):
        name = f"{path}/{pydicom.datadict.keyword_for_tag(tag) or tag}"
        if name.rsplit("/", 1)[-1] in VOLATILE:
            continue
        if tag not in a or tag not in b:
            out.append(f"{name} only in the {'reference' if tag in b else 'template'} SR")
        elif a[tag].VR == "SQ":
            if len(a[tag].value) != len(b[tag].value):
                out.append(f"{name}: {len(a[tag].value)} items against {len(b[tag].value)}")
            for i, (x, y) in enumerate(zip(a[tag].value, b[tag].value, strict=False)):
                out += differences(x, y, f"{name}[{i}]")
        elif a[tag].value != b[tag].value:
            out.append(f"{name}: {a[tag].value!r} against {b[tag].value!r}")
    return out


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def both(header: Dataset, template: Any, ahead: bool = False, **film: Any) -> tuple[Dataset, Dataset]:
    """(the template's SR, the reference SR) for one film, each read back from its bytes; `ahead`: its document built first,
    as the node builds it while the film is scored."""
    from salad.serve.sr import build_report

    head = template.head(header, film.get("instance_uid")) if ahead else None
    data, uid = template.render(header, **film, head=head)
    buffer = io.BytesIO()
    reference = build_report(header, **film, **template.constants)
    pydicom.dcmwrite(buffer, reference, enforce_file_format=True)
    assert uid == str(reference.SOPInstanceUID)
    return read(data), read(buffer.getvalue())


def headers() -> dict[str, Dataset]:
    out = {name: pydicom.dcmread(pydicom_film(name), stop_before_pixels=True) for name in
           ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG1_J2KI.dcm", "JPEG-LL.dcm")}
    ll = out["JPEG-LL.dcm"]
    ll.Modality, ll.SOPClassUID = "CR", "1.2.840.10008.5.1.4.1.1.1"
    del ll.BodyPartExamined
    bare = pydicom.dcmread(pydicom_film("RG1_UNCR.dcm"), stop_before_pixels=True)
    del bare.BodyPartExamined, bare.ViewPosition
    bare.SOPInstanceUID = generate_uid()
    return {**out, "no body part or view": bare}


@pytest.mark.parametrize("decided_by", ["score", "knn_angle"])
def test_the_template_sr_equals_highdicoms_for_real_films_both_decisions(decided_by: str) -> None:
    from salad.serve.sr_template import ReportTemplate

    template = ReportTemplate(threshold=0.61, decided_by=decided_by, bundle_sha256=SHA, runtime="onnxruntime", precision="int8")
    for name, header in headers().items():
        for ahead, label, score, knn in ((False, 1, 0.8123456789012345, 1 / 3), (True, 0, 0.25, 0.1), (False, 1, 12345.678, 1e-9),
                                         (True, 1, 0.5, 0.5)):
            mine, reference = both(header, template, ahead, score=score, knn_angle=knn, label=label)
            assert differences(mine, reference) == [], name
            assert differences(mine.file_meta, reference.file_meta) == [], name
            values = [float(i.MeasuredValueSequence[0].FloatingPointValue) for i in
                      mine.ContentSequence[-1].ContentSequence[0].ContentSequence if i.ValueType == "NUM"]
            assert values[:2] == [score, knn]
    assert template.fallbacks == 0  # every shape was prepared, none built whole


def test_a_collision_sr_has_its_own_instance_uid_and_equals_the_reference() -> None:
    from salad.serve.sr_template import ReportTemplate

    template = ReportTemplate(threshold=0.5, decided_by="score", bundle_sha256=SHA, runtime="onnxruntime", precision="fp32")
    header = headers()["RG1_UNCR.dcm"]
    own = str(generate_uid(entropy_srcs=["salad-sr", "other-key"]))
    for ahead in (False, True):
        mine, reference = both(header, template, ahead, score=0.7, knn_angle=0.3, label=1, instance_uid=own)
        assert str(mine.SOPInstanceUID) == str(mine.file_meta.MediaStorageSOPInstanceUID) == own
        assert differences(mine, reference) == []


def test_a_source_highdicom_refuses_is_refused_by_the_template_too() -> None:
    from salad.serve.sr_template import ReportTemplate

    template = ReportTemplate(threshold=0.5, decided_by="score", bundle_sha256=SHA, runtime="onnxruntime", precision="fp32")
    header = headers()["RG1_UNCR.dcm"]
    del header.PatientID  # highdicom copies the patient module and needs it: no SR, as from the reference builder
    with pytest.raises(AttributeError):
        template.render(header, score=0.7, knn_angle=0.3, label=1)
    with pytest.raises(AttributeError):
        template.head(header)  # built ahead, the node's way: the same refusal
