"""The Scorer's events, in pynetdicom's style (`pynetdicom/events.py`): others listen to the scoring path, never change it.

A notification event may have any number of handlers; a handler's exception is logged and the work goes on, so a
listener (the drift guard, a progress bar, a ledger) can never cost a film its score. An intervention event has at
most one handler, whose result decides (its default when none is bound), and whose exception propagates. Handlers
are bound per Scorer (`scorer.bind(PREPARED, handler)`); this module holds no state of its own and imports no numpy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from salad.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from .result import Result

logger = logging.getLogger("salad.runtime.events")

P = TypeVar("P")  # what the event carries to its handlers
R = TypeVar("R")  # what an intervention handler returns


@dataclass(frozen=True)
class NotificationEvent(Generic[P]):
    """An event any number of handlers hear; their errors are logged, never raised into the work."""

    name: str
    description: str


@dataclass(frozen=True)
class InterventionEvent(Generic[P, R]):
    """An event with at most one handler, whose result decides what the work does (`default` when none is bound)."""

    name: str
    description: str
    default: Callable[[P], R] = field(compare=False)


@dataclass(frozen=True)
class Prepared:
    """A film decoded and preprocessed: `image` display-ready (H×W in [0, 1]), `tensor` the runner's input [1, S, S].

    `index` numbers the films a Scorer has taken in, in order; its `Scored` event carries the same number.
    """

    index: int
    name: str | None
    image: np.ndarray
    tensor: np.ndarray


@dataclass(frozen=True)
class Scored:
    """A film's Result (or its error row), with the `index` of its `Prepared` event (films refused before it have none)."""

    index: int
    result: Result


@dataclass(frozen=True)
class ScoredBatch:
    """The films of one runner batch (up to the Scorer's `max_batch`), each after its `Scored` event, in input order."""

    scored: tuple[Scored, ...]


def _go_on(batch: ScoredBatch) -> bool:
    return True


#: After a film is decoded and preprocessed, before it is scored.
PREPARED: NotificationEvent[Prepared] = NotificationEvent("prepared", "film decoded and preprocessed")
#: After a film is scored, or refused (then `result.error` is set): once per Result the Scorer returns.
SCORED: NotificationEvent[Scored] = NotificationEvent("scored", "film scored or refused")
#: After the `scored` events of one runner batch. Its one handler acts on the batch as a whole and returns whether
#: the Scorer goes on (False: the call returns the Results so far; the films after the batch are neither scored nor
#: announced). An intervention, not a notification, for a listener whose work must hold for the whole batch or stop
#: the work: the DICOM node makes each batch durable in one order (SRs, rows with one fsync, then the inbox
#: entries; serve/worker.py), which one listener per film cannot do, and a failure there must reach the caller
#: (a full disk: the films stay queued; anything else stops the node) instead of being logged and passed over.
BATCH_SCORED: InterventionEvent[ScoredBatch, bool] = InterventionEvent(
    "batch-scored", "one runner batch scored; the handler says whether scoring goes on", default=_go_on)


class Events:
    """The handlers bound to one source's events; `trigger` calls them as their kind says."""

    def __init__(self) -> None:
        self._notify: dict[str, list[Callable[[Any], object]]] = {}
        self._intervene: dict[str, Callable[[Any], Any]] = {}

    def bind(self, event: NotificationEvent[P] | InterventionEvent[P, Any], handler: Callable[[P], object]) -> None:
        """Add a handler; an intervention event that already has one is a ConfigError (unbind it first)."""
        if isinstance(event, InterventionEvent):
            bound = self._intervene.get(event.name)
            if bound is not None and bound != handler:  # == : a bound method is a new object at each access
                raise ConfigError(f"event {event.name!r} already has a handler ({_name(bound)}); an intervention event "
                                  "takes one handler. Unbind it first.")
            self._intervene[event.name] = handler
        elif handler not in self._notify.setdefault(event.name, []):
            self._notify[event.name].append(handler)

    def unbind(self, event: NotificationEvent[P] | InterventionEvent[P, Any], handler: Callable[[P], object]) -> None:
        """Remove a handler (one that is not bound is ignored, as pynetdicom does)."""
        if isinstance(event, InterventionEvent):
            if self._intervene.get(event.name) == handler:
                del self._intervene[event.name]
        elif handler in self._notify.get(event.name, []):
            self._notify[event.name].remove(handler)

    @contextmanager
    def bound(self, event: NotificationEvent[P] | InterventionEvent[P, Any], handler: Callable[[P], object]) -> Iterator[None]:
        """`handler` bound for the duration of a with-block (unbound however the block ends)."""
        self.bind(event, handler)
        try:
            yield
        finally:
            self.unbind(event, handler)

    def handlers(self, event: NotificationEvent[Any] | InterventionEvent[Any, Any]) -> list[Callable[[Any], object]]:
        """The handlers bound to `event` now, in the order they were bound."""
        if isinstance(event, InterventionEvent):
            return [self._intervene[event.name]] if event.name in self._intervene else []
        return list(self._notify.get(event.name, []))

    def notify(self, event: NotificationEvent[P], payload: P) -> None:
        """Call every handler of a notification event; one that raises is logged and the others still run."""
        for handler in self._notify.get(event.name, ()):
            try:
                handler(payload)
            except Exception:  # a listener's error never stops the work (pynetdicom's rule for notifications)
                logger.exception("a handler of the %r event (%s) raised; the work goes on without it", event.name, _name(handler))

    def intervene(self, event: InterventionEvent[P, R], payload: P) -> R:
        """The bound handler's result (the event's default without one); its exception propagates."""
        handler = self._intervene.get(event.name, event.default)
        result: R = handler(payload)
        return result


def _name(handler: Callable[..., object]) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
