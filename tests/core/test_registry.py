"""The one registry shape (salad/registry.py) and the registries built on it."""

from __future__ import annotations

import pytest

from salad.errors import EXIT_USAGE, ConfigError
from salad.registry import Registry


def test_register_refuses_a_second_entry_of_a_name_and_get_lists_the_choices() -> None:
    reg: Registry[str] = Registry("colour")
    assert reg.register("red", "#f00") == "#f00"
    reg.register("red", "#f00")  # the same entry again is harmless (a module imported twice)
    reg.register("blue", "#00f")
    with pytest.raises(ConfigError, match=r"colour 'red' is already registered by str; a second colour of that name would shadow it"):
        reg.register("red", "#e00")
    assert reg.names() == ["red", "blue"] and list(reg) == ["red", "blue"] and len(reg) == 2 and "red" in reg
    with pytest.raises(ConfigError, match=r"unknown colour 'green'; expected one of \['red', 'blue'\]") as caught:
        reg.get("green")
    assert caught.value.exit_code == EXIT_USAGE == 2
    assert reg.unregister("blue") == "#00f" and reg.names() == ["red"]


def test_deprecated_aliases_warn_and_stay_out_of_the_listing() -> None:
    reg: Registry[int] = Registry("method", sort=True)
    reg.decorator("zeta")(26)
    reg.decorator("alpha")(1)
    reg.deprecate("a", "alpha")
    assert reg.names() == ["alpha", "zeta"] and "a" not in reg and reg.aliases() == {"a": "alpha"}
    with pytest.warns(FutureWarning, match=r"method 'a' is deprecated; use 'alpha'"):
        assert reg.get("a") == 1
    with pytest.raises(ConfigError, match="'a' is a deprecated alias of 'alpha'"):
        reg.register("a", 2)
    with pytest.raises(ConfigError, match="'omega' is not registered"):
        reg.deprecate("o", "omega")
    reg.unregister("alpha")
    assert reg.aliases() == {}


def test_every_pluggable_kind_is_a_registry() -> None:
    from salad.calibration.builders import BUILDERS
    from salad.manifest import PRECISIONS
    from salad.runtime import RUNNERS
    from salad.scoring import SCORES
    from salad.train import ENCODERS, METHOD_REGISTRY

    for reg in (BUILDERS, PRECISIONS, RUNNERS, SCORES, ENCODERS, METHOD_REGISTRY):
        assert isinstance(reg, Registry)
    assert PRECISIONS.names() == ["fp32", "fp16", "int8"] and BUILDERS.names() == ["fp16", "int8"]
    assert SCORES.names() == ["score", "knn_angle"] and METHOD_REGISTRY.names()[0] == "salad"
    with pytest.raises(ConfigError, match=r"unknown training method 'sald'; expected one of \['salad', 'memdae'"):
        METHOD_REGISTRY.get("sald")
