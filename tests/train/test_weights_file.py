"""`--weights` takes a state dict of tensors only: a pickle of anything else is a one-line typed refusal, never run."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="training needs torch (install salad-edge[train])")

from salad.errors import DataError  # noqa: E402
from salad.train.models import ModelConfig, ResNet18Encoder, load_weights  # noqa: E402
from tests.conftest import SAMPLE_TRAIN  # noqa: E402

CFG = ModelConfig(encoder="resnet18", size=64, width=0.25)


class _Payload:
    """A pickle that would create a file when unpickled with full pickle (what weights_only=True must never do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, ...]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_with_code_is_refused_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    weights = tmp_path / "weights.pkl"
    weights.write_bytes(pickle.dumps({"conv1.weight": _Payload(marker)}, protocol=2))
    with pytest.raises(DataError, match=r"weights\.pkl: not a plain state dict of tensors; torch\.load\(weights_only=True\) "
                                        r"refused it \(.*GLOBAL posix\.system.*\)\. Loading it would run code"):
        load_weights(ResNet18Encoder(CFG), str(weights))
    assert not marker.exists()


def test_a_plain_python_pickle_and_other_contents_are_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"conv1.weight": [1.0, 2.0]}))  # protocol 5: not torch's format
    with pytest.raises(DataError, match=r"plain\.pkl: not a plain state dict of tensors; .*Save the weights as torch\.save"):
        load_weights(ResNet18Encoder(CFG), str(plain))
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(DataError, match=r"tensor\.pt: holds Tensor, not a state dict of tensors"):
        load_weights(ResNet18Encoder(CFG), str(tensor))
    mixed = tmp_path / "mixed.pt"
    torch.save({"conv1.weight": torch.zeros(3), "epoch": 3}, mixed)
    with pytest.raises(DataError, match=r"mixed\.pt: holds Tensor, int, not a state dict of tensors"):
        load_weights(ResNet18Encoder(CFG), str(mixed))
    text = tmp_path / "notes.pt"
    text.write_text("not weights\n")
    with pytest.raises(DataError, match=r"notes\.pt: (not a plain state dict|cannot read these weights)"):
        load_weights(ResNet18Encoder(CFG), str(text))
    cut = tmp_path / "cut.pt"
    torch.save(ResNet18Encoder(CFG).state_dict(), cut)
    cut.write_bytes(cut.read_bytes()[:4000])
    with pytest.raises(DataError, match=r"cut\.pt: cannot read these weights \(RuntimeError"):
        load_weights(ResNet18Encoder(CFG), str(cut))


def test_salad_train_with_a_pickle_exits_1_in_one_line_and_writes_no_run(tmp_path: Path) -> None:
    weights = tmp_path / "weights.pkl"
    weights.write_bytes(pickle.dumps({"conv1.weight": [1.0, 2.0]}))
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "salad.cli", "-q", "train", "--data", str(SAMPLE_TRAIN), "--out", str(out), "--encoder", "resnet18",
         "--size", "64", "--width", "0.25", "--weights", str(weights)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {weights}: not a plain state dict of tensors"), proc.stderr
    assert not out.exists()
