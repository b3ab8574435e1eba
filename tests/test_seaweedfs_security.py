"""SeaweedFS as the local stack runs it: only its S3 port serves clients (with S3 credentials); the
master, volume and filer ports refuse a caller without SeaweedFS's keys, over HTTP and over gRPC; tansu,
which keeps the broker's state in SeaweedFS through S3, still works."""

from __future__ import annotations

import socket
import ssl
import uuid

import httpx
import pytest
from confluent_kafka import Consumer, Producer
from platform_fixtures import S3Server, TestBroker, server_base_port

from medsynth.local.servers import SEAWEED_PORTS, SeaweedSecurity
from medsynth.store.s3 import S3Store

REFUSED = (401, 403, 404)  # 401/403: a token is required; 404: that HTTP API is not served at all


@pytest.fixture(scope="module")
def ports(request: pytest.FixtureRequest, seaweedfs: S3Server) -> dict[str, int]:
    base = server_base_port(request.config) + 30
    return {name: base + offset for name, offset in SEAWEED_PORTS.items()}


@pytest.fixture(scope="module")
def stored(seaweedfs: S3Server) -> tuple[str, str]:
    """An object written through S3 with the stack's credentials: (bucket, key)."""
    bucket, key = f"secured-{uuid.uuid4().hex[:8]}", "broker-state/secret-object.json"
    store = S3Store(seaweedfs.endpoint, bucket, seaweedfs.access_key, seaweedfs.secret_key).ensure_bucket()
    store.put_bytes(key, b'{"patient": "Smith^Alice"}')
    assert store.get_bytes(key) == b'{"patient": "Smith^Alice"}'  # S3 with credentials works
    return bucket, key


def test_s3_without_credentials_is_refused(seaweedfs: S3Server, stored) -> None:
    bucket, key = stored
    for url in (f"http://{seaweedfs.endpoint}/{bucket}/{key}", f"http://{seaweedfs.endpoint}/{bucket}?list-type=2"):
        assert httpx.get(url, timeout=10).status_code == 403


def test_filer_master_and_volume_refuse_unauthenticated_http(ports: dict[str, int], stored) -> None:
    bucket, key = stored
    filer, master, volume = (f"http://127.0.0.1:{ports[p]}" for p in ("filer.port", "master.port", "volume.port"))
    refused = {
        "filer listing": httpx.get(f"{filer}/buckets/{bucket}/broker-state/", headers={"Accept": "application/json"}, timeout=10),
        "filer root listing": httpx.get(f"{filer}/?pretty=y", headers={"Accept": "application/json"}, timeout=10),
        "filer read": httpx.get(f"{filer}/buckets/{bucket}/{key}", timeout=10),
        "filer write": httpx.post(f"{filer}/buckets/{bucket}/planted.txt", files={"file": ("planted.txt", b"x")}, timeout=10),
        "master topology": httpx.get(f"{master}/dir/status", timeout=10),
        "master volumes": httpx.get(f"{master}/vol/status", timeout=10),
        "master write token": httpx.get(f"{master}/dir/assign", timeout=10),
        "master lookup": httpx.get(f"{master}/dir/lookup?volumeId=1", timeout=10),
    }
    vids = [v["Id"] for v in httpx.get(f"{volume}/status", timeout=10).json().get("Volumes") or []]  # counters only
    assert vids, "the S3 write made a volume"
    refused["volume read"] = httpx.get(f"{volume}/{vids[0]},01637037d6", timeout=10)
    refused["volume write"] = httpx.post(f"{volume}/{vids[0]},02637037d6", files={"file": ("x", b"planted")}, timeout=10)
    for what, r in refused.items():
        assert r.status_code in REFUSED, (what, r.status_code, r.text[:200])
        assert key not in r.text and "Smith" not in r.text, what
    assert {refused[w].status_code for w in ("volume read", "volume write")} == {401}


def _tls_client(security: SeaweedSecurity, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(security.folder / "ca.crt"))
    context.check_hostname = False
    if with_certificate:
        context.load_cert_chain(security.folder / "grpc.crt", security.folder / "grpc.key")
    return context


def _tls_exchange(port: int, context: ssl.SSLContext) -> bool:
    """Whether a TLS connection to ``port`` with ``context`` survives the handshake and a first exchange."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw) as tls:
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))  # HTTP/2 preface, SETTINGS
            return bool(tls.recv(9))
    except (ssl.SSLError, ConnectionError, TimeoutError):
        return False


def test_grpc_ports_take_only_clients_with_the_certificate(ports: dict[str, int], seaweedfs: S3Server) -> None:
    security = SeaweedSecurity(seaweedfs.security)
    for part in ("master", "volume", "filer"):
        port = ports[f"{part}.port.grpc"]
        assert not _tls_exchange(port, _tls_client(security, with_certificate=False)), part
        assert _tls_exchange(port, _tls_client(security, with_certificate=True)), part
        with socket.create_connection(("127.0.0.1", port), timeout=10) as plain:  # no TLS at all
            plain.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            assert not plain.recv(64).startswith(b"\x00"), part  # no HTTP/2 frame back


def test_tansu_keeps_working_on_the_secured_store(broker: TestBroker) -> None:
    topic = f"secured-{uuid.uuid4().hex[:8]}"
    broker.create_topics([(topic, 1)])
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    producer.produce(topic, b"still here")
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": topic, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        for _ in range(60):
            message = consumer.poll(1.0)
            if message is not None and not message.error():
                assert message.value() == b"still here"
                return
        pytest.fail("the message did not come back from tansu")
    finally:
        consumer.close()
