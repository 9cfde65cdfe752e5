"""Object stores: a local folder (the embedded default) and S3."""

from upscaler.store.base import ObjectInfo, ObjectStore, StoredObject
from upscaler.store.factory import open_store
from upscaler.store.keys import validate_bucket, validate_key

__all__ = ["ObjectInfo", "ObjectStore", "StoredObject", "open_store", "validate_bucket", "validate_key"]
