"""DICOM TLS: a real TLS client (pynetdicom over Python's ssl) stores a film in `salad serve` and it is scored.

Certificates are made here with the openssl command line: a CA, the node's certificate and two client
certificates, one signed by the CA and one self-signed.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serve.conftest import Served, free_port, rows, serve, wait_until
from tests.serve.test_admission import associate, audit, film

pytest.importorskip("pynetdicom", reason="salad serve needs the dicom extra (pip install 'salad-edge[dicom]')")


#: EC P-256 keys: made in milliseconds where RSA takes seconds.
KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")


def openssl(*args: str) -> None:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def make_certificates(folder: Path) -> dict[str, Path]:
    """ca.pem, node.pem/node.key (signed by the CA), client.pem/client.key (signed), rogue.pem/rogue.key (self-signed)."""
    assert shutil.which("openssl"), "the openssl command line is needed to make the test certificates"
    f = {name: folder / name for name in ("ca.pem", "ca.key", "node.pem", "node.key", "client.pem", "client.key",
                                           "rogue.pem", "rogue.key")}
    days = ("-days", "2")
    openssl("req", "-x509", *KEY, "-nodes", "-keyout", str(f["ca.key"]), "-out", str(f["ca.pem"]),
            "-subj", "/CN=Hospital Test CA", *days)
    for name, cn in (("node", "localhost"), ("client", "MODALITY")):
        csr = folder / f"{name}.csr"
        openssl("req", *KEY, "-nodes", "-keyout", str(f[f"{name}.key"]), "-out", str(csr), "-subj", f"/CN={cn}")
        openssl("x509", "-req", "-in", str(csr), "-CA", str(f["ca.pem"]), "-CAkey", str(f["ca.key"]), "-CAcreateserial",
                "-out", str(f[f"{name}.pem"]), *days)
    openssl("req", "-x509", *KEY, "-nodes", "-keyout", str(f["rogue.key"]), "-out", str(f["rogue.pem"]),
            "-subj", "/CN=ROGUE", *days)
    return f


def client(certs: dict[str, Path], who: str | None) -> ssl.SSLContext:
    """A TLS client context trusting the test CA, presenting `who`'s certificate (None: none)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(certs["ca.pem"]))
    context.check_hostname = False
    if who is not None:
        context.load_cert_chain(str(certs[f"{who}.pem"]), str(certs[f"{who}.key"]))
    return context


def test_a_tls_client_stores_a_film_that_is_scored_and_others_cannot_associate(
    serve_bundle: Path, tmp_path: Path, nodes: list[Served]
) -> None:
    certs = make_certificates(tmp_path)
    port = free_port()
    node = serve(serve_bundle, tmp_path / "out", "--allow", "MODALITY", "--tls-cert", str(certs["node.pem"]),
                 "--tls-key", str(certs["node.key"]), "--tls-ca", str(certs["ca.pem"]), port=port)
    nodes.append(node)
    assert "DICOM TLS (client certificates required)" in node.text()

    silent = socket.create_connection(("127.0.0.1", port))  # connects and never starts its TLS handshake
    assoc = associate(port, tls=client(certs, "client"))
    assert assoc.is_established  # the silent peer does not hold up the listener
    chest = film(tmp_path, "chest")
    try:
        assert int(assoc.send_c_store(chest).Status) == 0x0000
    finally:
        assoc.release()
    wait_until(lambda: len(rows(node.out)) == 1, what="the row")
    [row] = rows(node.out)
    assert row["label"] in (0, 1) and 0 <= row["score"] <= 1 and (node.out / row["sr"]).is_file()

    assert not associate(port).is_established  # plain TCP to a TLS port: no association
    assert not associate(port, tls=client(certs, None)).is_established  # TLS without a client certificate
    assert not associate(port, tls=client(certs, "rogue")).is_established  # a certificate the CA did not sign
    check = subprocess.run(
        [sys.executable, "-m", "salad.cli", "serve", "--check", "--port", str(port), "--tls-ca", str(certs["ca.pem"]),
         "--tls-cert", str(certs["client.pem"]), "--tls-key", str(certs["client.key"])],
        capture_output=True, text=True, timeout=60,
    )
    assert check.returncode == 0 and check.stdout.strip().endswith("over TLS"), check.stderr
    silent.close()
    assert node.stop() == 0
    accepted = [a for a in audit(node.out) if a["event"] == "association" and a["outcome"] == "accepted"]
    assert [a["tls_client"] for a in accepted] == ["MODALITY", "MODALITY"]  # the store, then --check's C-ECHO
    assert "Traceback" not in node.text()


def test_tls_options_are_checked_before_the_node_starts(serve_bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from salad.cli import main

    base = ["serve", str(serve_bundle), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(main, [*base, "--tls-cert", str(tmp_path / "missing.pem")])
    assert result.exit_code == 2 and "--tls-cert and --tls-key go together" in result.output
    (tmp_path / "junk.pem").write_text("not a certificate")
    result = CliRunner().invoke(main, [*base, "--tls-cert", str(tmp_path / "junk.pem"), "--tls-key", str(tmp_path / "junk.pem")])
    assert result.exit_code == 2 and "cannot load the certificate and key" in result.output and "Traceback" not in result.output
