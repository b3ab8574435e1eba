"""Kafka and the S3 store over TLS, and Kafka SASL, as a cluster with an internal CA has them: the settings
(MEDSYNTH_KAFKA_SECURITY_PROTOCOL and friends, MEDSYNTH_S3_CA_BUNDLE) reach every client the services make,
checked on the wire. A private CA is made per test session; TLS is a relay in front of the real servers
(tansu, SeaweedFS) that terminates it as a broker's SSL listener or a proxy in front of a store would, with
mutual TLS where the client certificate is under test. SASL is checked against a minimal broker that
answers the SASL handshake and records what the client sends (tansu offers no SASL mechanism this way)."""

from __future__ import annotations

import io
import socket
import struct
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from platform_fixtures import S3Server, server_base_port
from tls_certs import Pki, TlsRelay, make_pki

from medsynth.bus.admin import ensure_topics
from medsynth.bus.client import Bus, BusError, kafka_security_options
from medsynth.bus.topics import all_topics
from medsynth.core.errors import StoreError
from medsynth.core.settings import Settings
from medsynth.local.servers import find_binary, port_open
from medsynth.store import open_store


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another CA: what a client trusting the wrong bundle has."""
    return make_pki(tmp_path_factory.mktemp("other-pki"), "some other CA")


# --- the settings → kafka-python options ---------------------------------------------------------


def test_plaintext_clients_are_built_as_before() -> None:
    assert kafka_security_options(Settings()) == {}
    options = Bus(Settings(kafka_bootstrap="a:9092,b:9092")).client_options()
    assert options == {"bootstrap_servers": ["a:9092", "b:9092"], "client_id": "medsynth", "api_version": None}


def test_every_client_option_set_carries_tls_and_sasl(pki: Pki, tmp_path: Path) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret\n")  # a mounted Secret often ends with a newline
    settings = Settings(kafka_bootstrap="b:9093", kafka_security_protocol="sasl_ssl", kafka_sasl_mechanism="SCRAM-SHA-512",
                        kafka_sasl_username="medsynth", kafka_sasl_password_file=password, kafka_ssl_cafile=pki.ca,
                        kafka_ssl_certfile=pki.client_cert, kafka_ssl_keyfile=pki.client_key)
    assert Bus(settings).client_options() == {
        "bootstrap_servers": ["b:9093"], "client_id": "medsynth", "api_version": None,
        "security_protocol": "SASL_SSL", "ssl_check_hostname": True, "ssl_cafile": str(pki.ca),
        "ssl_certfile": str(pki.client_cert), "ssl_keyfile": str(pki.client_key),
        "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "medsynth", "sasl_plain_password": "s3cret",
    }


@pytest.mark.parametrize("env, message", [
    ({"MEDSYNTH_KAFKA_SECURITY_PROTOCOL": "TLS"}, "MEDSYNTH_KAFKA_SECURITY_PROTOCOL must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    ({"MEDSYNTH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "MEDSYNTH_KAFKA_SASL_MECHANISM": "SCRAM-SHA-1"}, "MEDSYNTH_KAFKA_SASL_MECHANISM must be one of"),
    ({"MEDSYNTH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "needs MEDSYNTH_KAFKA_SASL_MECHANISM, MEDSYNTH_KAFKA_SASL_USERNAME, MEDSYNTH_KAFKA_SASL_PASSWORD"),
    ({"MEDSYNTH_KAFKA_SASL_USERNAME": "medsynth"}, "MEDSYNTH_KAFKA_SASL_USERNAME set, but MEDSYNTH_KAFKA_SECURITY_PROTOCOL=PLAINTEXT has no SASL"),
    ({"MEDSYNTH_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "MEDSYNTH_KAFKA_SSL_CAFILE": "{ca}", "MEDSYNTH_KAFKA_SASL_MECHANISM": "PLAIN",
      "MEDSYNTH_KAFKA_SASL_USERNAME": "u", "MEDSYNTH_KAFKA_SASL_PASSWORD": "p"}, "MEDSYNTH_KAFKA_SSL_CAFILE set, but MEDSYNTH_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT has no TLS"),
    ({"MEDSYNTH_KAFKA_SECURITY_PROTOCOL": "SSL", "MEDSYNTH_KAFKA_SSL_CAFILE": "/nowhere/ca.crt"}, "MEDSYNTH_KAFKA_SSL_CAFILE=/nowhere/ca.crt: no such file"),
    ({"MEDSYNTH_KAFKA_SECURITY_PROTOCOL": "SSL", "MEDSYNTH_KAFKA_SSL_CAFILE": "{key}"}, "MEDSYNTH_KAFKA_SSL_CAFILE="),
    ({"MEDSYNTH_KAFKA_SECURITY_PROTOCOL": "SSL", "MEDSYNTH_KAFKA_SSL_KEYFILE": "{key}"}, "MEDSYNTH_KAFKA_SSL_KEYFILE needs MEDSYNTH_KAFKA_SSL_CERTFILE"),
    ({"MEDSYNTH_KAFKA_SECURITY_PROTOCOL": "SSL", "MEDSYNTH_KAFKA_SSL_CERTFILE": "{ca}", "MEDSYNTH_KAFKA_SSL_KEYFILE": "{key}"}, "MEDSYNTH_KAFKA_SSL_CERTFILE / MEDSYNTH_KAFKA_SSL_KEYFILE"),
    ({"MEDSYNTH_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "MEDSYNTH_KAFKA_SASL_MECHANISM": "PLAIN", "MEDSYNTH_KAFKA_SASL_USERNAME": "u",
      "MEDSYNTH_KAFKA_SASL_PASSWORD": "p", "MEDSYNTH_KAFKA_SASL_PASSWORD_FILE": "{ca}"}, "not both"),
    ({"MEDSYNTH_S3_CA_BUNDLE": "{ca}"}, "MEDSYNTH_S3_CA_BUNDLE set, but the store is reached over plain http"),
    ({"MEDSYNTH_S3_SECURE": "true", "MEDSYNTH_S3_CA_BUNDLE": "{key}"}, "MEDSYNTH_S3_CA_BUNDLE="),
    ({"MEDSYNTH_WORKER_KINDS": "prepare dataset"}, "MEDSYNTH_WORKER_KINDS"),
])
def test_bad_transport_settings_are_refused_naming_the_variable(env: dict, message: str, pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(ca=pki.ca, key=pki.client_key))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings()


def test_good_transport_settings_load_from_the_environment(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"MEDSYNTH_KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "MEDSYNTH_KAFKA_SASL_MECHANISM": "plain",
                       "MEDSYNTH_KAFKA_SASL_USERNAME": "medsynth", "MEDSYNTH_KAFKA_SASL_PASSWORD": "pw",
                       "MEDSYNTH_KAFKA_SSL_CAFILE": str(pki.ca), "MEDSYNTH_KAFKA_SSL_CERTFILE": str(pki.client_cert),
                       "MEDSYNTH_KAFKA_SSL_KEYFILE": str(pki.client_key), "MEDSYNTH_S3_SECURE": "true",
                       "MEDSYNTH_S3_CA_BUNDLE": str(pki.ca), "MEDSYNTH_KAFKA_SSL_CHECK_HOSTNAME": "false"}.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.kafka_security_protocol.value == "SASL_SSL" and settings.kafka_sasl_mechanism.value == "PLAIN"
    assert settings.kafka_sasl_password_value == "pw" and "pw" not in repr(settings)  # a secret, not printed
    assert settings.s3_ca_bundle == pki.ca and kafka_security_options(settings)["ssl_check_hostname"] is False


# --- Kafka over TLS: a real broker behind a TLS listener ---------------------------------------------


@pytest.fixture(scope="module")
def tls_broker(request: pytest.FixtureRequest, pki: Pki, tmp_path_factory: pytest.TempPathFactory):
    """tansu (in-memory storage) on base+40, behind a TLS relay that requires a client certificate of the
    test CA; tansu advertises the relay, so every connection the clients make goes through TLS."""
    port = server_base_port(request.config) + 40
    if port_open("127.0.0.1", port, timeout=0.2):
        pytest.fail(f"port {port} is in use (MEDSYNTH_TEST_BASE_PORT moves it)")
    with TlsRelay(pki, ("127.0.0.1", port), require_client_cert=True, session_tickets=False) as relay:
        log = tmp_path_factory.mktemp("tansu-tls") / "tansu.log"
        argv = [str(find_binary("tansu")), "broker", f"--listener-url=tcp://127.0.0.1:{port}",
                f"--advertised-listener-url=tcp://127.0.0.1:{relay.port}", "--storage-engine=memory://tansu/"]
        with log.open("wb") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while not port_open("127.0.0.1", port, timeout=0.2):
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            yield relay
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _tls_settings(relay: TlsRelay, pki: Pki, **overrides) -> Settings:
    values = dict(kafka_bootstrap=relay.address, topic_prefix=f"t{uuid.uuid4().hex[:10]}", kafka_security_protocol="SSL",
                  kafka_ssl_cafile=pki.ca, kafka_ssl_certfile=pki.client_cert, kafka_ssl_keyfile=pki.client_key,
                  publish_timeout_s=10.0, session_timeout_ms=6000)
    values.update(overrides)
    return Settings(**values)


def test_admin_producer_and_consumer_reach_kafka_over_mutual_tls(tls_broker: TlsRelay, pki: Pki) -> None:
    settings = _tls_settings(tls_broker, pki)
    bus = Bus(settings, client_id="tls-test")
    before = len(tls_broker.handshakes)
    ensure_topics(bus, all_topics(settings.topic_prefix), timeout_s=20)   # the admin client (`medsynth topics`)
    topic = all_topics(settings.topic_prefix)[0][0]
    delivered = bus.publish(topic, "job-1", b"over tls")                  # the producer
    consumer = bus.consumer([topic], f"{settings.topic_prefix}.tls")       # a worker's consumer
    try:
        deadline = time.monotonic() + 30
        values = []
        while time.monotonic() < deadline and not values:
            values = [r.value for records in consumer.poll(timeout_ms=500).values() for r in records]
        assert values == [b"over tls"], values
    finally:
        consumer.close(autocommit=False)
        bus.close()
    assert delivered.offset >= 0
    assert tls_broker.handshakes[before:] and set(tls_broker.handshakes[before:]) == {"medsynth"}  # the client certificate


def _seen(relay: TlsRelay, since: int, text: str, timeout_s: float = 30.0) -> None:
    """The relay records handshake errors from its own threads, which may trail the client's error:
    wait for one naming ``text`` among those recorded since ``since``."""
    deadline = time.monotonic() + timeout_s
    while not any(text in e.lower() for e in relay.errors[since:]):
        assert time.monotonic() < deadline, (text, relay.errors[since:])
        time.sleep(0.1)


def test_kafka_without_the_ca_or_the_client_certificate_is_refused(tls_broker: TlsRelay, pki: Pki, other_pki: Pki) -> None:
    before = len(tls_broker.errors)
    wrong_ca = Bus(_tls_settings(tls_broker, pki, kafka_ssl_cafile=other_pki.ca))
    # the brokers' certificate is not signed by a CA the client trusts: each client says so, naming the settings
    with pytest.raises(BusError, match="TLS to Kafka .* CERTIFICATE_VERIFY_FAILED.*MEDSYNTH_KAFKA_SSL_CAFILE"):
        ensure_topics(wrong_ca, all_topics("x"), timeout_s=3)
    with pytest.raises(BusError, match="TLS to Kafka"):
        wrong_ca.publish("x.commands.evaluate", "k", b"v", timeout=2)
    with pytest.raises(BusError, match="TLS to Kafka"):
        wrong_ca.consumer(["x.commands.evaluate"], "x.evaluator")
    _seen(tls_broker, before, "unknown ca")
    before = len(tls_broker.errors)
    with pytest.raises(BusError):   # mutual TLS: no client certificate
        ensure_topics(Bus(_tls_settings(tls_broker, pki, kafka_ssl_certfile=None, kafka_ssl_keyfile=None)), all_topics("x"), timeout_s=3)
    _seen(tls_broker, before, "certificate")
    with pytest.raises(BusError):   # plaintext to a TLS listener
        ensure_topics(Bus(Settings(kafka_bootstrap=tls_broker.address)), all_topics("x"), timeout_s=3)


# --- Kafka SASL: what the client sends --------------------------------------------------------------


class SaslBroker:
    """Answers a Kafka client's SaslHandshake (v1) with the mechanism it asks for, records the first
    SaslAuthenticate token it sends, and refuses it (SASL_AUTHENTICATION_FAILED)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mechanisms: list[str] = []
        self.tokens: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    @staticmethod
    def _frame(conn: socket.socket) -> tuple[int, int, io.BytesIO]:
        def exact(n: int) -> bytes:
            data = b""
            while len(data) < n:
                chunk = conn.recv(n - len(data))
                if not chunk:
                    raise ConnectionError("closed")
                data += chunk
            return data
        body = io.BytesIO(exact(struct.unpack(">i", exact(4))[0]))
        api_key, _version, correlation = struct.unpack(">hhi", body.read(8))
        (client_len,) = struct.unpack(">h", body.read(2))
        body.read(max(client_len, 0))
        return api_key, correlation, body

    @staticmethod
    def _reply(conn: socket.socket, correlation: int, payload: bytes) -> None:
        message = struct.pack(">i", correlation) + payload
        conn.sendall(struct.pack(">i", len(message)) + message)

    def _one(self, conn: socket.socket) -> None:
        try:
            api_key, correlation, body = self._frame(conn)
            assert api_key == 17, api_key  # SaslHandshake
            (length,) = struct.unpack(">h", body.read(2))
            mechanism = body.read(length).decode()
            self.mechanisms.append(mechanism)
            encoded = mechanism.encode()
            self._reply(conn, correlation, struct.pack(">hih", 0, 1, len(encoded)) + encoded)
            api_key, correlation, body = self._frame(conn)
            assert api_key == 36, api_key  # SaslAuthenticate
            (length,) = struct.unpack(">i", body.read(4))
            self.tokens.append(body.read(length))
            message = b"refused by the test broker"
            self._reply(conn, correlation, struct.pack(">hh", 58, len(message)) + message + struct.pack(">i", 0))
        except (ConnectionError, OSError, AssertionError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_over_tls_sends_the_mechanism_user_and_password_file(mechanism: str, pki: Pki, tmp_path: Path) -> None:
    password = tmp_path / "kafka-password"
    password.write_text("correct horse\n")
    broker = SaslBroker()
    try:
        with TlsRelay(pki, ("127.0.0.1", broker.port), session_tickets=False) as relay:
            settings = Settings(kafka_bootstrap=relay.address, kafka_api_version="2.3", kafka_security_protocol="SASL_SSL",
                                kafka_sasl_mechanism=mechanism, kafka_sasl_username="medsynth",
                                kafka_sasl_password_file=password, kafka_ssl_cafile=pki.ca)
            with pytest.raises(BusError):
                ensure_topics(Bus(settings), all_topics("x"), timeout_s=3)
            assert relay.handshakes, relay.errors  # TLS first, with the CA given
    finally:
        broker.close()
    assert broker.mechanisms and set(broker.mechanisms) == {mechanism}
    token = broker.tokens[0]
    if mechanism == "PLAIN":
        _authzid, user, secret = token.split(b"\x00")
        assert (user, secret) == (b"medsynth", b"correct horse")   # the file's content, its newline dropped
    else:
        assert token.startswith(b"n,,n=medsynth,r=")        # SCRAM's client-first message


# --- the store over TLS: SeaweedFS behind a TLS listener ---------------------------------------------


def _s3_settings(endpoint: str, s3: S3Server, **overrides) -> Settings:
    values = dict(store="s3", s3_endpoint=endpoint, s3_access_key=s3.access_key, s3_secret_key=s3.secret_key,
                  s3_bucket=f"medsynth-tls-{uuid.uuid4().hex[:10]}")
    values.update(overrides)
    return Settings(**values)


def test_the_store_over_https_with_a_ca_bundle(seaweedfs: S3Server, pki: Pki, other_pki: Pki) -> None:
    host, _, port = seaweedfs.endpoint.rpartition(":")
    with TlsRelay(pki, (host, int(port))) as relay:
        store = open_store(_s3_settings(relay.address, seaweedfs, s3_secure=True, s3_ca_bundle=pki.ca))
        info = store.put_bytes("tls/hello.txt", b"over https")
        assert store.get_bytes("tls/hello.txt") == b"over https" and info.size == 10
        assert relay.handshakes and not relay.errors
        for settings in (_s3_settings(relay.address, seaweedfs, s3_secure=True, s3_ca_bundle=other_pki.ca),  # the wrong CA
                         _s3_settings(relay.address, seaweedfs, s3_secure=True)):                           # the public CAs
            with pytest.raises(StoreError, match="CERTIFICATE_VERIFY_FAILED"):
                open_store(settings)
        with pytest.raises(StoreError):   # http to a TLS listener
            open_store(_s3_settings(relay.address, seaweedfs))
