"""Writing a job log into its logsBlobUri, whatever kind of blob that is.

Each target writes ``data`` at a *logical* offset and says either "written,
the blob now ends at N" or "conflict: the blob ends at N, not where you
said". Resolving a conflict (did our earlier attempt land?) is the mirror's
job, from the bytes: ``read(offset, length)``.

* ``AppendTarget``: Append Block with ``appendpos_condition`` = the offset, so
  a retried request whose first attempt landed fails with 412
  AppendPositionConditionNotMet instead of appending twice. With service
  version 2022-11-02 or later a block may be up to 100 MiB (``max_write``):
  with 50 ms of storage latency one 4 MiB append per round trip capped the
  mirror at ~40 MB/s per blob (benchmarks/sidecar_mirror.py).
* ``BlockTarget`` (the platform may hand us an existing block blob): Put Block
  with an id derived from the offset, then Put Block List of the committed
  ids plus ours, guarded by the etag (If-Match). Content the blob held
  without a block list (uploaded by Put Blob) is re-staged as blocks first.
* ``PageTarget`` (an existing page blob): pages are 512-byte aligned and the
  blob is zero-filled, so the logical length lives in the metadata
  ``vmsnaplength``; the partial last page is rewritten with the new bytes
  (page writes are idempotent), the blob is grown in 4 MiB steps.

``open_target`` finds out which: it creates an append blob with
``If-None-Match: *`` (never overwriting), and on 409 continues whatever exists.

Every SDK call here may raise what azure-storage-blob raises; callers run them
through ``snapshot_runtime.snapshot.blob_requests.call_with_retries``, which classifies. Not
thread-safe (one ``BlobClient`` per target, used by one thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobBlock, BlobClient, BlobType

__all__ = [
    "APPEND_BLOCK_MAX_BYTES",
    "BLOCK_BYTES",
    "LARGE_APPEND_VERSION",
    "MAX_BLOCKS",
    "AppendTarget",
    "BlockTarget",
    "LogTarget",
    "OpenResult",
    "PageTarget",
    "WriteResult",
    "open_target",
]

# Largest single write: the 4 MiB block size every service version accepts.
BLOCK_BYTES = 4 * 1024 * 1024
# Append Block takes up to 100 MiB from this service version on.
LARGE_APPEND_VERSION = "2022-11-02"
APPEND_BLOCK_MAX_BYTES = 100 * 1024 * 1024
# The sidecar's own ceiling, well under the service's 50,000 blocks per blob.
MAX_BLOCKS = 40_000
PAGE = 512
PAGE_GROWTH = 4 * 1024 * 1024
LENGTH_KEY = "vmsnaplength"


class BlockLimitError(RuntimeError):
    """The blob reached MAX_BLOCKS: stop mirroring into it."""


@dataclass(frozen=True)
class WriteResult:
    size: int  # logical end of the blob after the write (or as found, on conflict)
    conflict: bool = False


@dataclass(frozen=True)
class OpenResult:
    target: LogTarget
    created: bool


def _error_code(exc: HttpResponseError) -> str:
    code: Any = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


class LogTarget(Protocol):
    blob_type: str
    size: int
    blocks: int
    max_write: int  # the largest ``data`` one write takes

    def write(self, offset: int, data: bytes, *, timeout: float) -> WriteResult: ...
    def read(self, offset: int, length: int, *, timeout: float) -> bytes: ...


class _Base:
    blob_type = ""

    def __init__(self, client: BlobClient, *, server_timeout: int) -> None:
        self.client = client
        self.server_timeout = server_timeout
        self.size = 0
        self.blocks = 0
        self.max_write = BLOCK_BYTES

    def read(self, offset: int, length: int, *, timeout: float) -> bytes:
        if length <= 0:
            return b""
        stream = self.client.download_blob(
            offset=offset, length=length, timeout=self.server_timeout, read_timeout=timeout
        )
        return bytes(stream.readall())


class AppendTarget(_Base):
    blob_type = "AppendBlob"

    def __init__(self, client: BlobClient, *, server_timeout: int) -> None:
        super().__init__(client, server_timeout=server_timeout)
        # ISO dates compare as strings; the client sends its api_version on every request.
        if str(client.api_version) >= LARGE_APPEND_VERSION:
            self.max_write = APPEND_BLOCK_MAX_BYTES

    def refresh(self, *, timeout: float) -> None:
        props = self.client.get_blob_properties(timeout=self.server_timeout, read_timeout=timeout)
        self.size = int(props.size)
        self.blocks = int(props.append_blob_committed_block_count or 0)

    def write(self, offset: int, data: bytes, *, timeout: float) -> WriteResult:
        if self.blocks >= MAX_BLOCKS:
            raise BlockLimitError(f"append blob has {self.blocks} blocks")
        try:
            result = self.client.append_block(
                data,
                length=len(data),
                appendpos_condition=offset,
                timeout=self.server_timeout,
                read_timeout=timeout,
            )
        except HttpResponseError as exc:
            if _error_code(exc) != "AppendPositionConditionNotMet":
                raise
            self.refresh(timeout=timeout)
            return WriteResult(self.size, conflict=True)
        self.size = offset + len(data)
        count = result.get("blob_committed_block_count")
        self.blocks = count if isinstance(count, int) else self.blocks + 1
        return WriteResult(self.size)


def _block_id(offset: int) -> str:
    return f"vmsnap-{offset:020d}"  # every id in a blob has the same length


class BlockTarget(_Base):
    blob_type = "BlockBlob"

    def __init__(self, client: BlobClient, *, server_timeout: int) -> None:
        super().__init__(client, server_timeout=server_timeout)
        self.ids: list[str] = []
        self.etag: str | None = None
        self.content_settings: Any = None

    def refresh(self, *, timeout: float) -> None:
        props = self.client.get_blob_properties(timeout=self.server_timeout, read_timeout=timeout)
        committed, _ = self.client.get_block_list(
            "committed", timeout=self.server_timeout, read_timeout=timeout
        )
        self.size = int(props.size)
        self.etag = props.etag
        self.content_settings = props.content_settings
        self.ids = [str(b.id) for b in committed]
        self.blocks = len(self.ids)
        if self.size and not self.ids:
            self._restage(timeout=timeout)

    def _restage(self, *, timeout: float) -> None:
        # A blob written by Put Blob has content but no block list: a Put Block
        # List of our blocks alone would drop it. Stage it as blocks first.
        ids = []
        for start in range(0, self.size, BLOCK_BYTES):
            chunk = self.read(start, min(BLOCK_BYTES, self.size - start), timeout=timeout)
            block_id = f"vmsnapbase{start:017d}"
            self.client.stage_block(block_id, chunk, length=len(chunk), timeout=self.server_timeout)
            ids.append(block_id)
        self._commit(ids, timeout=timeout)
        self.ids = ids
        self.blocks = len(ids)

    def _commit(self, ids: list[str], *, timeout: float) -> None:
        result = self.client.commit_block_list(
            [BlobBlock(block_id=i) for i in ids],
            content_settings=self.content_settings,
            etag=self.etag,
            match_condition=MatchConditions.IfNotModified,
            timeout=self.server_timeout,
            read_timeout=timeout,
        )
        self.etag = str(result.get("etag"))

    def write(self, offset: int, data: bytes, *, timeout: float) -> WriteResult:
        if self.blocks >= MAX_BLOCKS:
            raise BlockLimitError(f"block blob has {self.blocks} blocks")
        if offset != self.size:
            return WriteResult(self.size, conflict=True)
        block_id = _block_id(offset)
        self.client.stage_block(
            block_id, data, length=len(data), timeout=self.server_timeout, read_timeout=timeout
        )
        try:
            self._commit([*self.ids, block_id], timeout=timeout)
        except HttpResponseError as exc:
            if exc.status_code != 412:
                raise
            # Someone (or our own earlier, lost-response attempt) changed the blob.
            self.refresh(timeout=timeout)
            return WriteResult(self.size, conflict=True)
        self.ids.append(block_id)
        self.size = offset + len(data)
        self.blocks = len(self.ids)
        return WriteResult(self.size)


class PageTarget(_Base):
    blob_type = "PageBlob"

    def __init__(self, client: BlobClient, *, server_timeout: int) -> None:
        super().__init__(client, server_timeout=server_timeout)
        self.capacity = 0
        self.metadata: dict[str, str] = {}
        self.tail = b""  # bytes of the partial last page, [size - size % 512, size)

    def refresh(self, *, timeout: float) -> None:
        props = self.client.get_blob_properties(timeout=self.server_timeout, read_timeout=timeout)
        self.capacity = int(props.size)
        self.metadata = dict(props.metadata or {})
        try:
            self.size = max(0, min(int(self.metadata.get(LENGTH_KEY, "0")), self.capacity))
        except ValueError:
            self.size = 0
        start = self.size - self.size % PAGE
        self.tail = self.read(start, self.size - start, timeout=timeout)

    def write(self, offset: int, data: bytes, *, timeout: float) -> WriteResult:
        if offset != self.size:
            return WriteResult(self.size, conflict=True)
        start = offset - offset % PAGE
        payload = self.tail + data
        padded = payload + b"\0" * (-len(payload) % PAGE)
        end = start + len(padded)
        if end > self.capacity:
            grown = end + (-end % PAGE_GROWTH)
            self.client.resize_blob(grown, timeout=self.server_timeout, read_timeout=timeout)
            self.capacity = grown
        for pos in range(0, len(padded), BLOCK_BYTES):
            page = padded[pos : pos + BLOCK_BYTES]
            self.client.upload_page(
                page,
                offset=start + pos,
                length=len(page),
                timeout=self.server_timeout,
                read_timeout=timeout,
            )
        new_size = offset + len(data)
        self.metadata[LENGTH_KEY] = str(new_size)
        self.client.set_blob_metadata(
            self.metadata, timeout=self.server_timeout, read_timeout=timeout
        )
        self.size = new_size
        keep = new_size % PAGE
        self.tail = payload[len(payload) - keep :] if keep else b""
        self.blocks += 1
        return WriteResult(self.size)


_TYPES: dict[str, type[AppendTarget | BlockTarget | PageTarget]] = {
    "AppendBlob": AppendTarget,
    "BlockBlob": BlockTarget,
    "PageBlob": PageTarget,
}


def _blob_type(value: object) -> str:
    return str(value.value if isinstance(value, BlobType) else value)


def open_target(
    client: BlobClient, *, known_type: str | None, server_timeout: int, timeout: float
) -> OpenResult:
    """Create the append blob, or continue the blob that is there (any type)."""
    created = False
    blob_type = known_type
    if blob_type is None:
        try:
            client.create_append_blob(
                match_condition=MatchConditions.IfMissing,
                timeout=server_timeout,
                read_timeout=timeout,
            )
            created, blob_type = True, "AppendBlob"
        except HttpResponseError as exc:
            # 409 BlobAlreadyExists: continue it. 403 on create: maybe a SAS
            # without create permission on an existing blob; the properties
            # request below decides (and raises the auth error otherwise).
            if exc.status_code not in (409, 412, 403):
                raise
            props = client.get_blob_properties(timeout=server_timeout, read_timeout=timeout)
            blob_type = _blob_type(props.blob_type)
    cls = _TYPES.get(blob_type or "")
    if cls is None:
        raise ValueError(f"unsupported blob type {blob_type!r}")
    target = cls(client, server_timeout=server_timeout)
    if not created:
        target.refresh(timeout=timeout)
    return OpenResult(target, created)
