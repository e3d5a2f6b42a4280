"""Fitting on real films, the estimator directory, attach/verify, ranking from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from salad.cli import main
from salad.errors import BundleError, DataError
from salad.manifest import read_manifest
from salad.onsite.attach import DRIFT_FILE, FILES, POINTS_FILE, Attached, attach
from salad.onsite.estimator import Estimator
from salad.similarity.cli import similarity_group
from tests.conftest import SAMPLE_EVAL, SAMPLE_TRAIN, check_json_schema
from tests.similarity.conftest import NIH_NORMAL, films


def test_a_tiny_fit_writes_a_verifiable_estimator(tiny_estimator: Path) -> None:
    est = Estimator.load(tiny_estimator)
    assert sorted(est.points) == ["kermany", "nih"]
    assert all(p.shape == (40, 2) and np.isfinite(p).all() for p in est.points.values())
    assert est.info["graph"]["onnxruntime_vs_torch_max_abs"] < 1e-3
    assert est.info["eqc"] > 0 and est.info["training"]["steps"] == 6
    # the stored points are what the graph gives for the same films
    from salad.similarity.fit import load_films

    again = est.latent(1).embed(load_films(films(SAMPLE_TRAIN, 40)))
    np.testing.assert_allclose(again, est.points["kermany"], atol=1e-5)


def test_a_tampered_estimator_is_refused(tiny_estimator: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_estimator, tmp_path / "est"))
    with open(copy / "points.npz", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        Estimator.load(copy)


def test_fit_resumes_from_its_checkpoint(known_films: dict[str, np.ndarray], tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from salad.similarity.fit import FitConfig, train_estimator

    cfg = FitConfig(steps=4, batch=2, max_films=10, checkpoint_every=2)
    out = tmp_path / "est"
    first, rec = train_estimator(known_films, out, cfg, threads=1, progress=False)
    assert (tmp_path / ".est.fit.pt").is_file() and rec["steps"] == 4
    again, rec2 = train_estimator(known_films, out, cfg, resume=True, threads=1, progress=False)
    assert rec2["steps"] == 4  # nothing left to do: the same weights come back
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_attach_lists_verifies_and_refuses_tampering(attached_bundle: Path, tiny_estimator: Path) -> None:
    manifest = read_manifest(attached_bundle, verify=True)
    assert set(FILES) <= set(manifest.files)
    att = Attached.from_bundle(attached_bundle)
    assert att.estimator_sha256 == Estimator.load(tiny_estimator).sha256
    assert len(att.reference) + len(att.held_out) == 200 and att.reference.shape[1] == 2
    info = json.loads((attached_bundle / DRIFT_FILE).read_text())
    assert set(info["style"]["thresholds"]) == {"10", "20", "50", "100", "200"} and info["schema"] == "salad-similarity-drift/2"
    assert "path" not in json.dumps(info["films"])  # no film names or pixels leave the site, only hashes and counts
    with open(attached_bundle / POINTS_FILE, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        read_manifest(attached_bundle, verify=True)


def test_attach_twice_needs_force(attached_bundle: Path, tiny_estimator: Path) -> None:
    with pytest.raises(BundleError, match="--force"):
        attach(tiny_estimator, attached_bundle, SAMPLE_TRAIN, threads=1)
    attach(tiny_estimator, attached_bundle, SAMPLE_TRAIN, holdout=SAMPLE_EVAL / "normal", force=True, threads=1)
    assert json.loads((attached_bundle / DRIFT_FILE).read_text())["films"]["held_out"] == 40
    read_manifest(attached_bundle, verify=True)


def test_choose_bundle_by_style_from_the_command_line_and_its_deprecated_alias(attached_bundle: Path, tiny_estimator: Path,
                                                                              tmp_path: Path) -> None:
    out, old = tmp_path / "rank.json", tmp_path / "old" / "rank.json"
    ranking = ["--estimator", str(tiny_estimator), "--target", str(NIH_NORMAL),
               "--candidate", f"bundle={attached_bundle}", "--candidate", f"nih-films={NIH_NORMAL}", "--threads", "1"]
    done = CliRunner().invoke(main, ["choose-bundle", "--by", "style", *ranking, "--json", str(out)])
    assert done.exit_code == 0, done.output
    body = check_json_schema("similarity-ranking", json.loads(out.read_text()))
    assert body["schema"] == "salad-similarity-ranking/1" and body["target"] == str(NIH_NORMAL)
    distances = [r["distance"] for r in body["ranking"]]
    assert distances == sorted(distances) and {r["candidate"] for r in body["ranking"]} == {"bundle", "nih-films"}
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "candidate" in done.stdout and "distance" in done.stdout and "deprecated" not in done.output
    # `salad similarity rank` warns and gives the same ranking
    alias = CliRunner().invoke(main, ["similarity", "rank", *ranking, "--json", str(old)])
    assert alias.exit_code == 0, alias.output
    assert "`salad similarity rank` is deprecated; use `salad choose-bundle --by style`" in alias.stderr
    drop = lambda b: {k: v for k, v in b.items() if k != "seconds"}  # noqa: E731 - the wall time differs
    assert drop(json.loads(old.read_text())) == drop(body) and alias.stdout == done.stdout


def test_rank_refuses_points_of_another_estimator(attached_bundle: Path, tiny_estimator: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(tiny_estimator, tmp_path / "other"))
    info = json.loads((other / "estimator.json").read_text())
    info["graph"]["sha256"] = "0" * 64
    (other / "estimator.json").write_text(json.dumps(info))
    done = CliRunner().invoke(main, ["choose-bundle", "--by", "style", "--estimator", str(other), "--target", str(NIH_NORMAL),
                                                 "--candidate", f"b={attached_bundle}"])
    assert done.exit_code == 1 and "sha256 mismatch" in done.output


def test_rank_without_an_attached_estimator_names_the_fix(bundle_copy: Path, tiny_estimator: Path) -> None:
    done = CliRunner().invoke(main, ["choose-bundle", "--by", "style", "--estimator", str(tiny_estimator), "--target", str(NIH_NORMAL),
                                                 "--candidate", f"b={bundle_copy}"])
    assert done.exit_code == 1 and "salad similarity attach" in done.output


def test_bad_candidate_syntax_is_one_line(tiny_estimator: Path) -> None:
    done = CliRunner().invoke(main, ["choose-bundle", "--by", "style", "--estimator", str(tiny_estimator), "--target", str(NIH_NORMAL),
                                                 "--candidate", "no-equals-sign"])
    assert done.exit_code == 1 and "expected NAME=PATH" in done.output


def test_fit_needs_two_datasets(tmp_path: Path) -> None:
    done = CliRunner().invoke(similarity_group, ["fit", "--data", f"a={NIH_NORMAL}", "--out", str(tmp_path / "e")])
    assert done.exit_code == 1 and "at least 2" in done.output
    with pytest.raises(DataError):
        from salad.similarity.fit import fit_estimator

        fit_estimator({"a": np.zeros((3, 1, 64, 64), np.float32)}, tmp_path / "e")


def test_fit_from_the_command_line_on_real_folders(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "est"
    args = ["fit", "--data", f"kermany={SAMPLE_EVAL}", "--data", f"nih={NIH_NORMAL}", "--out", str(out),
            "--steps", "2", "--batch", "2", "--max-films", "8", "--threads", "1", "--beta", "0.3"]
    done = CliRunner().invoke(similarity_group, args)  # the old spellings of --batch-size and --films still work
    assert done.exit_code == 0, done.output
    assert "warning: --batch is deprecated; use --batch-size (same meaning)." in done.output
    assert "warning: --max-films is deprecated; use --films (same meaning)." in done.output
    est = Estimator.load(out)
    assert est.info["config"]["batch"] == 2 and est.info["config"]["max_films"] == 8
    assert est.info["datasets"]["kermany"]["films"] == 80 and est.info["datasets"]["nih"]["films"] == 496
    assert est.info["datasets"]["nih"]["source"] == str(NIH_NORMAL)
    assert est.info["config"]["loss"]["beta"] == 0.3 and est.info["config"]["loss"]["alpha"] == 0.5
    again = CliRunner().invoke(similarity_group, args)
    assert again.exit_code == 1 and "already exists" in again.output


def test_fit_keeps_the_beta_with_the_lowest_eqc(tmp_path: Path) -> None:
    """Several --beta values: one fit each, the lowest EQC kept (the paper's label-free choice), candidates removed."""
    pytest.importorskip("torch")
    out = tmp_path / "est"
    args = ["fit", "--data", f"kermany={SAMPLE_EVAL}", "--data", f"nih={NIH_NORMAL}", "--out", str(out),
            "--steps", "3", "--batch-size", "2", "--films", "8", "--threads", "1", "--beta", "0.3", "--beta", "1.0"]
    done = CliRunner().invoke(similarity_group, args)
    assert done.exit_code == 0, done.output
    est = Estimator.load(out)
    sel = est.info["selection"]
    assert set(sel["eqc_by_beta"]) == {"0.3", "1"} and est.info["eqc"] == min(sel["eqc_by_beta"].values())
    assert est.info["config"]["loss"]["beta"] == sel["chosen_beta"] and f"kept β = {sel['chosen_beta']:g}" in done.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["est"]


def test_a_killed_attach_leaves_the_bundle_verifying_and_its_litter_is_swept(bundle_copy: Path, tiny_estimator: Path) -> None:
    litter = bundle_copy / "similarity" / ".points.npz.pending-999999999"  # a staged file of a writer that died
    litter.parent.mkdir()
    litter.write_bytes(b"half")
    read_manifest(bundle_copy, verify=True)  # unlisted pending files do not break the old bundle
    attach(tiny_estimator, bundle_copy, SAMPLE_TRAIN, threads=1)
    assert not litter.exists()
    read_manifest(bundle_copy, verify=True)
