"""Building blocks of the test bed: configs, TLS material, shim environment.

Nothing here needs pytest, so the demo can reuse it. ``plugin.py`` wires these
into pytest-salt-factories fixtures.

Layout of one bed (one salt-master, one salt-minion, one master process
running *two* spiro engine instances through Salt's ``engine_module`` option):

* ``spiro_http``  - plain HTTP on 127.0.0.1:<free port>
* ``spiro_https`` - HTTPS on 127.0.0.1:<free port>, with a server certificate
  for 127.0.0.1/localhost signed by a throwaway CA (``make_tls_files``).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHIM_DIR = Path(__file__).resolve().parent / "shim"
REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_PROJECT = REPO_ROOT / "examples" / "hello"

#: Minion config key read by examples/hello (``config.get``) for where to write.
OUTPUT_DIR_KEY = "spirodeploy_demo_dir"


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_tls_files(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TLSFiles:
    """Write a throwaway CA and a server cert/key for ``hosts`` (PEM) into ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

    # EC P-256: fast to generate, and spirofs' cipher list and ECDH curve
    # (prime256v1) accept ECDSA certificates.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "spiro-deploy test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        # Key identifiers: Python 3.13+ verifies with VERIFY_X509_STRICT,
        # which requires the Authority Key Identifier.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TLSFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(files.server_key, 0o600)
    return files


def shim_environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for salt-master / salt-run: our shim first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(SHIM_DIR)]
    env["PYTHONPATH"] = os.pathsep.join([str(SHIM_DIR), *parts])
    return env


def master_config(spirofs_pkg: Path, http_port: int, https_port: int, tls: TLSFiles) -> dict[str, Any]:
    """Master options that load spirofs as engine (twice), fileserver, runner and utils."""
    return {
        # Fix 2 of the notes: spirofs' salt.loader entry points are class
        # instances that Salt 3008 refuses, so load its modules by directory.
        "engines_dirs": [str(spirofs_pkg / "engines")],
        "fileserver_dirs": [str(spirofs_pkg / "fileserver")],
        "utils_dirs": [str(spirofs_pkg / "utils")],
        "runner_dirs": [str(spirofs_pkg / "runner")],
        "fileserver_backend": ["roots", "spiro"],
        # Two instances of the same engine module in one master.
        "engines": [
            {"spiro_http": {"engine_module": "spiro", "port": http_port}},
            {
                "spiro_https": {
                    "engine_module": "spiro",
                    "port": https_port,
                    "ssl_crt": str(tls.server_cert),
                    "ssl_key": str(tls.server_key),
                }
            },
        ],
        # Deploys must be visible to the minion at once, not after a cache TTL.
        "fileserver_list_cache_time": 0,
    }


def minion_config(output_dir: Path) -> dict[str, Any]:
    """Minion options: where examples/hello writes (read with ``config.get``)."""
    return {OUTPUT_DIR_KEY: str(output_dir)}


def wait_for_http(url: str, timeout: float, verify: bool | str = True) -> None:
    """Wait until ``url`` answers any HTTP response; raise TimeoutError otherwise."""
    import requests

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            # No Authorization header on purpose: the engine then answers 401
            # without touching its token key (see plugin.SpiroBed start order).
            requests.get(url, timeout=2, verify=verify)
            return
        except requests.RequestException as exc:
            last = exc
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout}s: {last}")
