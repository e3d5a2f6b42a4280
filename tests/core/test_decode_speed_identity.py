"""The faster reading and preprocessing of a film (issue 28) give the previous implementation's bits.

Two changes: salad.dicom_display's table route (LUTs once per stored value) and the border trim measuring only
the edges that can be cut. Two references. GOLDEN holds sha256 digests (first 32 hex digits) of `read_image`'s
film and of `preprocess`'s network input in four modes (GOLDEN_CONFIGS, two with the bundles' border trim),
made by the code at commit 6730fab (LUTs pixel by pixel, every row's sd) on every pydicom-data radiograph this
toolkit reads (the eight CR films, raw and JPEG 2000 lossless/lossy; pydicom-data holds no DX film and MG films
are refused by design) and on two Kermany films. And the previous code runs here too: the pixel-by-pixel route
stays in the product (`display_direct`, the fallback for 32-bit and float pixels and SIGMOID windows) and the
whole-film trim is `whole_film_trim` below, so films, preprocessing modes, tag variants and framed variants are
also compared with them on the machine that runs the test.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

import salad.dicom_display as display
from salad.errors import DataError
from salad.imageio import read_image
from salad.preprocess import PreprocessConfig, preprocess
from tests.conftest import KERMANY

#: film → digests of read_image (with dtype and shape) and of preprocess at GOLDEN_CONFIGS, made by commit 6730fab.
GOLDEN = {
    "RG1_J2KI.dcm": (
        "float32[1955, 1841]:23738f7ed9fb40c9b0d2557c4c3c9426",
        "b4cf30d0683e66f3d5c86d072f8d0ab1", "fd6c23f98d316c3892a645b897b6de65",
        "fd6c23f98d316c3892a645b897b6de65", "6e27527e25ffaa8a0bf0d93619594713",
    ),
    "RG1_J2KR.dcm": (
        "float32[1955, 1841]:11330d5606cad3ffcda91844cae26e10",
        "f78c1a7cd6577ddc61b2a66ccdbf93a2", "0505c88f3d1f6a6d4af51c497baa4a05",
        "0505c88f3d1f6a6d4af51c497baa4a05", "95260a1e60922735cc20be9a19f3ff3c",
    ),
    "RG1_UNCI.dcm": (
        "float32[1955, 1841]:23738f7ed9fb40c9b0d2557c4c3c9426",
        "b4cf30d0683e66f3d5c86d072f8d0ab1", "fd6c23f98d316c3892a645b897b6de65",
        "fd6c23f98d316c3892a645b897b6de65", "6e27527e25ffaa8a0bf0d93619594713",
    ),
    "RG1_UNCR.dcm": (
        "float32[1955, 1841]:11330d5606cad3ffcda91844cae26e10",
        "f78c1a7cd6577ddc61b2a66ccdbf93a2", "0505c88f3d1f6a6d4af51c497baa4a05",
        "0505c88f3d1f6a6d4af51c497baa4a05", "95260a1e60922735cc20be9a19f3ff3c",
    ),
    "RG3_J2KI.dcm": (
        "float32[1760, 1760]:3a7e5d7d75005d56d0d3ad47bfb5c71f",
        "a51e9e0836f329b909461b4417af7523", "1f0d51524f515b817fc121ba653eb62b",
        "5ebfed466dd77b107f7c158f69c0f4fd", "05d0d5364b7bd6248f52d3dbb26990e6",
    ),
    "RG3_J2KR.dcm": (
        "float32[1760, 1760]:5901baa78f3bb6af4c567f5863b97808",
        "9aeb1a5731f23ea9681aad470761afab", "f8f88433a9a675c0f0f619843f77e523",
        "2bc338f046d227a873a20590b5fcfa65", "796bbe76ef4358b3e0ff2cf99b85f002",
    ),
    "RG3_UNCI.dcm": (
        "float32[1760, 1760]:3a7e5d7d75005d56d0d3ad47bfb5c71f",
        "a51e9e0836f329b909461b4417af7523", "1f0d51524f515b817fc121ba653eb62b",
        "5ebfed466dd77b107f7c158f69c0f4fd", "05d0d5364b7bd6248f52d3dbb26990e6",
    ),
    "RG3_UNCR.dcm": (
        "float32[1760, 1760]:5901baa78f3bb6af4c567f5863b97808",
        "9aeb1a5731f23ea9681aad470761afab", "f8f88433a9a675c0f0f619843f77e523",
        "2bc338f046d227a873a20590b5fcfa65", "796bbe76ef4358b3e0ff2cf99b85f002",
    ),
    "normal/IM-0115-0001.jpeg": (
        "float32[224, 224]:b6e22a53541cb19043f3492cc7b11e27",
        "25bafc51049a2137164699021e137f16", "e68ed25b98b4cd7542dbc4351821d45e",
        "a77300b3fa886458e1b9dfef1ceeba88", "04b55688c0828e70923b72dfff40d2d9",
    ),
    "pneumonia/person1000_bacteria_2931.jpeg": (
        "float32[224, 224]:14618aa712e2212931659bcbb6eee08e",
        "af0f35736d9ae0799ec31e0391010ab4", "c52d0a992e364c1a561cc9ec18a13712",
        "c52d0a992e364c1a561cc9ec18a13712", "1a2befcfe23fa5095869bdaa39adcb23",
    ),
}
GOLDEN_CONFIGS = (
    PreprocessConfig(size=256),
    PreprocessConfig(size=64),
    PreprocessConfig(size=64, border="trim"),
    PreprocessConfig(size=224, resize_mode="letterbox", intensity_mode="zscore", border="trim", crop=0.9),
)
#: Every preprocessing mode the films are compared under (route against route).
CONFIGS = (
    PreprocessConfig(size=256),
    PreprocessConfig(size=64),
    PreprocessConfig(size=224, resize_mode="letterbox", intensity_mode="zscore", border="trim", crop=0.9),
    PreprocessConfig(size=128, intensity_mode="minmax"),
    PreprocessConfig(size=256, intensity_mode="clahe"),
    PreprocessConfig(size=96, intensity_mode="equalize"),
)


def digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:32]


def film_path(name: str) -> Path:
    return Path(str(get_testdata_file(name))) if name.endswith(".dcm") else KERMANY / "train" / name


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_films_and_network_inputs_match_the_previous_implementation(name: str) -> None:
    image = read_image(film_path(name))
    film, *inputs = GOLDEN[name]
    assert f"{image.dtype}{list(image.shape)}:{digest(image)}" == film
    assert [digest(preprocess(image, config)) for config in GOLDEN_CONFIGS] == inputs


@pytest.mark.parametrize("name", sorted(n for n in GOLDEN if n.endswith(".dcm")))
def test_table_route_is_taken_and_equals_the_pixel_route_in_every_mode(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[bool] = []
    by_table = display.display_by_table

    def recording(*args: Any) -> np.ndarray | None:
        result = by_table(*args)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(display, "display_by_table", recording)
    fast = read_image(film_path(name))
    assert taken == [True]  # the real films go the fast way
    monkeypatch.setattr(display, "display_by_table", lambda *args: None)
    reference = read_image(film_path(name))  # the same reader, pixel by pixel
    assert fast.dtype == reference.dtype == np.float32 and np.array_equal(fast, reference)
    for config in CONFIGS:
        assert np.array_equal(preprocess(fast, config), preprocess(reference, config)), config


def lut_sequence(values: np.ndarray, first: int, bits: int) -> Sequence:
    item = Dataset()
    item.LUTDescriptor = [len(values), first, bits]
    item.LUTData = [int(v) for v in values]
    return Sequence([item])


def variants(ds: Dataset, raw: np.ndarray) -> dict[str, tuple[Dataset, np.ndarray]]:
    """The tag combinations the pydicom-data films lack, built on a real film's pixels and header."""
    out: dict[str, tuple[Dataset, np.ndarray]] = {}

    def make(name: str, pixels: np.ndarray = raw, drop: tuple[str, ...] = (), **tags: Any) -> None:
        v = copy.deepcopy(ds)
        for keyword in drop:
            if keyword in v:
                delattr(v, keyword)
        for keyword, value in tags.items():
            setattr(v, keyword, value)
        out[name] = (v, pixels)

    top = int(raw.max())
    make("monochrome2", PhotometricInterpretation="MONOCHROME2")
    make("no-window", drop=("WindowCenter", "WindowWidth"))
    make("rescale", RescaleSlope=0.37, RescaleIntercept=-112.5)
    make("negative-slope-rescale-window", RescaleSlope=-1.5, RescaleIntercept=300.0, WindowCenter=-200.0, WindowWidth=700.0)
    make("linear-exact", VOILUTFunction="LINEAR_EXACT", WindowCenter=top / 3, WindowWidth=top / 2)
    signed = (raw.astype(np.int32) - top // 2).astype(np.int16)
    make("signed-non-negative", raw.astype(np.int16), PixelRepresentation=1)
    make("signed", signed, PixelRepresentation=1, WindowCenter=0.0, WindowWidth=float(top))
    make("signed-rescale", signed, PixelRepresentation=1, RescaleSlope=2.0, RescaleIntercept=10.0, drop=("WindowCenter", "WindowWidth"))
    zigzag = (np.abs(((np.arange(4096) * 37) % 8192) - 4096)).astype(np.uint16)  # a non-monotonic VOI LUT
    make("voi-lut-sequence", VOILUTSequence=lut_sequence(zigzag, 16, 16))
    make("signed-voi-lut-sequence", signed, PixelRepresentation=1, VOILUTSequence=lut_sequence(zigzag, -top // 2, 16))
    ramp = (np.arange(top + 1) // 3).astype(np.uint16)
    make("modality-lut-sequence", ModalityLUTSequence=lut_sequence(ramp, 0, 16), drop=("RescaleSlope", "RescaleIntercept"))
    make("eight-bit", (raw >> 2).astype(np.uint8), BitsAllocated=8, BitsStored=8, HighBit=7, drop=("WindowCenter", "WindowWidth"))
    make("constant", np.full_like(raw, 7))
    return out


@pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG1_UNCR.dcm"])
def test_table_route_equals_the_pixel_route_for_every_tag_variant(name: str) -> None:
    ds = pydicom.dcmread(film_path(name))
    raw = ds.pixel_array[::4, ::4].copy()  # a quarter of the side: the variants, not the size, are under test
    for label, (variant, pixels) in variants(ds, raw).items():
        photometric = str(variant.PhotometricInterpretation)
        table = display.display_by_table(pixels, copy.deepcopy(variant), photometric, Path(name), {})
        direct = display.display_direct(pixels, copy.deepcopy(variant), photometric, Path(name), {})
        assert table is not None, label
        assert table.dtype == direct.dtype == np.float32 and np.array_equal(table, direct), label


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_routes_refuse_non_finite_values_alike() -> None:
    ds = pydicom.dcmread(film_path("RG3_UNCR.dcm"))
    raw = ds.pixel_array[::8, ::8].copy()
    ds.RescaleSlope, ds.RescaleIntercept = 1e308, 0.0  # float64 overflows to inf, then to ±inf in float32
    del ds.WindowCenter, ds.WindowWidth
    assert display.display_by_table(raw, copy.deepcopy(ds), "MONOCHROME1", Path("x.dcm"), {}) is None
    with pytest.raises(DataError, match="NaN or infinite after the modality/VOI LUT"):
        display.display_values(raw, ds, "MONOCHROME1", Path("x.dcm"), {})


def whole_film_trim(img: np.ndarray) -> np.ndarray:
    """The border trim as commit 6730fab wrote it (every row's and column's sd), the reference for the edge-only one."""
    from salad.preprocess import BORDER_MAX, BORDER_SD

    rows, cols = img.std(axis=1) >= BORDER_SD, img.std(axis=0) >= BORDER_SD

    def span(content: np.ndarray, n: int) -> tuple[int, int]:
        limit = int(n * BORDER_MAX)
        first = int(np.argmax(content)) if content.any() else 0
        last = n - int(np.argmax(content[::-1])) if content.any() else n
        return min(first, limit), max(last, n - limit)

    (top, bottom), (left, right) = span(rows, img.shape[0]), span(cols, img.shape[1])
    return img[top:bottom, left:right]


def framed_variants(film: np.ndarray) -> dict[str, np.ndarray]:
    """A real film with uniform bands: narrow, deeper than BORDER_MAX, on one edge only, everywhere but a middle strip."""
    h, w = film.shape
    out = {"as is": film}
    narrow = film.copy()
    narrow[: h // 10], narrow[-h // 20 :], narrow[:, : w // 8], narrow[:, -3:] = 0.0, 1.0, 0.2, 0.7
    out["narrow bands"] = narrow
    deep = film.copy()
    deep[: h // 2], deep[:, -w // 3 :] = 0.0, 0.5
    out["bands deeper than the limit"] = deep
    middle = np.full_like(film, 0.3)
    middle[h // 2 - 20 : h // 2 + 20, w // 2 - 20 : w // 2 + 20] = film[h // 2 - 20 : h // 2 + 20, w // 2 - 20 : w // 2 + 20]
    out["content only in the middle"] = middle
    out["uniform"] = np.full_like(film, 0.4)
    return out


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_edge_only_border_trim_cuts_where_the_whole_film_trim_cuts(name: str) -> None:
    from salad.preprocess import trim_uniform_border

    for label, film in framed_variants(read_image(film_path(name))).items():
        expected, found = whole_film_trim(film), trim_uniform_border(film)
        assert found.shape == expected.shape and np.array_equal(found, expected), label
