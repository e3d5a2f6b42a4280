"""The two latent-loss forms (reference code's replacement, the paper's sum) and the growing neighbourhood."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from salad.errors import ConfigError  # noqa: E402
from salad.train.losses import discrimination_terms, neighbours_of_round, select_anchors  # noqa: E402
from salad.train.trainer import load_checkpoint, train_run  # noqa: E402

from ..conftest import SAMPLE_EVAL, SAMPLE_TRAIN, tiny_config  # noqa: E402


def _unit(n: int, d: int = 8, seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _setup() -> tuple[Any, Any, Any, Any, Any, list[list[float]]]:
    bank, z = _unit(10), _unit(2, seed=2)
    idx = torch.tensor([3, 7])
    neighbours = torch.tensor([[(i + 1) % 10, (i + 2) % 10] for i in range(10)])
    is_anchor = torch.zeros(10, dtype=torch.bool)
    is_anchor[3] = True  # row 3 is an anchor, row 7 is not
    p = [[math.exp(float(z[b] @ bank[j]) / 0.1) for j in range(10)] for b in range(2)]
    return bank, z, idx, neighbours, is_anchor, p


def test_sum_form_adds_the_instance_and_aggregation_terms_as_in_eq_3() -> None:
    bank, z, idx, neighbours, is_anchor, p = _setup()
    got = discrimination_terms(z, idx, bank, 0.1, neighbours, is_anchor, form="sum")
    l_ss = -math.log(p[0][3] / sum(p[0]))
    l_agg = -math.log((p[0][4] + p[0][5]) / sum(p[0]))
    assert float(got[0]) == pytest.approx(l_ss + l_agg, rel=1e-9)
    assert float(got[1]) == pytest.approx(-math.log(p[1][7] / sum(p[1])), rel=1e-9)  # non-anchor: L_ss alone


def test_forms_differ_only_for_anchors() -> None:
    bank, z, idx, neighbours, is_anchor, p = _setup()
    replace = discrimination_terms(z, idx, bank, 0.1, neighbours, is_anchor)  # the default is the reference code's form
    summed = discrimination_terms(z, idx, bank, 0.1, neighbours, is_anchor, form="sum")
    assert float(replace[0]) == pytest.approx(-math.log((p[0][3] + p[0][4] + p[0][5]) / sum(p[0])), rel=1e-9)
    assert float(replace[1]) == float(summed[1])
    assert float(summed[0]) > float(replace[0])


def test_growing_neighbourhood_adds_growth_per_round_and_is_capped_by_the_bank() -> None:
    assert [neighbours_of_round(10, 0, r) for r in (1, 5, 10)] == [10, 10, 10]
    assert [neighbours_of_round(10, 10, r) for r in (1, 2, 10)] == [10, 20, 100]
    _, nb = select_anchors(_unit(6), 0.1, neighbours_of_round(10, 10, 3), 3)
    assert nb.shape == (6, 5)  # at most N − 1 other rows


def test_config_rejects_unknown_form_and_negative_growth() -> None:
    with pytest.raises(ConfigError, match="latent loss 'paper'; expected 'replace'"):
        tiny_config(latent_loss="paper").validate()
    with pytest.raises(ConfigError, match="neighbours growth -1"):
        tiny_config(neighbours_growth=-1).validate()


def test_training_with_the_paper_form_and_growing_k_records_both(tmp_path: Path) -> None:
    cfg = tiny_config(latent_loss="sum", neighbours_growth=5, pretrain_epochs=1, rounds=2, round_epochs=1)
    train_run(SAMPLE_TRAIN, tmp_path / "run", cfg, val=SAMPLE_EVAL)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved["latent_loss"] == "sum" and saved["neighbours_growth"] == 5
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["neighbours"].shape[1] == 15  # round 2: k = 10 + 5
    losses = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(row["disc"]) for row in losses) and losses[-1]["anchors"] > 0
    with pytest.raises(ConfigError, match="latent_loss"):  # resuming with the other form is refused, not mixed
        train_run(SAMPLE_TRAIN, tmp_path / "run", dataclasses.replace(cfg, latent_loss="replace"), val=SAMPLE_EVAL, resume=True)


def test_checkpoint_every_n_epochs_still_ends_with_the_finished_run(tmp_path: Path) -> None:
    cfg = tiny_config(checkpoint_every=2, pretrain_epochs=1, rounds=2, round_epochs=1)  # 3 epochs: saves after 2 and 3
    train_run(SAMPLE_TRAIN, tmp_path / "run", cfg, val=SAMPLE_EVAL)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["finished"] is True and state["epoch"] == 2
    with pytest.raises(ConfigError, match="checkpoint every 0 epochs"):
        tiny_config(checkpoint_every=0).validate()
