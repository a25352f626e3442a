"""The WireServer client against the host-service emulator (a real HTTP server) and raw sockets."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from snapshot_runtime.snapshot.wireserver import (
    DOSNAPSHOT_PATH,
    PRESNAPSHOT_PATH,
    WIRESERVER_ENV,
    PreparedCall,
    build_dosnapshot_body,
    build_presnapshot_body,
    parse_creation_time,
    parse_dosnapshot,
    parse_presnapshot,
    wireserver_address,
)
from tests.support.host_service import Fault, HostService
from tests.support.waiting import wait_until

TOKEN = "tok-7d1e-SECRET"


def call(host: HostService, path: str, body: bytes, deadline: float = 5.0, *, do: bool = False):  # type: ignore[no-untyped-def]
    prepared = PreparedCall("127.0.0.1", host.port, path, body)
    assert prepared.connect(2.0)
    return prepared.send(deadline, dosnapshot=do)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_presnapshot_sends_the_reference_request_and_parses_the_answer() -> None:
    with HostService({}) as host:
        answer = call(
            host, PRESNAPSHOT_PATH, build_presnapshot_body("t1", TOKEN, ade_enabled=False)
        )
    assert (answer.code, answer.http_status, answer.sent, answer.error) == (200, 200, True, None)
    info = parse_presnapshot(answer, want_ade=False)
    assert info.accepted and info.bhs_version == "1.0.0-emulator"
    assert info.host_time is not None and abs(info.host_time.timestamp() - time.time()) < 60
    (recorded,) = host.calls_of("presnapshot")
    assert recorded.raw_body == (
        b'{"taskId": "t1", "snapshotTaskToken": "tok-7d1e-SECRET", '
        b'"preSnapshotSettings": [{"Key": "isVMADEEnabled", "Value": false}]}'
    )
    assert recorded.headers["backup"] == "true"
    assert recorded.headers["content-type"] == "application/json"
    assert recorded.headers["useragent"] == "VMSnapshot"
    assert "user-agent" not in recorded.headers
    assert recorded.path.endswith("?api-version=2017-12-01")


def test_ade_details_are_read_only_when_asked_and_a_bad_body_is_558() -> None:
    with HostService({}) as host:
        host.script.disk_encryption_settings = "kek-SECRET"
        host.script.ade_os_encrypted = True
        info = parse_presnapshot(
            call(host, PRESNAPSHOT_PATH, build_presnapshot_body("t", "", ade_enabled=True)),
            want_ade=True,
        )
        assert (info.ade_os_encrypted, info.ade_data_encrypted) == (True, False)
        assert info.encryption_settings == "kek-SECRET"
        assert "kek-SECRET" not in repr(info)
        host.script.presnapshot = Fault("not_json")
        answer = call(host, PRESNAPSHOT_PATH, build_presnapshot_body("t", "", ade_enabled=True))
        assert parse_presnapshot(answer, want_ade=True).code == 558
        assert parse_presnapshot(answer, want_ade=False).accepted  # non-ADE: a body is enough


@pytest.mark.parametrize(
    ("fault", "code", "accepted"),
    [
        (None, 200, True),
        (Fault("status", 201, b"{}"), 201, True),
        (Fault("empty"), 557, False),
        (Fault("status", 500, b""), 500, False),  # presnapshot's 556 is unreachable (§4.3)
        (Fault("status", 404, b"nope"), 404, False),
        (Fault("drop"), 555, False),
    ],
)
def test_presnapshot_outcome_codes(fault: Fault | None, code: int, accepted: bool) -> None:
    with HostService({}) as host:
        host.script.presnapshot = fault
        answer = call(host, PRESNAPSHOT_PATH, build_presnapshot_body("t", "", ade_enabled=False))
    info = parse_presnapshot(answer, want_ade=False)
    assert (info.code, info.accepted) == (code, accepted)


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        (Fault("status", 500, b""), 556),
        (Fault("status", 500, b"BHS down"), 556),
        (Fault("status", 500, b'{"error": "compact"}'), 556),
        (Fault("status", 500, b'{ "error": "spaced" }'), 500),
        (Fault("status", 503, b""), 503),
        (Fault("empty"), 557),
        (Fault("not_json"), 558),
        (Fault("drop"), 555),
    ],
)
def test_dosnapshot_outcome_codes(fault: Fault, code: int) -> None:
    with HostService({}) as host:
        host.script.dosnapshot = fault
        answer = call(host, DOSNAPSHOT_PATH, b'{"taskId": "t", "diskIds": [0]}', do=True)
    entries, outcome = parse_dosnapshot(answer)
    assert (entries, outcome) == ([], code)
    assert answer.sent


def test_refused_connection_is_555_and_nothing_sent() -> None:
    prepared = PreparedCall("127.0.0.1", free_port(), PRESNAPSHOT_PATH, b"{}")
    assert not prepared.connect(1.0)
    assert prepared.connect_error == "connect: ConnectionRefusedError"
    answer = prepared.send(1.0)
    assert (answer.code, answer.sent) == (555, False)
    assert answer.error == "connect: ConnectionRefusedError"


def test_a_hung_host_is_cut_at_the_deadline() -> None:
    with HostService({}) as host:
        host.script.dosnapshot = Fault("hang")
        started = time.monotonic()
        answer = call(host, DOSNAPSHOT_PATH, b"{}", deadline=0.8, do=True)
        elapsed = time.monotonic() - started
    assert (answer.code, answer.sent) == (555, True)
    assert answer.error == "answer: TimeoutError"
    assert 0.7 <= elapsed < 2.0


def test_a_dribbling_host_cannot_stretch_the_deadline() -> None:
    # The reference's 40 s is per socket operation; one byte every 0.2 s would
    # keep it waiting forever. Ours is one deadline for the whole exchange.
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()

    def dribble() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100:
                if stop.wait(0.2):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=dribble, daemon=True)
    thread.start()
    try:
        prepared = PreparedCall("127.0.0.1", port, DOSNAPSHOT_PATH, b"{}")
        assert prepared.connect(1.0)
        started = time.monotonic()
        answer = prepared.send(1.0, dosnapshot=True)
        assert time.monotonic() - started < 1.8
        assert (answer.code, answer.sent) == (555, True)
    finally:
        stop.set()
        server.close()
        thread.join(5)


def test_a_request_is_sent_at_most_once() -> None:
    with HostService({}) as host:
        prepared = PreparedCall("127.0.0.1", host.port, DOSNAPSHOT_PATH, b'{"taskId": "t"}')
        assert prepared.connect(1.0)
        first = prepared.send(2.0, dosnapshot=True)
        second = prepared.send(2.0, dosnapshot=True)
    assert first.code == 200
    assert (second.code, second.sent, second.error) == (555, False, "already sent")
    assert len(host.calls_of("dosnapshot")) == 1


def test_an_idle_connection_the_host_closed_is_reopened_before_sending() -> None:
    # Nothing was sent on the closed connection, so reopening is not a retry.
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    requests: list[bytes] = []

    def serve() -> None:
        first, _ = server.accept()
        first.close()  # the idle connection dies before the request
        conn, _ = server.accept()
        with conn:
            requests.append(conn.recv(65536))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        prepared = PreparedCall("127.0.0.1", port, DOSNAPSHOT_PATH, b'{"taskId": "t"}')
        assert prepared.connect(1.0)
        wait_until(lambda: _closed_by_peer(prepared), 5, "the host to close the idle connection")
        answer = prepared.send(3.0, dosnapshot=True)
    finally:
        thread.join(5)
        server.close()
    assert answer.code == 200
    assert len(requests) == 1 and requests[0].endswith(b'{"taskId": "t"}')


def _closed_by_peer(prepared: PreparedCall) -> bool:
    from snapshot_runtime.snapshot import wireserver

    sock = prepared._sock
    return sock is not None and wireserver._peer_closed(sock)


def test_no_proxy_even_when_the_environment_names_one(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with HostService({}) as host:
        answer = call(host, PRESNAPSHOT_PATH, build_presnapshot_body("t", "", ade_enabled=None))
    assert answer.code == 200


def test_dosnapshot_body_key_order_and_content() -> None:
    body = build_dosnapshot_body(
        task_id="t",
        disk_ids=[0, 1, -1],
        settings=[("isSnapshotTtlEnabled", False), ("isVmmdBlobIncluded", True)],
        token=TOKEN,
        metadata=[("BackupJob", "j")],
        instant_access_minutes=1440,
    )
    assert list(json.loads(body)) == [
        "taskId",
        "diskIds",
        "settings",
        "snapshotTaskToken",
        "snapshotMetadata",
        "instantAccessDurationMinutes",
    ]
    without = build_dosnapshot_body(
        task_id="t", disk_ids=[], settings=[], token="", metadata=[], instant_access_minutes=None
    )
    assert "instantAccessDurationMinutes" not in json.loads(without)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2021-07-31T10:07:37.659686Z", 1627726057659),  # the reference's verified example
        ("2021-07-31T10:07:37.6596865Z", 1627726057659),  # 7 digits: the reference drops it
        ("2021-07-31T10:07:37Z", 1627726057000),
        ("2021-07-31T10:07:37.5Z", 1627726057500),
        ("2021-07-31T10:07:37.65968651Z", None),
        ("2021-02-30T10:07:37Z", None),
        (12, None),
    ],
)
def test_creation_time(text: object, ms: int | None) -> None:
    assert parse_creation_time(text) == ms


def test_parse_dosnapshot_keeps_going_after_a_bad_entry() -> None:
    from snapshot_runtime.snapshot.wireserver import HostAnswer

    doc = {
        "snapshotInfo": [
            {"isSuccessful": "true", "snapshotUri": "u0", "errorMessage": None, "statusCode": 200},
            {"isSuccessful": "true", "snapshotUri": "u1"},  # missing keys
            {"isSuccessful": True, "snapshotUri": "u2", "errorMessage": None, "statusCode": 200},
            {
                "isSuccessful": "true",
                "snapshotUri": "u3",
                "errorMessage": None,
                "statusCode": 200,
                "ddSnapshotIdentifier": {
                    "creationTime": "2026-08-06T12:00:05.1234567Z",
                    "id": "dd",
                    "token": "DDTOKEN",
                },
            },
        ]
    }
    answer = HostAnswer(200, 200, json.dumps(doc).encode(), True, 0.1, None)
    entries, code = parse_dosnapshot(answer)
    assert code == 200
    assert entries[1] is None
    e0, e2, e3 = entries[0], entries[2], entries[3]
    assert e0 is not None and e0.ok
    assert e2 is not None and not e2.ok and e2.is_successful is True  # JSON true is not "true"
    assert e3 is not None and e3.dd is not None and e3.dd.creation_unix_ms == 1786017605123
    assert "DDTOKEN" not in repr(e3)


def test_wireserver_address(tmp_path: Path) -> None:
    missing = str(tmp_path / "none")
    assert wireserver_address({}, missing) == ("168.63.129.16", 80)
    assert wireserver_address({WIRESERVER_ENV: "127.0.0.1:8080"}, missing) == ("127.0.0.1", 8080)
    assert wireserver_address({WIRESERVER_ENV: "10.0.0.1"}, missing) == ("10.0.0.1", 80)
    cached = tmp_path / "WireServerEndpoint"
    cached.write_text("10.1.2.3\n")
    assert wireserver_address({}, str(cached)) == ("10.1.2.3", 80)
    cached.write_text("garbage")
    assert wireserver_address({}, str(cached)) == ("168.63.129.16", 80)
