"""The Scorer's events (runtime/events.py): `prepared` per film decoded, `scored` per Result; listeners never change a score."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from salad.errors import ConfigError
from salad.imageio import read_image
from salad.preprocess import preprocess
from salad.runtime import Scorer
from salad.runtime.events import BATCH_SCORED, PREPARED, SCORED, Events, InterventionEvent, Prepared, Scored, ScoredBatch


def _rows(results: list) -> list[dict]:  # type: ignore[type-arg]
    return [{k: v for k, v in r.to_dict().items() if k != "ms"} for r in results]


def test_each_film_is_announced_once_prepared_and_once_scored_in_input_order(tiny_bundle: Path, film_folder: Path,
                                                                              tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not a film")
    files = sorted(film_folder.rglob("*.jpeg"))
    inputs = [files[0], broken, *files[1:]]
    prepared: list[Prepared] = []
    scored: list[Scored] = []
    with Scorer.from_bundle(tiny_bundle, max_batch=4) as scorer:
        plain = scorer.score(inputs, on_error="record")
        scorer.bind(PREPARED, prepared.append)
        scorer.bind(SCORED, scored.append)
        results = scorer.score(inputs, on_error="record")
        scorer.unbind(PREPARED, prepared.append)
        scorer.unbind(SCORED, scored.append)
        scorer.score(files[:2])  # unbound: heard by no one
    assert _rows(results) == _rows(plain)
    # prepared: every readable film, once, as the reader and the bundle's preprocessing give it
    assert [e.name for e in prepared] == [str(p) for p in files]
    for event, path in zip(prepared, files, strict=True):
        film = read_image(path)
        assert np.array_equal(event.image, film)
        assert np.array_equal(event.tensor, preprocess(film, scorer.preprocess_config))
    # scored: one event per Result (the refused film included), in input order, numbered as its prepared event
    assert [e.result for e in scored] == results and len(results) == len(inputs)
    assert [e.index for e in scored] == list(range(len(inputs), 2 * len(inputs)))  # numbering continues across calls
    assert {e.index for e in prepared} == {e.index for e in scored if e.result.ok}
    assert not scored[1].result.ok and "broken.png" in str(scored[1].result.error)


def test_a_failing_listener_is_logged_and_changes_nothing(tiny_bundle: Path, film_folder: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    files = sorted(film_folder.rglob("*.jpeg"))
    heard: list[int] = []

    def broken(event: Prepared) -> None:
        raise RuntimeError("listener bug")

    with Scorer.from_bundle(tiny_bundle) as scorer:
        plain = scorer.score(files)
        with scorer.bound(PREPARED, broken), scorer.bound(PREPARED, lambda e: heard.append(e.index)), \
                caplog.at_level(logging.ERROR, logger="salad.runtime.events"):
            results = scorer.score(files)
        assert scorer.events.handlers(PREPARED) == []  # the with-block unbinds
    assert _rows(results) == _rows(plain)
    assert len(heard) == len(files)  # the handler after the failing one still ran, for every film
    failures = [r for r in caplog.records if "prepared" in r.getMessage()]
    assert len(failures) == len(files) and all("listener bug" in (r.exc_text or "") for r in failures)


def test_an_intervention_event_has_one_handler_whose_result_decides() -> None:
    keep = InterventionEvent[str, bool]("keep", "whether to keep a film", default=lambda name: True)
    events = Events()
    assert events.intervene(keep, "a.png") is True  # nothing bound: the default decides
    refuse = lambda name: name != "a.png"  # noqa: E731 - a handler
    events.bind(keep, refuse)
    assert events.intervene(keep, "a.png") is False and events.intervene(keep, "b.png") is True
    with pytest.raises(ConfigError, match="already has a handler"):
        events.bind(keep, lambda name: False)

    def fails(name: str) -> bool:
        raise ValueError(name)

    events.unbind(keep, refuse)
    with events.bound(keep, fails), pytest.raises(ValueError, match="b.png"):
        events.intervene(keep, "b.png")  # an intervention handler's error is the work's error
    assert events.intervene(keep, "a.png") is True


def test_each_runner_batch_is_announced_after_its_films_and_its_handler_may_stop_the_call(tiny_bundle: Path,
                                                                                           film_folder: Path) -> None:
    files = sorted(film_folder.rglob("*.jpeg"))[:5]
    order: list[str] = []
    batches: list[ScoredBatch] = []

    def keep_going(batch: ScoredBatch) -> bool:
        order.append("batch")
        batches.append(batch)
        return True

    with Scorer.from_bundle(tiny_bundle, max_batch=2) as scorer:
        plain = scorer.score(files)
        with scorer.bound(SCORED, lambda e: order.append("scored")), scorer.bound(BATCH_SCORED, keep_going):
            results = scorer.score(files)
        assert [[s.result for s in b.scored] for b in batches] == [results[0:2], results[2:4], results[4:5]]
        assert order == ["scored", "scored", "batch"] * 2 + ["scored", "batch"]  # each batch after its films' events
        batches.clear()

        def stop(batch: ScoredBatch) -> bool:
            batches.append(batch)
            return False  # after the first batch: the call ends there

        with scorer.bound(BATCH_SCORED, stop):
            stopped = scorer.score(files)
    assert _rows(results) == _rows(plain)
    assert _rows(stopped) == _rows(plain[:2])
    assert len(batches) == 1  # the films after the stopping batch were neither scored nor announced
