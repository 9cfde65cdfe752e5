"""Object stores: a local folder (the embedded default) and S3, chosen by :func:`open_store`.

boto3 is imported only by :mod:`upscaler.store.s3`, which is loaded when an S3 store is opened.
"""

from upscaler.store.base import ObjectInfo, ObjectStore, StoredObject
from upscaler.store.factory import open_store
from upscaler.store.keys import validate_bucket, validate_key
from upscaler.store.local import LocalFolderStore

__all__ = [
    "LocalFolderStore",
    "ObjectInfo",
    "ObjectStore",
    "StoredObject",
    "open_store",
    "validate_bucket",
    "validate_key",
]
