"""Every secret under MEDSYNTH_HOME — S3 keys, tokens, SeaweedFS's signing keys and certificate key, the
projects' de-identification keys in the local store — is a file of mode 0600 in folders of mode 0700,
whatever the umask, and secrets written before that are narrowed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from medsynth.core.settings import Settings
from medsynth.local import stack
from medsynth.local.servers import S3Credentials, SeaweedSecurity, local_secret, write_seaweed_identities
from medsynth.dicom.deid import DEID_KEYS, deid_policy
from medsynth.store.local import LocalStore


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def open_umask() -> Iterator[None]:
    """The usual umask: what is not made private on purpose comes out 0644 / 0755."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_the_stack_plan_leaves_every_secret_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    stack.plan(Settings(home=home, stack_base_port=29900), names=["api"])
    secrets = home / "secrets"
    files = [secrets / "s3.json", secrets / "metrics-token", home / "seaweedfs" / "s3-identities.json",
             *(secrets / "seaweedfs" / name for name in ("jwt.json", "ca.crt", "grpc.crt", "grpc.key"))]
    assert {str(f.relative_to(home)): mode(f) for f in files} == {str(f.relative_to(home)): 0o600 for f in files}
    folders = [secrets, secrets / "seaweedfs", home / "seaweedfs", home / "torchserve"]
    assert {str(d.relative_to(home)): mode(d) for d in folders} == {str(d.relative_to(home)): 0o700 for d in folders}


def test_secrets_written_open_before_are_narrowed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "secrets").mkdir(parents=True)
    (home / "secrets").chmod(0o755)
    (home / "secrets" / "metrics-token").write_text("old-token\n")
    (home / "secrets" / "s3.json").write_text('{"access_key": "a", "secret_key": "b"}')
    for path in (home / "secrets" / "metrics-token", home / "secrets" / "s3.json"):
        path.chmod(0o644)
    assert local_secret(home, "metrics-token") == "old-token"
    assert S3Credentials.for_home(home) == S3Credentials("a", "b")
    assert mode(home / "secrets") == 0o700
    assert mode(home / "secrets" / "metrics-token") == mode(home / "secrets" / "s3.json") == 0o600
    identities = tmp_path / "data" / "s3-identities.json"
    identities.parent.mkdir()
    identities.write_text("{}")
    identities.chmod(0o644)
    write_seaweed_identities(identities, S3Credentials("a", "b"))  # rewritten over an open file
    assert mode(identities) == 0o600 and mode(identities.parent) == 0o700
    security = tmp_path / "keys"
    SeaweedSecurity.in_folder(security)
    (security / "jwt.json").chmod(0o644)
    security.chmod(0o755)
    SeaweedSecurity.in_folder(security)
    assert mode(security) == 0o700 and mode(security / "jwt.json") == 0o600


def test_seaweedfs_keys_are_made_once(tmp_path: Path) -> None:
    first = SeaweedSecurity.in_folder(tmp_path / "keys").env()
    again = SeaweedSecurity.in_folder(tmp_path / "keys").env()
    assert first == again
    assert {k for k in first if k.startswith("WEED_JWT_")} == {"WEED_JWT_SIGNING_KEY", "WEED_JWT_SIGNING_READ_KEY",
                                                                "WEED_JWT_FILER_SIGNING_KEY", "WEED_JWT_FILER_SIGNING_READ_KEY"}
    assert len(set(first[k] for k in first if k.startswith("WEED_JWT_"))) == 4
    assert Path(first["WEED_GRPC_CA"]).is_file() and first["WEED_GRPC_FILER_KEY"] == str(tmp_path / "keys" / "grpc.key")


def test_deidentification_keys_in_the_local_store_are_private(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    deid_policy(store, "default")
    store.put_bytes("datasets/knee/manifest.json", b"{}")
    key = store.root / DEID_KEYS / "default.key"
    assert mode(key) == 0o600
    assert mode(store.root / "auth") == mode(store.root / "auth" / "deid-keys") == 0o700
    assert mode(store.root / ".meta" / "auth") == mode(store.root / ".meta" / "auth" / "deid-keys") == 0o700
    assert mode(store.root / ".meta" / DEID_KEYS / "default.key") == 0o600
    assert mode(store.root / "datasets" / "knee" / "manifest.json") == 0o644  # the rest stays browsable
    assert mode(store.root / "datasets") == 0o755


def test_a_store_with_open_secrets_closes_them(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "auth" / "deid-keys").mkdir(parents=True)
    (root / "auth" / "deid-keys" / "old.key").write_text("00" * 32)  # as an older version wrote them
    for path, old in ((root / "auth", 0o755), (root / "auth" / "deid-keys", 0o755), (root / "auth" / "deid-keys" / "old.key", 0o644)):
        path.chmod(old)
    store = LocalStore(root)
    assert mode(root / "auth") == 0o700  # at once: nothing beneath can be reached by others
    store.sweep_abandoned()  # services sweep when they start: it narrows the rest
    assert mode(root / "auth" / "deid-keys") == 0o700 and mode(root / "auth" / "deid-keys" / "old.key") == 0o600
