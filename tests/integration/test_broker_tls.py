"""mqtts:// with a CA file and a broker password, against a real Mosquitto TLS listener.

The certificates are made here (a CA and a server certificate for localhost); nothing is
faked: the node's TLS handshake, certificate check and MQTT login all happen for real.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..helpers import Broker, NodeProc, get_json, running, started_broker, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Broker]:
    d = tmp_path / "tls"
    d.mkdir()
    ca_key, ca = _ca("seedswarm test CA")
    key, cert = _server_cert(ca_key, ca)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(_pem_key(key))
    (d / "server.key").chmod(0o600)
    _, other = _ca("someone else's CA")
    (d / "other-ca.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))
    passwd = d / "passwd"
    subprocess.run(
        [shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", "-c", str(passwd),
         "alice", "s3cret"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    yield from started_broker(
        "mosquitto",
        tmp_path,
        extra=[
            # as root, Mosquitto drops to its own user before reading these files, which lie in
            # pytest's private temporary directory; a broker as another user reads them as is
            "user root",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"cafile {d / 'ca.pem'}",
            f"certfile {d / 'server.pem'}",
            f"keyfile {d / 'server.key'}",
        ],
    )


def test_a_node_joins_over_tls_with_a_password_and_refuses_a_foreign_ca(
    tls_broker: Broker, tmp_path: Path
) -> None:
    url = f"mqtts://localhost:{tls_broker.port}"
    tls = tmp_path / "tls"
    good = NodeProc(
        "alice", tmp_path, url, "--username", "alice", "--password", "s3cret",
        "--ca-file", str(tls / "ca.pem"), steps=4,
    )  # fmt: skip
    wrong_ca = NodeProc(
        "bob", tmp_path, url, "--username", "alice", "--password", "s3cret",
        "--ca-file", str(tls / "other-ca.pem"), steps=4,
    )  # fmt: skip
    wrong_pw = NodeProc(
        "carol", tmp_path, url, "--username", "alice", "--password", "guess",
        "--ca-file", str(tls / "ca.pem"), steps=4,
    )  # fmt: skip
    with running(good, wrong_ca, wrong_pw):
        for n in (good, wrong_ca, wrong_pw):
            n.start()
        good.wait_ready()
        wait_until(lambda: good.status()["steps"]["done"], timeout=120, what="4 steps")
        st = good.status()
        assert st["broker"]["url"] == url
        assert st["broker"]["state"] == "connected"
        assert st["version_vector"] == {"alice": 4}

        def refused(node: NodeProc, words: tuple[str, ...]) -> bool:
            assert node.alive(), node.tail()
            try:
                broker = get_json(node.url + "/status", timeout=2)["broker"]
            except OSError:
                return False
            err = broker["last_error"].lower()
            return broker["connects"] == 0 and any(w in err for w in words)

        wait_until(
            lambda: refused(wrong_ca, ("certificate verify failed",)),
            timeout=120,
            what="the certificate check to refuse a broker signed by another CA",
        )
        wait_until(
            lambda: refused(wrong_pw, ("not authori", "bad user")),  # CONNACK 5 / 4
            timeout=120,
            what="the broker to refuse a wrong password",
        )
        for n in (good, wrong_ca, wrong_pw):
            assert n.stop(timeout=60) == 0, n.tail()
