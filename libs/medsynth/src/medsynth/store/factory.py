"""Build the configured object store from :class:`~medsynth.core.settings.Settings`."""

from __future__ import annotations

from medsynth.core.settings import Settings, StoreBackend
from medsynth.store.base import ObjectStore


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
        ).ensure_bucket()
    from medsynth.store.local import LocalStore

    return LocalStore(settings.local_store_root)
