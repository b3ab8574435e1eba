"""Build the configured object store from :class:`~medsynth.core.settings.Settings`."""

from __future__ import annotations

import logging

from medsynth.core.settings import Settings, StoreBackend
from medsynth.store.base import ObjectStore


log = logging.getLogger(__name__)


def open_store(settings: Settings) -> ObjectStore:
    """The local-directory store, or the S3 store with its bucket created if absent."""
    if settings.store is StoreBackend.s3:
        from medsynth.store.s3 import S3Store

        return S3Store(
            settings.s3_endpoint,
            settings.s3_bucket,
            settings.s3_access_key,
            settings.s3_secret_key,
            secure=settings.s3_secure,
            region=settings.s3_region,
            ca_bundle=settings.s3_ca_bundle,
        ).ensure_bucket()
    from medsynth.store.local import LocalStore

    return LocalStore(settings.local_store_root)


def open_service_store(settings: Settings) -> ObjectStore:
    """:func:`open_store` for a service starting up: it first sweeps what writes that died midway
    left behind (:meth:`ObjectStore.sweep_abandoned`), saying so in the log."""
    store = open_store(settings)
    if swept := store.sweep_abandoned():
        log.warning("removed %d partial objects left by writes that died midway", swept)
    return store
