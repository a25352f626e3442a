"""An upgrade in progress: a runtime and a sidecar of different sealing versions on one VM.

The package is upgraded while a job of the previous runtime is running: that
job sealed its logsBlobUri in format version 1 (the hand-rolled construction,
its writer kept unchanged in tests/support/sealing_v1.py), to the key the
previous sidecar made. The new sidecar starts on the same state directory
(same key files, no new key) and must mirror that job's log, and the next
job's (sealed by the new runtime in version 2), to real Azurite blobs, each
line exactly once, also across a sidecar restart (docs/spool.md).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from snapshot_sidecar.keys import PRIVATE_FILE, PUBLIC_FILE, Keys

from snapshot_runtime.telemetry.sealing import FORMAT_VERSION, unseal
from tests.sidecar.conftest import Rig, fast_mirror
from tests.support.azurite import Azurite
from tests.support.sealing_v1 import ALG, generate_keypair_v1, seal_v1
from tests.support.spoolgen import GenJob, SpoolGen

pytestmark = pytest.mark.azurite


def _blob(azurite: Azurite, container: str, name: str) -> bytes:
    return bytes(azurite.service().get_blob_client(container, name).download_blob().readall())


def _target(azurite: Azurite) -> tuple[str, str, str]:
    container = azurite.container()
    name = f"logs/{uuid.uuid4().hex}.log"
    return container, name, azurite.sas_url(container, name)


def _sealed_doc(job: GenJob) -> dict[str, object]:
    doc = json.loads((job.path / "credentials.sealed").read_text())
    assert isinstance(doc, dict)
    return doc


def test_old_runtime_and_new_runtime_jobs_are_both_mirrored_once(
    tmp_path: Path, azurite: Azurite
) -> None:
    spool, state = tmp_path / "spool", tmp_path / "state"
    # What the previous sidecar left: its key files, made by its own code, and
    # the public key it published in the spool.
    state.mkdir(mode=0o700)
    old_private, old_public = generate_keypair_v1()
    (state / PRIVATE_FILE).write_bytes(old_private)
    (state / PRIVATE_FILE).chmod(0o600)
    (state / PUBLIC_FILE).write_bytes(old_public)
    gen = SpoolGen(spool)
    (spool / PUBLIC_FILE).write_bytes(old_public)

    # A job of the previous runtime, running across the upgrade: version 1.
    old_container, old_name, old_url = _target(azurite)
    old_job = gen.job("job-old-runtime", complete=False)
    (old_job.path / "credentials.sealed").write_text(
        seal_v1((spool / PUBLIC_FILE).read_bytes(), json.dumps({"logsBlobUri": old_url}).encode())
    )
    assert _sealed_doc(old_job)["alg"] == ALG and "version" not in _sealed_doc(old_job)
    gen.log_lines(old_job, 120)

    # The new sidecar starts on the same state: it keeps the key.
    keys = Keys.load_or_create(state)
    assert keys.public == old_public
    assert (state / PRIVATE_FILE).read_bytes() == old_private
    keys.publish(spool)
    assert (spool / PUBLIC_FILE).read_bytes() == old_public
    rig = Rig(spool, state, gen, keys)
    try:
        sidecar = rig.sidecar(mirror=fast_mirror(max_batch=8 * 1024))
        sidecar.run_once()
        assert _blob(azurite, old_container, old_name) == bytes(old_job.log_bytes)

        # The new runtime's job: version 2, to the same published key.
        new_container, new_name, new_url = _target(azurite)
        new_job = gen.job("job-new-runtime", complete=False)
        gen.seal_logs_url(new_job, new_url)
        assert _sealed_doc(new_job)["version"] == FORMAT_VERSION == 2
        assert unseal(old_private, (new_job.path / "credentials.sealed").read_text()) == (
            json.dumps({"logsBlobUri": new_url}).encode()
        )
        gen.log_lines(new_job, 80)
        gen.log_lines(old_job, 30)
        gen.complete(old_job)
        sidecar.run_once()
        gen.log_lines(new_job, 40)
        gen.complete(new_job)
        sidecar.run_once()
        sidecar.run_once()

        # A restart of the new sidecar on the same state re-reads both jobs'
        # credentials and must not write any line a second time.
        restarted = rig.sidecar(mirror=fast_mirror(max_batch=8 * 1024))
        restarted.run_once()
        restarted.run_once()

        for job, container, name in (
            (old_job, old_container, old_name),
            (new_job, new_container, new_name),
        ):
            assert _blob(azurite, container, name) == bytes(job.log_bytes)
            log = restarted.ledger.state.jobs[job.task_id].log
            assert log.status == "done" and log.seq == job.seq and log.error is None
        assert (old_job.seq, new_job.seq) == (150, 120)
        for sidecar_ in (sidecar, restarted):
            # Neither job's mirroring was given up (unseal or otherwise).
            assert rig.value(sidecar_, "vmsnap_sidecar_log_mirror_abandoned_total") == 0
    finally:
        for sidecar_ in rig.sidecars:
            sidecar_.close()
