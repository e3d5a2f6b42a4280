"""Who may associate with the node and which films it takes: the called-AE check, the calling-AE allow-list, the
per-sender association limit, and the film checks (SOP class against the presentation context, modality, chest, view).

Decisions only, no I/O: serve/scp.py applies the association decision (A-ASSOCIATE-RJ with its reason) and
serve/node.py the film decision (a C-STORE failure status and an error row). docs/architecture.md §11.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

from salad.errors import ConfigError
from salad.imageio import RADIOGRAPH_MODALITIES, RADIOGRAPH_SOP_CLASSES

#: DIMSE statuses (PS3.7 Annex C, PS3.4 Table B.2-1) a refused film is answered with.
SOP_CLASS_NOT_SUPPORTED = 0x0122
DATASET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
#: "Cannot understand" with this node's own low bits (PS3.4 B.2.3 leaves Cxxx's to the SCP): not a frontal chest film.
NOT_A_CHEST_FILM = 0xC100
#: A-ASSOCIATE-RJ (result, source, reason), PS3.8 Table 9-21.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected permanent, service user, calling AE title not recognised
REJECT_CALLED_AE = (0x01, 0x01, 0x07)  # rejected permanent, service user, called AE title not recognised
REJECT_BUSY = (0x02, 0x03, 0x02)  # rejected transient, service provider (presentation), local limit exceeded
#: BodyPartExamined values (PS3.16 Annex L, and the THORAX some consoles write) that name the chest.
CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX"})
#: ViewPosition values the detector was trained on: frontal chest films (NIH ChestX-ray14 PA and AP).
FRONTAL_VIEWS = frozenset({"PA", "AP"})
#: Loopback senders: the allow-list when neither --allow nor --any-sender is given.
LOOPBACK = ("127.0.0.0/8", "::1/128")


def check_ae_title(value: str, option: str) -> str:
    """`value` as an AE title (PS3.5 AE: 1-16 characters, no backslash or control characters) or a ConfigError."""
    text = value.strip()
    if not text or len(value) > 16 or "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(
            f"{option} {value!r}: an AE title is 1 to 16 characters, without backslashes or control characters "
            f"({len(value)} given). Use the title configured at the modality or PACS, e.g. SALAD."
        )
    return text


@dataclass(frozen=True)
class Sender:
    """One `--allow` entry: an AE title (None: any) from a set of networks (empty: any address)."""

    ae_title: str | None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    text: str = ""

    def matches(self, ae_title: str, address: str) -> bool:
        if self.ae_title is not None and self.ae_title != ae_title:
            return False
        if not self.networks:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)


def parse_allow(text: str) -> Sender:
    """`AE`, `AE@HOST` or `*@HOST` (HOST: an address, a network such as 10.0.0.0/24, or a name resolved now)."""
    ae, _, host = text.partition("@")
    ae_title = None if ae.strip() == "*" else check_ae_title(ae, f"--allow {text!r}: the AE title")
    if not _:
        return Sender(ae_title, (), text)
    host = host.strip().strip("[]")
    try:
        return Sender(ae_title, (ipaddress.ip_network(host, strict=False),), text)
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(
            f"--allow {text!r}: the host {host!r} does not resolve ({exc}); give the sender's address "
            "(AE@10.0.0.5), a network (AE@10.0.0.0/24) or a name this machine resolves."
        ) from None
    networks = {ipaddress.ip_network(str(info[4][0]).split("%")[0]) for info in infos}
    return Sender(ae_title, tuple(sorted(networks, key=str)), text)


@dataclass(frozen=True)
class Admission:
    """The association policy: the node's own AE title, the allowed senders (None: any) and the limits."""

    called_ae: str = "SALAD"
    senders: tuple[Sender, ...] | None = (Sender(None, tuple(ipaddress.ip_network(n) for n in LOOPBACK), "this machine"),)
    #: Associations at once from one sender (calling AE and address): one sender cannot take every slot.
    per_sender: int = 4
    #: Associations at once in all (pynetdicom's maximum_associations: more are rejected as busy).
    max_associations: int = 32
    #: Seconds an association may stay silent (and a connection may wait before its A-ASSOCIATE-RQ) before it is aborted.
    idle_timeout_s: float = 30.0

    @classmethod
    def build(
        cls, called_ae: str, allow: Iterable[str], any_sender: bool, *, per_sender: int = 4, max_associations: int = 32,
        idle_timeout_s: float = 30.0,
    ) -> Admission:
        """From the command line: `--allow` entries, `--any-sender` (which excludes them) and the limits."""
        entries = [parse_allow(a) for a in allow]
        if any_sender and entries:
            raise ConfigError("--any-sender accepts every sender; drop it or drop the --allow entries.")
        senders = None if any_sender else tuple(entries) if entries else cls.senders
        return cls(called_ae=check_ae_title(called_ae, "--ae-title"), senders=senders, per_sender=per_sender,
                   max_associations=max_associations, idle_timeout_s=idle_timeout_s)

    def describe(self) -> str:
        """The allow-list as the ready line prints it."""
        if self.senders is None:
            return "any sender (--any-sender)"
        return "senders " + ", ".join(s.text for s in self.senders)

    def refuse(
        self, called: str, calling: str, address: str, open_from_sender: int, echo_only: bool = False,
    ) -> tuple[tuple[int, int, int], str] | None:
        """None to accept; else the A-ASSOCIATE-RJ (result, source, reason) and why, for the log and the audit.

        An association that proposes Verification only, from this machine, needs no allow-list entry: it can store
        nothing, and `salad serve --check` uses it.
        """
        if called.strip() != self.called_ae:
            return REJECT_CALLED_AE, (
                f"called AE title {called.strip()!r} is not this node's ({self.called_ae!r}); set the destination AE "
                f"title at the sender to {self.called_ae}"
            )
        local = Sender(None, tuple(ipaddress.ip_network(n) for n in LOOPBACK)).matches("", address)
        if self.senders is not None and not (echo_only and local) and not any(s.matches(calling.strip(), address) for s in self.senders):
            return REJECT_CALLING_AE, (
                f"calling AE title {calling.strip()!r} from {address} is not on the allow-list ({self.describe()}); "
                f"add it with --allow {calling.strip() or 'AE'}@{address}"
            )
        if open_from_sender >= self.per_sender:
            return REJECT_BUSY, (
                f"{calling.strip()!r} from {address} already has {open_from_sender} open association(s), the most one "
                "sender may hold; it may retry when one ends"
            )
        return None


