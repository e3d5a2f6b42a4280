"""The node's SR from a prepared template: highdicom builds each report shape once; a film fills in its own values.

Building a whole report with highdicom costs tens of milliseconds per film (it deep-copies and searches the content
tree), yet all but seven leaf values of that tree are the same for every film a node scores under one bundle. So
the content tree of each shape (body part stated or not, view, decision) is built once by serve/sr.py's reference
builder from a stand-in film with sentinel values, encoded once (explicit VR little endian, as the SR is written;
every sequence and item is given an undefined length, delimited, so a leaf may change length), and cut at those leaves. Per film
the leaves are encoded by pydicom and spliced in, and highdicom still builds the document around the tree (patient,
study, evidence, UIDs), so the file equals serve/sr.py's `build_report` element for element, times of creation
aside (tests/serve/test_sr_template.py). A shape whose sentinels cannot be found once each falls back to the
reference builder, as does every film while its shape cannot be prepared.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from pydicom.valuerep import DS

from .sr import BODY_PARTS, VIEWS, body_part_of, build_report, document, tracking_uid, view_of

#: The root content item's attributes besides its ContentSequence (copied to the document by highdicom).
ROOT_KEYWORDS = ("ValueType", "ConceptNameCodeSequence", "ContinuityOfContent", "ContentTemplateSequence")
CONTENT_SEQUENCE = Tag(0x0040, 0xA730)
#: Stand-in values, chosen so that no constant of a report encodes to the same element.
_SCORE, _KNN = 0.1234567891234567, 0.7654321987654321
_SOURCE_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # CR: a radiograph class highdicom accepts as a source image


def _encode(keyword: str, value: Any) -> bytes:
    """One data element as it is written in explicit VR little endian (tag, VR, length, value)."""
    return _encode_element(DataElement(keyword, dictionary_VR(keyword), value), None)


def _encode_element(element: DataElement, encodings: list[str] | None) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, element, encodings)
    return fp.getvalue()


def _measured(value: float) -> tuple[bytes, bytes]:
    """The NumericValue and FloatingPointValue elements highdicom writes for a measured `value`."""
    return _encode("NumericValue", DS(value, auto_format=True)), _encode("FloatingPointValue", float(value))


def _leaves(source: Dataset, score: float, knn_angle: float) -> dict[str, bytes]:
    """The per-film leaves of the content tree, encoded."""
    score_ds, score_fd = _measured(score)
    knn_ds, knn_fd = _measured(knn_angle)
    return {
        "tracking_uid": _encode("UID", tracking_uid(source)),
        "source_class": _encode("ReferencedSOPClassUID", str(source.SOPClassUID)),
        "source_instance": _encode("ReferencedSOPInstanceUID", str(source.SOPInstanceUID)),
        "score_ds": score_ds, "score_fd": score_fd, "knn_ds": knn_ds, "knn_fd": knn_fd,
    }


@dataclass(frozen=True)
class _Shape:
    """One report shape, prepared: the root item's attributes and the encoded content tree cut at the per-film leaves."""

    root: Dataset
    pieces: tuple[bytes, ...]
    slots: tuple[str, ...]

    def content(self, leaves: dict[str, bytes]) -> bytes:
        out = [self.pieces[0]]
        for slot, piece in zip(self.slots, self.pieces[1:], strict=True):
            out += [leaves[slot], piece]
        return b"".join(out)


@dataclass(frozen=True)
class Head:
    """A film's SR document without its content tree: encoded bytes, SOP Instance UID, and the root item it was built on."""

    data: bytes
    uid: str
    root: Dataset


