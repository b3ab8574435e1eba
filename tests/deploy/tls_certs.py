"""A private CA made for a test, with server and client certificates it signs (what an internal CA or
cert-manager gives a cluster), written as PEM files; and a TLS relay in front of a plaintext server (what a
broker's SSL listener or a TLS-terminating proxy in front of a store does)."""

from __future__ import annotations

import datetime
import ipaddress
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path            # the CA's certificate: the bundle clients trust
    server_cert: Path   # for localhost / 127.0.0.1
    server_key: Path
    client_cert: Path   # CN=medsynth, for mutual TLS
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def make_pki(folder: Path, ca_name: str = "medsynth test CA") -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name(ca_name)).issuer_name(_name(ca_name))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))

    def leaf(common_name: str, usage, names: list[x509.GeneralName]):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf("localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                              [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client, client_key = leaf("medsynth", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    pki = Pki(folder / "ca.crt", folder / "server.crt", folder / "server.key", folder / "client.crt", folder / "client.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, pki.server_key)
    _write_key(client_key, pki.client_key)
    return pki


@dataclass
class TlsRelay:
    """Listens with TLS on an ephemeral port of 127.0.0.1 and relays each connection's plaintext to
    ``upstream``; ``require_client_cert``: mutual TLS with certificates of ``pki``'s CA. Records the
    handshakes that succeeded (with the client certificate's CN) and the TLS errors of those that failed.

    ``session_tickets``: TLS 1.3 session tickets sent after the handshake (OpenSSL's default: 2). kafka-python
    2.3 drops a fresh connection whose first bytes from the broker are a ticket rather than a response
    ("Socket EVENT_READ without in-flight-requests", dpkp/kafka-python#2369) and reconnects: a race, so
    the Kafka tests turn tickets off to be deterministic."""

    pki: Pki
    upstream: tuple[str, int]
    require_client_cert: bool = False
    session_tickets: bool = True
    handshakes: list[str | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        if not self.session_tickets:
            self.context.num_tickets = 0
        if self.require_client_cert:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(self.pki.ca)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="tls-relay").start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()

    def __enter__(self) -> TlsRelay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            conn.close()
            return
        cert = tls.getpeercert() or {}
        subject = dict(pair[0] for pair in cert.get("subject", ()))
        self.handshakes.append(subject.get("commonName"))
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError as exc:
            self.errors.append(f"upstream: {exc}")
            tls.close()
            return
        tls.settimeout(None)
        upstream.settimeout(None)
        try:
            while not self._stopped.is_set():
                readable = [tls] if tls.pending() else select.select([tls, upstream], [], [], 0.5)[0]
                if tls in readable:
                    data = tls.recv(65536)
                    if not data:
                        break
                    upstream.sendall(data)
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data:
                        break
                    tls.sendall(data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            for s in (tls, upstream):
                try:
                    s.close()
                except OSError:
                    pass
