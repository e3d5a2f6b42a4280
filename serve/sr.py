"""One DICOM Comprehensive SR per scored image (highdicom, TID 1500): the score as a measurement, the decision as a finding.

The report references its source image (evidence and the measurement group's source image), carries the
bundle's sha256 and threshold as algorithm parameters, and has UIDs derived from the source instance and
the bundle: scoring the same instance again with the same bundle makes the same SR instance, so a PACS
that receives it twice (a resend after a crash) keeps one.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

import salad
from salad import scoring

#: Local coding scheme for the measurements no standard code names (this detector's scores), declared in the SR's
#: Coding Scheme Identification Sequence (PS3.3 C.12.1.1.4) so that a reader can tell whose codes they are.
SCHEME = "99SALAD"
SCHEME_NAME = "salad-edge local codes"
ANOMALY_SCORE = CodedConcept("ANOMALY_SCORE", SCHEME, "Anomaly score")
KNN_ANGLE = CodedConcept("KNN_ANGLE", SCHEME, "Mean angle to the k nearest normal films / pi")
#: The operating scores (salad.scoring.SCORE_NAMES) by name: the one the bundle's threshold applies to decided.
SCORE_CODES = {scoring.SCORE: ANOMALY_SCORE, scoring.KNN_ANGLE: KNN_ANGLE}
ABNORMAL = CodedConcept("263654008", "SCT", "Abnormal")
NORMAL = CodedConcept("17621005", "SCT", "Normal")
CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
#: The procedure when the film does not state its body part (BodyPartExamined absent or empty).
RADIOGRAPHY = CodedConcept("363680008", "SCT", "Radiographic imaging procedure")
#: BodyPartExamined → anatomic location, ViewPosition → view (PS3.16 CID 4031 and CID 4010 codes, as pydicom names them).
BODY_PARTS = {"CHEST": codes.SCT.Chest, "THORAX": codes.SCT.Chest}
VIEWS = {"PA": codes.SCT.PosteroAnterior, "AP": codes.SCT.AnteroPosterior}
SR_SERIES_NUMBER = 990


def sr_uids(source: Dataset, bundle_sha256: str) -> tuple[str, str]:
    """(series, instance) UIDs of the SR for `source` under this bundle: the same inputs give the same UIDs."""
    series = generate_uid(entropy_srcs=["salad-sr-series", str(source.SeriesInstanceUID), bundle_sha256])
    instance = generate_uid(entropy_srcs=["salad-sr", str(source.SOPInstanceUID), bundle_sha256])
    return str(series), str(instance)


def tracking_uid(source: Dataset) -> str:
    """The measurement group's tracking UID for `source`: the same film gives the same UID."""
    return str(generate_uid(entropy_srcs=["salad-track", str(source.SOPInstanceUID)]))


def report_content(
    source: Dataset, *, score: float, knn_angle: float, label: int, threshold: float, decided_by: str,
    bundle_sha256: str, runtime: str, precision: str,
) -> hd.sr.MeasurementReport:
    """The content tree (TID 1500) for one scored image: measurements, decision, body part and view as the film states them."""
    algorithm = hd.sr.AlgorithmIdentification(
        name="salad-edge", version=salad.__version__,
        parameters=[f"bundle_sha256={bundle_sha256}", f"decided_by={decided_by}", f"threshold={threshold!r}",
                    f"runtime={runtime}/{precision}"],
    )
    body_part = BODY_PARTS.get(body_part_of(source))
    view = VIEWS.get(view_of(source))
    sites = [hd.sr.FindingSite(anatomic_location=body_part)] if body_part is not None else None
    unit = codes.UCUM.NoUnits
    measurements = [
        hd.sr.Measurement(name=ANOMALY_SCORE, value=float(score), unit=unit, algorithm_id=algorithm, finding_sites=sites),
        hd.sr.Measurement(name=KNN_ANGLE, value=float(knn_angle), unit=unit, algorithm_id=algorithm, finding_sites=sites),
        hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=float(threshold), unit=unit, method=SCORE_CODES[decided_by],
                          algorithm_id=algorithm),
    ]
    evaluations = [hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=ABNORMAL if label == 1 else NORMAL)]
    if view is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(name=codes.DCM.ImageView, value=view))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier="salad anomaly score", uid=tracking_uid(source)),
        measurements=measurements,
        qualitative_evaluations=evaluations,
        finding_sites=sites,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        algorithm_id=algorithm,
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["salad-device", bundle_sha256]), name="salad-edge", model_name=bundle_sha256[:16],
    )
    return hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device
            )
        ),
        procedure_reported=CHEST_XRAY if body_part is not None else RADIOGRAPHY,
        imaging_measurements=[group],
        title=codes.DCM.ImagingMeasurementReport,
    )


def document(source: Dataset, content: Dataset, bundle_sha256: str, instance_uid: str | None = None) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR around `content`: patient and study from `source`, its evidence, UIDs, flags, the local scheme.

    `instance_uid` replaces the derived SOP Instance UID (a UID collision's SR must not replace the other film's).
    """
    series_uid, derived_uid = sr_uids(source, bundle_sha256)
    options: dict[str, Any] = {"manufacturer": "salad-edge", "is_complete": True, "is_final": False, "is_verified": False}
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=content, series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=instance_uid or derived_uid, instance_number=1, series_description="salad-edge anomaly score",
        **options,
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = SCHEME
    scheme.CodingSchemeName = SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = "salad-edge"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return sr


def body_part_of(source: Dataset) -> str:
    return str(source.get("BodyPartExamined", "") or "").strip().upper()


def view_of(source: Dataset) -> str:
    return str(source.get("ViewPosition", "") or "").strip().upper()


def build_report(
    source: Dataset, *, score: float, knn_angle: float, label: int, threshold: float, decided_by: str,
    bundle_sha256: str, runtime: str, precision: str, instance_uid: str | None = None,
) -> Dataset:
    """The Comprehensive SR for one scored image, built whole by highdicom; `source` may be read without pixels.

    It names the film's body part (finding site) and view as the film states them, the algorithm (name, version,
    the bundle's sha256), the threshold (Threshold Value, its method the operating score it applies to) and the decision.
    The node renders the same document from a prepared template (serve/sr_template.py); this is its reference.
    """
    content = report_content(source, score=score, knn_angle=knn_angle, label=label, threshold=threshold,
                             decided_by=decided_by, bundle_sha256=bundle_sha256, runtime=runtime, precision=precision)
    return document(source, content[0], bundle_sha256, instance_uid)  # the report's one root item
