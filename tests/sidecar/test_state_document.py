"""The state file's job documents: the hand-built dicts are dataclasses.asdict's."""

from __future__ import annotations

import json
from dataclasses import asdict, fields

from snapshot_sidecar.state import JobProgress, LogProgress, SidecarState, SpanProgress


def _populated() -> JobProgress:
    return JobProgress(
        run="run-7",
        complete=True,
        abandoned=False,
        backstop=True,
        quarantined=False,
        first_seen=1_700_000_000.25,
        completed_at=1_700_000_042.5,
        log=LogProgress(
            status="active",
            offset=4096,
            lines=17,
            seq=17,
            blob_type="AppendBlob",
            blob_offset=4000,
            error="conflict at 4000",
        ),
        spans=SpanProgress(status="failed", offset=512, error="collector refused"),
    )


def test_job_document_equals_asdict_for_default_and_populated_jobs() -> None:
    for job in (JobProgress(), _populated()):
        assert job.to_json() == asdict(job)


def test_job_document_is_a_copy() -> None:
    job = _populated()
    doc = job.to_json()
    doc["log"]["offset"] = 0
    doc["spans"]["status"] = "done"
    doc["run"] = None
    assert job.log.offset == 4096
    assert job.spans.status == "failed"
    assert job.run == "run-7"


def test_every_field_is_a_scalar_so_a_shallow_copy_is_enough() -> None:
    # The shallow copy in to_json is only right while no field holds a
    # mutable container; a new list/dict field must change to_json too.
    job = _populated()
    for record in (job, job.log, job.spans):
        for f in fields(record):
            value = getattr(record, f.name)
            if isinstance(value, (LogProgress, SpanProgress)):
                continue
            assert value is None or isinstance(value, (str, int, float, bool)), f.name


def test_state_round_trips_through_json() -> None:
    state = SidecarState(jobs={"b": _populated(), "a": JobProgress(first_seen=3.0)})
    state.watchdog_seen.add("w1")
    text = json.dumps(state.to_json())
    back = SidecarState.from_json(json.loads(text))
    assert back.jobs == state.jobs
    assert list(back.to_json()["jobs"]) == ["a", "b"]
    assert back.watchdog_seen == {"w1"}