class ReportTemplate:
    """The SRs of one node (one bundle, threshold and runtime): `render` gives a film's SR file, byte for byte ready."""

    def __init__(self, *, threshold: float, decided_by: str, bundle_sha256: str, runtime: str, precision: str) -> None:
        self.constants: dict[str, Any] = {"threshold": threshold, "decided_by": decided_by, "bundle_sha256": bundle_sha256,
                                          "runtime": runtime, "precision": precision}
        self._shapes: dict[tuple[str, str, int], _Shape | None] = {}
        self._lock = threading.Lock()
        #: Films whose SR came from the reference builder (a shape that could not be prepared).
        self.fallbacks = 0

    def head(self, source: Dataset, instance_uid: str | None = None) -> Head | None:
        """The film's SR up to its content tree, encoded: all that does not depend on its score, so the node can build it
        beside the film's decode and inference. None where the whole report must be built (the reference builder)."""
        hd.sr.SourceImageForMeasurementGroup.from_source_image(source)  # highdicom's checks of a source image, as the reference's
        shape = self._shape(source, 0)  # the root item's attributes (title, template) are the same for either decision
        if shape is None:
            return None
        report = document(source, shape.root, self.constants["bundle_sha256"], instance_uid)
        del report[CONTENT_SEQUENCE]
        if any(element.tag > CONTENT_SEQUENCE for element in report):  # the tree would not be the last element: write it whole
            return None
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, report, enforce_file_format=True)
        return Head(buffer.getvalue(), str(report.SOPInstanceUID), shape.root)

    def render(self, source: Dataset, *, score: float, knn_angle: float, label: int,
               instance_uid: str | None = None, head: Head | None = None) -> tuple[bytes, str]:
        """(the SR file's bytes, its SOP Instance UID) for `source` (a header, pixels not needed) and its result.

        `head`: `self.head(source, instance_uid)` made earlier (it is made here when not given).
        """
        head = self.head(source, instance_uid) if head is None else head
        shape = self._shape(source, label)
        if head is None or shape is None or shape.root != head.root:
            self.fallbacks += 1
            return self.render_reference(source, score=score, knn_angle=knn_angle, label=label, instance_uid=instance_uid)
        # the content tree, the last element in tag order, appended to the document
        return head.data + shape.content(_leaves(source, score, knn_angle)), head.uid

    def render_reference(self, source: Dataset, *, score: float, knn_angle: float, label: int,
                         instance_uid: str | None = None) -> tuple[bytes, str]:
        """The same SR built whole by highdicom (serve/sr.py's reference builder)."""
        report = build_report(source, score=score, knn_angle=knn_angle, label=label, instance_uid=instance_uid,
                              **self.constants)
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, report, enforce_file_format=True)
        return buffer.getvalue(), str(report.SOPInstanceUID)

    def _shape(self, source: Dataset, label: int) -> _Shape | None:
        body = body_part_of(source) if body_part_of(source) in BODY_PARTS else ""
        view = view_of(source) if view_of(source) in VIEWS else ""
        key = (body, view, 1 if label == 1 else 0)
        with self._lock:
            if key not in self._shapes:
                self._shapes[key] = self._prepare(*key)
            return self._shapes[key]

    def _prepare(self, body: str, view: str, label: int) -> _Shape | None:
        """Build the shape's report once from a stand-in film and cut its encoded content tree at the per-film leaves."""
        stand_in = _stand_in(body, view)
        report = build_report(stand_in, score=_SCORE, knn_angle=_KNN, label=label, **self.constants)
        _undefined_lengths(report[CONTENT_SEQUENCE])
        encoded = {_encode_element(report[CONTENT_SEQUENCE], charset) for charset in (None, ["iso8859"], ["utf_8"])}
        if len(encoded) != 1:
            return None  # text that encodes differently under other character sets: not reusable across films
        [tree] = encoded
        found = []
        for slot, leaf in _leaves(stand_in, _SCORE, _KNN).items():
            if tree.count(leaf) != 1:
                return None  # a constant that encodes like a sentinel: this shape uses the reference builder
            found.append((tree.index(leaf), slot, len(leaf)))
        pieces, slots, at = [], [], 0
        for start, slot, length in sorted(found):
            pieces.append(tree[at:start])
            slots.append(slot)
            at = start + length
        pieces.append(tree[at:])
        root = Dataset()
        for keyword in ROOT_KEYWORDS:
            if keyword in report:
                setattr(root, keyword, report[keyword].value)
        root.ContentSequence = []
        return _Shape(root, tuple(pieces), tuple(slots))


def _undefined_lengths(sequence: DataElement) -> None:
    """Give a sequence, its items and every sequence below them undefined lengths (delimited), so leaves may change length."""
    sequence.is_undefined_length = True
    for item in sequence.value:
        item.is_undefined_length_sequence_item = True
        for element in item:
            if element.VR == "SQ":
                _undefined_lengths(element)


def _stand_in(body: str, view: str) -> Dataset:
    """A radiograph header with sentinel identity, stating `body` and `view` (empty: not stated)."""
    ds = Dataset()
    ds.SOPClassUID = _SOURCE_CLASS
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["salad-sr-template-instance"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["salad-sr-template-study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["salad-sr-template-series"])
    ds.Modality = "CR"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                    "StudyDate", "StudyTime"):
        setattr(ds, keyword, "")
    if body:
        ds.BodyPartExamined = body
    if view:
        ds.ViewPosition = view
    return ds
