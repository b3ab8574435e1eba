"""Object store: one interface (:class:`ObjectStore`), a local-directory and an S3 backend."""

from medsynth.store.base import ObjectInfo, ObjectStore, check_key
from medsynth.store.factory import open_service_store, open_store

__all__ = ["ObjectInfo", "ObjectStore", "check_key", "open_service_store", "open_store"]
