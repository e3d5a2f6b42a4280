"""The SRs of scored films: rendered from the node's template, made durable together, queued for forwarding, audited."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from salad.errors import SaladError
from salad.fsutil import fsync_dir
from salad.runtime import Result

from .audit import AuditLog
from .config import NodeConfig
from .forward import Forwarder
from .sr_template import ReportTemplate
from .store import Store

log = logging.getLogger("salad.serve")


@dataclass(frozen=True)
class Scored:
    """One scored film on its way to an SR: its inbox key, header (None: unreadable), result, and whether its UID collides."""

    key: str
    header: Dataset | None
    result: Result
    collision: bool = False


class Reports:
    """Writes sr/KEY.dcm for scored films; `forwarder`, when set, is woken for each batch queued in outbox/."""

    def __init__(self, config: NodeConfig, store: Store, template: ReportTemplate, audit: AuditLog) -> None:
        self.config, self.store, self.template, self.audit = config, store, template, audit
        self.forwarder: Forwarder | None = None

    def write(self, key: str, header: Dataset | None, result: Result, collision: bool = False) -> str:
        """One film's SR (the shape of serve/recovery.py's WriteSR); its path relative to RESULTS, or the error raised."""
        [done] = self.write_batch([Scored(key, header, result, collision)])
        if isinstance(done, BaseException):
            raise done
        return done

    def write_batch(self, films: list[Scored]) -> list[str | Exception]:
        """The SRs of a batch: each rendered and fsynced, sr/ and outbox/ fsynced once, one audit write for all.

        An audit line may thus reach the disk a moment before its SR's directory entry: a crash then leaves the film
        without a row, so it is scored again, its SR rewritten (the same instance) and audited once more.

        Per film the SR's path relative to RESULTS, or the exception that kept it from being written (the film's
        row then says so and the film waits in nosr/ for the next start).
        """
        out: list[str | Exception] = []
        rendered: list[tuple[int, str, bytes, str]] = []  # (index in films, key, bytes, SR SOP Instance UID)
        for index, film in enumerate(films):
            try:
                data, uid = self._render(film)
            except Exception as exc:  # a header highdicom cannot reference: keep the score, retry the SR at start
                out.append(exc)
                continue
            out.append("")
            rendered.append((index, film.key, data, uid))
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
            self.audit.append_many([self._audit_fields(films[index], path, uid) for index, path, uid in done])
        finally:
            if done:
                folder.join()
        for index, path, _ in done:
            out[index] = str(path.relative_to(self.store.root))
        return out

    def _render(self, film: Scored) -> tuple[bytes, str]:
        result = film.result
        if film.header is None:
            raise SaladError("the stored header cannot be read again")
        assert result.label is not None
        # a UID collision's SR gets its own SOP Instance UID: a PACS would otherwise keep only one of the two reports
        instance_uid = str(generate_uid(entropy_srcs=["salad-sr", film.key])) if film.collision else None
        return self.template.render(film.header, score=result.score, knn_angle=result.knn_angle, label=result.label,
                                    instance_uid=instance_uid)

    def _queue(self, paths: list[Path]) -> None:
        if self.forwarder is None or not paths:
            return
        self.store.queue_for_forwarding(paths)
        self.forwarder.wake.set()

    def _audit_fields(self, film: Scored, path: Path, uid: str) -> tuple[str, dict[str, Any]]:
        assert film.header is not None
        return ("sr", {"sop_instance_uid": str(film.header.SOPInstanceUID), "sr_sop_instance_uid": uid,
                       "sr": str(path.relative_to(self.store.root)), "label": film.result.label,
                       "forward_to": str(self.config.forward or "") or None})
