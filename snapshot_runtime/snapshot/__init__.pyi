"""Snapshot backends behind the ``Snapshotter`` seam, and the Azure blob
requests they use (the one edge where ``azure.*`` errors are translated)."""

from .azure_blob import AzureBlobSnapshotter as AzureBlobSnapshotter
from .backend import BackendDecision as BackendDecision
from .backend import SnapshotRequest as SnapshotRequest
from .backend import Snapshotter as Snapshotter
from .backend import SnapshotterFactory as SnapshotterFactory
from .blob_policy import BlobPolicy as BlobPolicy
from .blob_requests import blob_client as blob_client
from .blob_requests import upload_block_blob as upload_block_blob
from .blob_retry import Attempt as Attempt
from .blob_retry import call_with_retries as call_with_retries
from .blob_rules import sas_redactor as sas_redactor
from .failures import BlobFailure as BlobFailure
from .failures import BlobOpError as BlobOpError
from .failures import FailureKind as FailureKind
from .registry import BACKENDS as BACKENDS
from .registry import BackendChoice as BackendChoice
from .registry import BackendDeclined as BackendDeclined
from .registry import choose_backend as choose_backend
from .results import DiskSnapshot as DiskSnapshot
from .results import SnapshotResult as SnapshotResult

__all__ = [
    "BACKENDS",
    "Attempt",
    "AzureBlobSnapshotter",
    "BackendChoice",
    "BackendDecision",
    "BackendDeclined",
    "BlobFailure",
    "BlobOpError",
    "BlobPolicy",
    "DiskSnapshot",
    "FailureKind",
    "SnapshotRequest",
    "SnapshotResult",
    "Snapshotter",
    "SnapshotterFactory",
    "blob_client",
    "call_with_retries",
    "choose_backend",
    "sas_redactor",
    "upload_block_blob",
]
