"""Training runs on real films: run directory contents, resume, bad input through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from click.testing import CliRunner  # noqa: E402

from salad.cli import main  # noqa: E402
from salad.train.trainer import Trainer, load_checkpoint, train_run  # noqa: E402

from ..conftest import SAMPLE_EVAL, SAMPLE_TRAIN, tiny_config  # noqa: E402


def test_run_directory_holds_everything_needed(tiny_run: Path) -> None:
    for name in ("config.json", "checkpoint.pt", "metrics.jsonl", "val_scores.npz", "train.csv", "val.csv"):
        assert (tiny_run / name).is_file(), name
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert cfg["model"]["size"] == 64 and cfg["preprocessing"]["size"] == 64
    lines = [json.loads(x) for x in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1, 2]
    assert [x["round"] for x in lines] == [0, 1, 2]
    assert [x["anchors"] for x in lines] == [0, 20, 40]  # min(N, int(N·0.1·r)) with N = 200
    assert all("val_auc" in x and "seconds" in x for x in lines)
    state = load_checkpoint(tiny_run / "checkpoint.pt")  # weights_only=True inside
    assert state["finished"] is True and state["bank"].shape == (200, 200)
    assert torch.allclose(state["bank"].norm(dim=1), torch.ones(200), atol=1e-5)
    val = np.load(tiny_run / "val_scores.npz")
    assert len(val["score"]) == 80 and set(val["label"].tolist()) == {0, 1}


def test_interrupted_run_resumes_to_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(size=64, pretrain_epochs=1, rounds=2, round_epochs=1)
    full = tmp_path / "full"
    train_run(SAMPLE_TRAIN, full, cfg)

    part = tmp_path / "part"
    original_save = Trainer.save

    def save_then_stop(self: Trainer, epoch: int, finished: bool = False) -> None:
        original_save(self, epoch, finished)
        if epoch == 1 and not finished:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C after epoch 1

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_run(SAMPLE_TRAIN, part, cfg)
    monkeypatch.setattr(Trainer, "save", original_save)
    assert load_checkpoint(part / "checkpoint.pt")["epoch"] == 1
    train_run(SAMPLE_TRAIN, part, cfg, resume=True)

    a, b = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    assert torch.allclose(a["bank"], b["bank"], atol=1e-5)
    for key in a["model"]:
        assert torch.allclose(a["model"][key].float(), b["model"][key].float(), atol=1e-5), key
    epochs = [json.loads(x)["epoch"] for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]


def test_existing_run_needs_resume_or_force(tiny_run: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    result = CliRunner().invoke(main, ["train", "--data", str(SAMPLE_TRAIN), "--out", str(copy)])
    assert result.exit_code == 1
    assert "already exists. Pass --resume" in result.output


def _cli_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a clean exit, not a crash
    return result.output


def test_bad_training_inputs_give_one_line_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images found" in _cli_error(["train", "--data", str(empty), "--out", str(tmp_path / "r1")])

    broken = tmp_path / "broken"
    shutil.copytree(SAMPLE_TRAIN, broken)
    victim = sorted(broken.iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:500])
    out = _cli_error(["train", "--data", str(broken), "--out", str(tmp_path / "r2"), "--size", "64", "--width", "0.125"])
    assert victim.name in out and "truncated" in out and "re-copy or re-export" in out

    csv = tmp_path / "cols.csv"
    csv.write_text("image,label\nx.png,0\n")
    assert "missing column(s) ['path']" in _cli_error(["train", "--data", str(csv), "--out", str(tmp_path / "r3")])

    csv2 = tmp_path / "files.csv"
    csv2.write_text("path,label\nmissing.png,0\n")
    assert "do not exist" in _cli_error(["train", "--data", str(csv2), "--out", str(tmp_path / "r4")])

    abnormal = tmp_path / "abnormal"
    shutil.copytree(SAMPLE_EVAL / "pneumonia", abnormal / "pneumonia")
    assert "no normal (label 0) images" in _cli_error(["train", "--data", str(abnormal), "--out", str(tmp_path / "r5")])
    assert not (tmp_path / "r5").exists()


def test_known_anomalies_enter_training_and_are_marked_in_the_bank(tmp_path: Path) -> None:
    out = tmp_path / "ar"
    train_run(SAMPLE_EVAL, out, tiny_config(pretrain_epochs=1, rounds=0, round_epochs=0, known_anomaly_ratio=0.2, score_k=5))
    state = load_checkpoint(out / "checkpoint.pt")
    labels = state["bank_labels"]
    n_normal_train = int((labels == 0).sum())
    assert int((labels == 1).sum()) == round(0.2 * n_normal_train / 0.8)
