"""The builder registry: every precision calibration adds is one registered VariantBuilder with its tolerances."""

from __future__ import annotations

from salad.calibration.builders import BUILDERS
from salad.calibration.calibrate import VARIANTS
from salad.calibration.tolerances import default_tolerances


def test_registry_names_the_precisions_and_each_has_tolerances() -> None:
    assert VARIANTS == tuple(BUILDERS) == ("fp16", "int8")
    for precision, builder in BUILDERS.items():
        assert builder.precision == precision
        assert default_tolerances(precision)["label_agreement"] > 0
    assert BUILDERS["int8"].needs_films and not BUILDERS["fp16"].needs_films
    assert BUILDERS["int8"].searchable and not BUILDERS["fp16"].searchable
