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

#: Local coding scheme for the measurement: no standard code names this detector's score.
SCHEME = "99SALAD"
ANOMALY_SCORE = CodedConcept("ANOMALY_SCORE", SCHEME, "Anomaly score")
KNN_ANGLE = CodedConcept("KNN_ANGLE", SCHEME, "Mean angle to the k nearest normal films / pi")
ABNORMAL = CodedConcept("263654008", "SCT", "Abnormal")
NORMAL = CodedConcept("17621005", "SCT", "Normal")
CHEST_XRAY = CodedConcept("399208008", "SCT", "Plain chest X-ray")
SR_SERIES_NUMBER = 990


def sr_uids(source: Dataset, bundle_sha256: str) -> tuple[str, str]:
    """(series, instance) UIDs of the SR for `source` under this bundle: the same inputs give the same UIDs."""
    series = generate_uid(entropy_srcs=["salad-sr-series", str(source.SeriesInstanceUID), bundle_sha256])
    instance = generate_uid(entropy_srcs=["salad-sr", str(source.SOPInstanceUID), bundle_sha256])
    return str(series), str(instance)


def build_report(
    source: Dataset, *, score: float, knn_angle: float, label: int, threshold: float, decided_by: str,
    bundle_sha256: str, runtime: str, precision: str,
) -> Dataset:
    """The Comprehensive SR for one scored image; `source` may be read without pixels."""
    algorithm = hd.sr.AlgorithmIdentification(
        name="salad-edge", version=salad.__version__,
        parameters=[f"bundle_sha256={bundle_sha256}", f"threshold={threshold!r} on {decided_by}", f"runtime={runtime}/{precision}"],
    )
    measurements = [
        hd.sr.Measurement(name=ANOMALY_SCORE, value=float(score), unit=codes.UCUM.NoUnits, algorithm_id=algorithm),
        hd.sr.Measurement(name=KNN_ANGLE, value=float(knn_angle), unit=codes.UCUM.NoUnits, algorithm_id=algorithm),
    ]
    finding = hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=ABNORMAL if label == 1 else NORMAL)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            identifier="salad anomaly score", uid=generate_uid(entropy_srcs=["salad-track", str(source.SOPInstanceUID)])
        ),
        measurements=measurements,
        qualitative_evaluations=[finding],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
        algorithm_id=algorithm,
    )
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=["salad-device", bundle_sha256]), name="salad-edge", model_name=bundle_sha256[:16],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device, observer_identifying_attributes=device
            )
        ),
        procedure_reported=CHEST_XRAY,
        imaging_measurements=[group],
        title=codes.DCM.ImagingMeasurementReport,
    )
    series_uid, instance_uid = sr_uids(source, bundle_sha256)
    options: dict[str, Any] = {"manufacturer": "salad-edge", "is_complete": True, "is_final": False, "is_verified": False}
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=report, series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=instance_uid, instance_number=1, series_description="salad-edge anomaly score", **options,
    )
