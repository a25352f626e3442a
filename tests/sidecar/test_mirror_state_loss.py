"""Issue 11, defect 3: a sidecar that lost its state resumes each log where the blob ends.

The sidecar's state.json says how far each log was mirrored. When it is gone
(deleted, corrupt, or of a newer schema version: the downgrade path of
docs/operations.md), the blob itself is the truth: its last line, byte-equal
to a spool line, says where to go on. Before the fix every still-spooled log
was appended again from its first line (18 lines became 36; a running job's
20 became 24 with 4 doubled). Real Azurite, every blob kind the mirror writes.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from snapshot_sidecar.blob_targets import LENGTH_KEY
from snapshot_sidecar.state import STATE_FILE

from tests.sidecar.conftest import Rig, fast_mirror
from tests.support.azurite import Azurite

pytestmark = pytest.mark.azurite

HEADER = b"platform header line\n"


def lose_state(state_dir: Path, how: str) -> None:
    """What can happen to state.json between two sidecar runs."""
    path = state_dir / STATE_FILE
    if how == "deleted":
        path.unlink()
    elif how == "corrupt":
        path.write_bytes(b'{"schema": "snapshot-sidecar/state", "jobs": {"a')
    elif how == "newer_version":
        doc = json.loads(path.read_text())
        doc["schema_version"] = 99  # a downgrade across a format change
        path.write_text(json.dumps(doc))
    else:
        raise AssertionError(how)


def _blob_text(azurite: Azurite, container: str, name: str) -> bytes:
    client = azurite.service().get_blob_client(container, name)
    data = bytes(client.download_blob().readall())
    props = client.get_blob_properties()
    if props.blob_type == "PageBlob":
        data = data[: int(props.metadata.get(LENGTH_KEY, "0"))]
    return data


@pytest.mark.parametrize("how", ["deleted", "corrupt", "newer_version"])
@pytest.mark.parametrize("blob_type", ["AppendBlob", "BlockBlob", "PageBlob"])
def test_a_fresh_start_resumes_each_log_where_its_blob_ends(
    rig: Rig, azurite: Azurite, blob_type: str, how: str
) -> None:
    container = azurite.container()
    client = azurite.service().get_blob_client(container, f"logs/{uuid.uuid4().hex}.log")
    header = b""
    if blob_type == "AppendBlob":
        client.create_append_blob()
        client.append_block(HEADER)  # the platform wrote first: kept, never ours
        header = HEADER
    elif blob_type == "BlockBlob":
        client.upload_blob(HEADER, blob_type="BlockBlob")
        header = HEADER
    else:
        client.create_page_blob(0)

    # A completed job (a new append blob): its 18 lines mirrored, then the state is lost.
    finished_blob = azurite.service().get_blob_client(container, client.blob_name + ".f")
    finished = rig.gen.job("finished")
    rig.gen.seal_logs_url(finished, azurite.sas_url(container, finished_blob.blob_name))
    rig.gen.log_lines(finished, 18)
    # A running job writing into the blob of the kind under test.
    running = rig.gen.job("running", complete=False)
    rig.gen.seal_logs_url(running, azurite.sas_url(container, client.blob_name))
    rig.gen.log_lines(running, 20)

    first = rig.sidecar(mirror=fast_mirror(max_batch=1024))  # several writes per log
    first.run_once()
    assert _blob_text(azurite, container, client.blob_name) == header + bytes(running.log_bytes)
    assert _blob_text(azurite, container, finished_blob.blob_name) == bytes(finished.log_bytes)
    assert first.ledger.state.jobs["finished"].log.status == "done"

    # The state is lost between two runs while one job still runs.
    lose_state(rig.state, how)
    rig.gen.log_lines(running, 4)
    second = rig.sidecar(mirror=fast_mirror(max_batch=1024))
    second.run_once()
    assert _blob_text(azurite, container, finished_blob.blob_name) == bytes(finished.log_bytes)
    assert _blob_text(azurite, container, client.blob_name) == header + bytes(running.log_bytes)
    assert second.ledger.state.jobs["finished"].log.status == "done"
    assert second.ledger.state.jobs["running"].log.seq == 24

    # And again once it completed: nothing is appended a second time.
    rig.gen.log_lines(running, 3)
    rig.gen.complete(running)
    second.run_once()
    lose_state(rig.state, how)
    third = rig.sidecar(mirror=fast_mirror(max_batch=1024))
    third.run_once()
    third.run_once()
    data = _blob_text(azurite, container, client.blob_name)
    assert data == header + bytes(running.log_bytes)
    seqs = [json.loads(line)["seq"] for line in data[len(header) :].splitlines()]
    assert seqs == list(range(1, 28))
    assert _blob_text(azurite, container, finished_blob.blob_name) == bytes(finished.log_bytes)
    assert third.ledger.state.jobs["running"].log.status == "done"
    assert rig.value(third, "vmsnap_sidecar_log_mirror_errors_total", error="conflict") == 0


def test_a_blob_that_does_not_end_with_our_log_is_continued_not_searched(
    rig: Rig, azurite: Azurite
) -> None:
    """No progress in the state and a blob whose last line is not ours: append after it."""
    container = azurite.container()
    client = azurite.service().get_blob_client(container, f"logs/{uuid.uuid4().hex}.log")
    client.create_append_blob()
    client.append_block(b'{"seq": 1, "message": "an earlier job of the same blob"}\n')
    job = rig.gen.job("j")
    rig.gen.seal_logs_url(job, azurite.sas_url(container, client.blob_name))
    rig.gen.log_lines(job, 5)
    sidecar = rig.sidecar()
    sidecar.run_once()
    data = _blob_text(azurite, container, client.blob_name)
    assert data.endswith(bytes(job.log_bytes))
    assert data.count(b"\n") == 6


def test_our_lines_followed_by_a_foreign_one_are_still_found(rig: Rig, azurite: Azurite) -> None:
    """Someone appended after our lines, then the state was lost: ours are not repeated."""
    container = azurite.container()
    client = azurite.service().get_blob_client(container, f"logs/{uuid.uuid4().hex}.log")
    job = rig.gen.job("j", complete=False)
    rig.gen.seal_logs_url(job, azurite.sas_url(container, client.blob_name))
    rig.gen.log_lines(job, 10)
    rig.sidecar().run_once()
    before = bytes(job.log_bytes)
    client.append_block(b"a footer from someone else\n")
    lose_state(rig.state, "deleted")
    rig.gen.log_lines(job, 5)
    rig.gen.complete(job)
    sidecar = rig.sidecar()
    sidecar.run_once()
    after = bytes(job.log_bytes)[len(before) :]
    assert _blob_text(azurite, container, client.blob_name) == (
        before + b"a footer from someone else\n" + after
    )
    assert sidecar.ledger.state.jobs["j"].log.status == "done"
    assert rig.value(sidecar, "vmsnap_sidecar_log_mirror_bytes_total") == len(after)
