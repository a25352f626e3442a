"""The sequence and task guards follow the VM identity (restore / clone)."""

from __future__ import annotations

from pathlib import Path

from snapshot_runtime.handler.guards import ProcessedTasks, reset_guards_on_new_identity


def _guards(tmp_path: Path) -> tuple[ProcessedTasks, Path, Path]:
    processed = ProcessedTasks(str(tmp_path / "state" / "handler" / "processed-tasks.json"))
    processed.add("task-a")
    mrseq = tmp_path / "handler-dir" / "mrseq"
    mrseq.parent.mkdir()
    mrseq.write_text("7\n")
    return processed, mrseq, tmp_path / "state" / "handler" / "vm-identity"


def _check(current: str | None, processed: ProcessedTasks, mrseq: Path, identity: Path):
    return reset_guards_on_new_identity(
        current, identity_path=str(identity), processed=processed, sequence_path=str(mrseq)
    )


def test_first_identity_is_stored_and_resets_nothing(tmp_path: Path) -> None:
    processed, mrseq, identity = _guards(tmp_path)
    check = _check("product_uuid=a;role_guid=-", processed, mrseq, identity)
    assert (check.previous, check.reset) == (None, False)
    assert identity.read_text() == "product_uuid=a;role_guid=-\n"
    assert "task-a" in processed and mrseq.read_text() == "7\n"


def test_an_unchanged_identity_keeps_the_guards(tmp_path: Path) -> None:
    processed, mrseq, identity = _guards(tmp_path)
    _check("product_uuid=a;role_guid=-", processed, mrseq, identity)
    check = _check("product_uuid=a;role_guid=-", processed, mrseq, identity)
    assert check.reset is False
    assert "task-a" in processed and mrseq.read_text() == "7\n"


def test_a_changed_identity_resets_both_guards(tmp_path: Path) -> None:
    processed, mrseq, identity = _guards(tmp_path)
    _check("product_uuid=a;role_guid=-", processed, mrseq, identity)
    check = _check("product_uuid=b;role_guid=-", processed, mrseq, identity)
    assert (check.previous, check.current, check.reset) == (
        "product_uuid=a;role_guid=-",
        "product_uuid=b;role_guid=-",
        True,
    )
    assert "task-a" not in processed and processed.tasks() == []
    assert not mrseq.exists()
    assert identity.read_text() == "product_uuid=b;role_guid=-\n"


def test_no_identity_touches_nothing(tmp_path: Path) -> None:
    processed, mrseq, identity = _guards(tmp_path)
    _check("product_uuid=a;role_guid=-", processed, mrseq, identity)
    check = _check(None, processed, mrseq, identity)
    assert (check.previous, check.current, check.reset) == (
        "product_uuid=a;role_guid=-",
        None,
        False,
    )
    assert "task-a" in processed and mrseq.exists()
    assert identity.read_text() == "product_uuid=a;role_guid=-\n"
