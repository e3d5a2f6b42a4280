"""The SRs of scored films: rendered from the node's template as the Scorer announces each, made durable together per
batch, queued for forwarding, audited."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from salad.errors import SaladError
from salad.fsutil import fsync_dir
from salad.runtime import Result
from salad.runtime.events import Scored

from .audit import AuditLog
from .config import NodeConfig
from .forward import Forwarder
from .rows import Batch, Film
from .sr_template import Head, ReportTemplate
from .store import Store

log = logging.getLogger("salad.serve")


@dataclass(frozen=True)
class ScoredFilm:
    """One scored film on its way to an SR: its inbox key, header (None: unreadable), result, and whether its UID collides."""

    key: str
    header: Dataset | None
    result: Result
    collision: bool = False


class Reports:
    """The SR writer: renders a labelled film's SR on the Scorer's `scored` event, writes a batch's SRs on commit.

    `forwarder`, when set, is woken once a batch's SRs are in outbox/: it cannot listen to `scored` itself, since an SR
    may be forwarded only once it is durable, which is after the event (runtime/events.py, BATCH_SCORED).
    """

    def __init__(self, config: NodeConfig, store: Store, template: ReportTemplate, audit: AuditLog,
                 batch: Batch | None = None) -> None:
        self.config, self.store, self.template, self.audit = config, store, template, audit
        self.batch = batch if batch is not None else Batch()
        self.forwarder: Forwarder | None = None
        self.staged: dict[int, tuple[ScoredFilm, tuple[bytes, str] | Exception]] = {}  # by the event's index
        #: The batch's SR documents (all but the score-dependent content), built by `prepare` while its films are scored.
        self.heads: dict[str, Future[Head | None]] = {}
        self._heads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="salad-sr-head")

    def close(self) -> None:
        """Stop the document builder (a pending document is finished first)."""
        self._heads.shutdown(wait=True, cancel_futures=True)

    def prepare(self, films: list[Film]) -> None:
        """Start building the SR documents of a batch about to be scored: the builder thread works while the Scorer decodes
        and infers (mostly outside the GIL), so a film's SR waits only for its score's few leaves."""
        for unused in self.heads.values():  # films of the last batch that got no SR (error rows): not built for nothing
            unused.cancel()
        self.heads = {}
        for film in films:
            if film.header is None:
                continue
            try:
                film.header.walk(lambda ds, element: None)  # every element parsed here: the two threads then only read it
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types for one odd element (a wrong length, say)
                # That film's SR is rendered inline from the elements it needs, as before the head start existed.
                first = (str(exc).splitlines() or [""])[0]  # pydicom puts a whole traceback in the message
                log.info("%s: SR not built ahead (%s: %s)", film.item.key, type(exc).__name__, first)
                continue
            self.heads[film.item.key] = self._heads.submit(self.template.head, film.header, _own_uid(film.item.key, film.collision))

    def on_scored(self, event: Scored) -> None:
        """A labelled film's SR rendered (not yet written); an error row gets none."""
        result = event.result
        if result.ok and result.label is not None:
            film = self.batch.film(result.path)
            scored = ScoredFilm(film.item.key, film.header, result, film.collision)
            self.staged[event.index] = (scored, self._try_render(scored, self.heads.pop(film.item.key, None)))

    def commit(self) -> dict[int, str | Exception]:
        """The staged SRs written as one batch (write_batch's order and fsyncs), by event index: path or exception."""
        staged, self.staged = self.staged, {}
        indices = list(staged)
        done = self._write([staged[i] for i in indices])
        return dict(zip(indices, done, strict=True))

    def write(self, key: str, header: Dataset | None, result: Result, collision: bool = False) -> str:
        """One film's SR (the shape of serve/recovery.py's WriteSR); its path relative to RESULTS, or the error raised."""
        [done] = self.write_batch([ScoredFilm(key, header, result, collision)])
        if isinstance(done, BaseException):
            raise done
        return done

    def write_batch(self, films: list[ScoredFilm]) -> list[str | Exception]:
        """The SRs of `films`, rendered and written as one batch (`_write`)."""
        return self._write([(film, self._try_render(film)) for film in films])

    def _write(self, films: list[tuple[ScoredFilm, tuple[bytes, str] | Exception]]) -> list[str | Exception]:
        """Rendered SRs made durable: each fsynced, sr/ and outbox/ fsynced once, one audit write for all.

        An audit line may thus reach the disk a moment before its SR's directory entry: a crash then leaves the film
        without a row, so it is scored again, its SR rewritten (the same instance) and audited once more.

        Per film the SR's path relative to RESULTS, or the exception that kept it from being rendered or written (the
        film's row then says so and the film waits in nosr/ for the next start).
        """
        out: list[str | Exception] = []
        rendered: list[tuple[int, str, bytes, str]] = []  # (index in films, key, bytes, SR SOP Instance UID)
        for index, (film, made) in enumerate(films):
            if isinstance(made, Exception):
                out.append(made)
                continue
            out.append("")
            rendered.append((index, film.key, *made))
        written = self.store.write_srs([(key, data) for _, key, data, _ in rendered], sync_folder=False)
        done = [(index, path, uid) for (index, _, _, uid), path in zip(rendered, written, strict=True) if isinstance(path, Path)]
        for (index, *_), path in zip(rendered, written, strict=True):
            if isinstance(path, OSError):
                out[index] = path
        # sr/'s fsync runs beside the outbox links and the audit write: concurrent fsyncs share the file system's journal
        # commit, and the rows, which name the SRs, are written only after all of them (serve/worker.py)
        folder = threading.Thread(target=fsync_dir, args=(self.store.sr,), name="salad-sr-fsync")
        if done:
            folder.start()
        try:
            self._queue([path for _, path, _ in done])
        except OSError as exc:  # not queued for forwarding: made again (and queued) at the next start
            for index, _, _ in done:
                out[index] = exc
            return out
        else:
            self.audit.append_many([self._audit_fields(films[index][0], path, uid) for index, path, uid in done])
        finally:
            if done:
                folder.join()
        for index, path, _ in done:
            out[index] = str(path.relative_to(self.store.root))
        return out

    def _try_render(self, film: ScoredFilm, head: Future[Head | None] | None = None) -> tuple[bytes, str] | Exception:
        try:
            return self._render(film, None if head is None else head.result())
        except Exception as exc:  # a header highdicom cannot reference: keep the score, retry the SR at start
            return exc

    def _render(self, film: ScoredFilm, head: Head | None = None) -> tuple[bytes, str]:
        result = film.result
        if film.header is None:
            raise SaladError("the stored header cannot be read again")
        assert result.label is not None
        return self.template.render(film.header, score=result.score, knn_angle=result.knn_angle, label=result.label,
                                    instance_uid=_own_uid(film.key, film.collision), head=head)

    def _queue(self, paths: list[Path]) -> None:
        if self.forwarder is None or not paths:
            return
        self.store.queue_for_forwarding(paths)
        self.forwarder.wake.set()

    def _audit_fields(self, film: ScoredFilm, path: Path, uid: str) -> tuple[str, dict[str, Any]]:
        assert film.header is not None
        return ("sr", {"sop_instance_uid": str(film.header.SOPInstanceUID), "sr_sop_instance_uid": uid,
                       "sr": str(path.relative_to(self.store.root)), "label": film.result.label,
                       "forward_to": str(self.config.forward or "") or None})


def _own_uid(key: str, collision: bool) -> str | None:
    """A UID collision's SR gets its own SOP Instance UID (a PACS would otherwise keep only one of the two reports)."""
    return str(generate_uid(entropy_srcs=["salad-sr", key])) if collision else None
