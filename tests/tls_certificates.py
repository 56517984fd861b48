"""Certificates made for a test with the `openssl` command line: a CA, server and client certificates.

`cryptography` is not a dependency of the project and the openssl CLI is on every Debian machine, so
the test needs nothing installed. Each certificate is valid from now for one day (no fixed dates).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

# The extensions a verifying client checks (Python 3.13 turns on VERIFY_X509_STRICT, which wants
# the key identifiers and a critical basicConstraints on the CA).
_CA_EXTENSIONS = (
    "basicConstraints=critical,CA:TRUE\n"
    "keyUsage=critical,keyCertSign,cRLSign\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid:always\n"
)
_LEAF_EXTENSIONS = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage={usage}\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid,issuer\n"
    "{san}"
)


@dataclass(frozen=True)
class Certificate:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is not installed")
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _request_config(path: Path, name: str, extensions: str = "") -> Path:
    section = "x509_extensions = ext\n" if extensions else ""
    path.write_text(f"[req]\ndistinguished_name = dn\nprompt = no\n{section}[dn]\nCN = {name}\n[ext]\n{extensions}")
    return path


def make_ca(directory: Path, name: str) -> Certificate:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    config = _request_config(directory / f"{name}.cnf", name, _CA_EXTENSIONS)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "1", "-config", str(config),
    )  # fmt: skip
    return Certificate(cert, key)


def make_leaf(
    ca: Certificate, directory: Path, name: str, *, hosts: tuple[str, ...] = (), client: bool = False
) -> Certificate:
    """A server certificate for `hosts` (DNS names or IP addresses), or a client certificate, signed by `ca`."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    request, extensions = directory / f"{name}.csr", directory / f"{name}.ext"
    san = ",".join(("IP:" if host.replace(".", "").isdigit() else "DNS:") + host for host in hosts)
    extensions.write_text(
        _LEAF_EXTENSIONS.format(
            usage="clientAuth" if client else "serverAuth", san=f"subjectAltName={san}\n" if san else ""
        )
    )
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(request), "-config", str(_request_config(directory / f"{name}.cnf", name)),
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
        "-out", str(cert), "-days", "1", "-extfile", str(extensions),
    )  # fmt: skip
    return Certificate(cert, key)


def encrypt_key(key: Path, password: str) -> Path:
    """The same key, encrypted with `password` (for KAFKA_SSL_KEY_PASSWORD)."""
    encrypted = key.with_suffix(".enc.key")
    _openssl("pkey", "-in", str(key), "-aes256", "-passout", f"pass:{password}", "-out", str(encrypted))
    return encrypted
