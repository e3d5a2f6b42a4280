"""Training and evaluation fail loudly, with the file or epoch named, never into a NaN model or a traceback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from salad.errors import RunError, SaladError  # noqa: E402
from salad.train.evaluate import evaluate_run  # noqa: E402
from salad.train.trainer import load_checkpoint, train_run  # noqa: E402

from ..conftest import SAMPLE_EVAL, SAMPLE_TRAIN, tiny_config  # noqa: E402


def test_a_non_finite_loss_stops_the_run_naming_the_epoch(tmp_path: Path) -> None:
    """An absurd learning rate drives the weights to infinity: the run stops at the first non-finite loss."""
    with pytest.raises(RunError, match=r"the training loss became (nan|inf) at epoch \d+, step \d+ .*lower --lr"):
        train_run(SAMPLE_TRAIN, tmp_path / "run", tiny_config(lr=1e38, pretrain_epochs=3, rounds=0))
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt") if (tmp_path / "run" / "checkpoint.pt").exists() else None
    assert state is None or state["finished"] is False  # no finished model was written from a NaN state


def test_evaluate_refuses_a_model_with_a_non_finite_bank(tiny_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    state = load_checkpoint(run / "checkpoint.pt")
    state["bank"][3, :] = float("nan")
    torch.save(state, run / "checkpoint.pt")
    with pytest.raises(RunError, match="memory bank holds non-finite values"):
        evaluate_run(run, SAMPLE_EVAL)


def test_force_replaces_only_a_run_directory(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    (precious / "config.json").write_text("{}")
    with pytest.raises(SaladError, match=r"--force replaces only a run directory .* Nothing was deleted"):
        train_run(SAMPLE_TRAIN, precious, tiny_config(), force=True)
    assert (precious / "thesis.tex").read_text() == "years of work"
    cfg = tiny_config(pretrain_epochs=1, rounds=0)
    run = tmp_path / "run"
    train_run(SAMPLE_TRAIN, run, cfg)
    (run / "notes.md").write_text("my notes")  # a run the user annotated is still a run (it has its checkpoint)
    train_run(SAMPLE_TRAIN, run, cfg, force=True)
    assert not (run / "notes.md").exists() and load_checkpoint(run / "checkpoint.pt")["finished"]


def test_sigterm_stops_training_like_ctrl_c_and_the_run_resumes(tmp_path: Path) -> None:
    """A service manager's SIGTERM: exit 130 with one line, a consistent checkpoint, and --resume finishes."""
    run = tmp_path / "run"
    salad = [sys.executable, "-m", "salad.cli", "train", "--data", str(SAMPLE_TRAIN), "--out", str(run), "--size", "64",
             "--width", "0.125", "--pretrain-epochs", "40", "--rounds", "0", "--batch-size", "16", "--k", "20",
             "--threads", "1", "--no-bank-refresh"]
    proc = subprocess.Popen(salad, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    state = load_checkpoint(run / "checkpoint.pt")
    assert not state["finished"] and 0 <= state["epoch"] < 39
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    resumed = subprocess.run([*salad, "--pretrain-epochs", "40", "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["epochs"] == 40
    assert load_checkpoint(run / "checkpoint.pt")["finished"]


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="POSIX users and modes")
def test_an_unreadable_file_is_one_line_naming_it(tiny_run: Path, tmp_path: Path) -> None:
    """A PermissionError reaches the user as `error: FILE: Permission denied; …`, not a traceback."""
    films = [p for cls in ("normal", "pneumonia") for p in sorted((SAMPLE_EVAL / cls).glob("*.jpeg"))[:2]]
    locked = Path(shutil.copy(films[0], tmp_path / "locked.jpeg"))
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\n" + "".join(f"{p},{int('pneumonia' in str(p))}\n" for p in [locked, *films[1:]]))
    os.chmod(locked, 0o000)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root reads every file: drop the capabilities that let it, as a service account lacks them
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, and setpriv (util-linux) is not installed to drop root's file-access override")
        drop = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--inh-caps={drop}", f"--bounding-set={drop}"]
    done = subprocess.run([*prefix, sys.executable, "-m", "salad.cli", "evaluate", str(tiny_run), "--labelled", str(labels)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert f"error: {locked}: cannot read (Permission denied)" in done.stderr
    assert "Traceback" not in done.stderr


def test_abnormal_films_in_the_training_folder_label_the_validation_set(tmp_path: Path) -> None:
    """Class folders as --data: normals of training patients train; validation gets held-out normals *and* abnormals."""
    from salad.train.trainer import prepare_data

    data = tmp_path / "data"
    for cls, src in (("normal", SAMPLE_TRAIN), ("pneumonia", SAMPLE_EVAL / "pneumonia")):
        (data / cls).mkdir(parents=True)
        for f in sorted(src.glob("*.jpeg"))[:60]:
            shutil.copy(f, data / cls / f.name)
    train, val, desc = prepare_data(data, None, tiny_config())
    assert {s.label for s in train} == {0} and {s.label for s in val} == {0, 1}
    assert not {s.path for s in train} & {s.path for s in val}
    assert "abnormal films of 10% of the abnormal patients" in desc["val_source"]


def test_a_run_records_its_validation_auc_beside_its_floors(tiny_run: Path) -> None:
    validation = json.loads((tiny_run / "validation.json").read_text())
    assert set(validation["floors"]) == {"untrained-weights", "thumbnail8-knn", "thumbnail16-knn", "raw-pixel-knn", "centre-minus-mean"}
    assert validation["n_normal"] == 40 and validation["n_abnormal"] == 40
    need = {k: min(v + 0.05, v + (1 - v) / 2) for k, v in validation["floors"].items()}
    assert validation["beats_floors"] == all(validation["auc"] >= round(n, 4) for n in need.values())
