"""DICOM TLS (PS3.15 Annex B) for the node's listener: the server certificate and, with a CA, client certificates required.

pynetdicom wraps each accepted socket with this context; the handshake is left to the association's own
thread (`do_handshake_on_connect=False`), so a peer that connects and never speaks cannot hold up the
listener while other senders wait.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from salad.errors import ConfigError


class _DeferredHandshake(ssl.SSLContext):
    """An SSLContext whose server sockets do the TLS handshake on first read, in the association's thread."""

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """TLS 1.2 or later with `cert`/`key`; with `ca`, a client certificate signed by it is required."""
    context = _DeferredHandshake(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    for option, path in (("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{option} {path}: no such file; give a PEM file.")
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"--tls-cert {cert} / --tls-key {key}: cannot load the certificate and key ({exc}); both must be PEM "
            "and the key must belong to the certificate (and not need a passphrase)."
        ) from None
    if ca is not None:
        try:
            context.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"--tls-ca {ca}: cannot load the CA certificates ({exc}); give a PEM file.") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    """The TLS context of `salad serve --check`: verifies the node against `ca` (when given), presents `cert`."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca is not None else None)
    context.check_hostname = False  # nodes are addressed by IP on a hospital network; the CA is what is trusted
    if ca is None:
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        try:
            context.load_cert_chain(certfile=str(cert), keyfile=str(key) if key is not None else None)
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ConfigError(f"--tls-cert {cert}: cannot load the client certificate and key ({exc}).") from None
    return context


def peer_subject(sock: Any) -> str | None:
    """The verified client certificate's subject CN of a TLS socket, None when there is none."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        cert = getpeercert()
    except (ValueError, OSError):  # handshake not done yet
        return None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