@dataclass(frozen=True)
class Refusal:
    """Why a film is not taken: the C-STORE status and the reason (the row's error and the log line)."""

    status: int
    reason: str


def _text(header: Dataset, keyword: str) -> str:
    return str(header.get(keyword, "") or "").strip().upper()


def film_refusal(sop_class: str, header: Dataset | None) -> Refusal | None:
    """None when the film is a frontal chest radiograph the detector may score; else the status and the reason.

    `sop_class` is the presentation context's (C-STORE) or the file meta's (watch folder); the dataset's own
    SOPClassUID must agree with it. BodyPartExamined and ViewPosition are judged when present; a film that
    states neither is scored, and its row and SR say they were not stated (CR makes both Type 2: often empty).
    """
    if sop_class not in RADIOGRAPH_SOP_CLASSES:
        return Refusal(SOP_CLASS_NOT_SUPPORTED, (
            "not a projection radiograph; this node stores CR and DX films only "
            "(the detector was trained on chest X-rays). Refused with 0x0122 (SOP class not supported)."
        ))
    if header is None:
        return Refusal(CANNOT_UNDERSTAND, "the dataset cannot be decoded; re-send it from the modality.")
    own = str(header.get("SOPClassUID", "") or "").strip()
    if own != sop_class:
        return Refusal(DATASET_DOES_NOT_MATCH, (
            f"the dataset's SOP Class UID is {sop_class_name(own) if own else 'missing'}, not the "
            f"{sop_class_name(sop_class)} it was sent as; fix the export at the modality. Refused with 0xA900 "
            "(data set does not match SOP class)."
        ))
    modality = _text(header, "Modality")
    if modality not in RADIOGRAPH_MODALITIES:
        return Refusal(DATASET_DOES_NOT_MATCH, (
            f"the modality is {modality or 'missing'}, not a projection radiograph (expected one of "
            f"{sorted(RADIOGRAPH_MODALITIES)}). Fix the export at the modality."
        ))
    body_part = _text(header, "BodyPartExamined")
    if body_part and body_part not in CHEST_BODY_PARTS:
        return Refusal(NOT_A_CHEST_FILM, (
            f"BodyPartExamined is {body_part}: this node scores chest films only (the detector was trained on chest "
            f"X-rays; expected one of {sorted(CHEST_BODY_PARTS)}). Send only chest films to this node. Refused with 0xC100."
        ))
    view = _text(header, "ViewPosition")
    if view and view not in FRONTAL_VIEWS:
        return Refusal(NOT_A_CHEST_FILM, (
            f"ViewPosition is {view}: this node scores frontal chest films only (expected one of {sorted(FRONTAL_VIEWS)}; "
            "the detector was trained on PA and AP films). Send only frontal views to this node. Refused with 0xC100."
        ))
    return None


def sop_class_name(uid: str) -> str:
    """'MR Image Storage (1.2.840.10008.5.1.4.1.1.4)' for a UID pydicom knows, the UID otherwise."""
    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid
