"""Span attributes under an attribute length limit: redacted first, then cut by us.

With ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` set, the OpenTelemetry SDK cuts a
string blindly at the limit; a signature cut there is no longer recognised.
``JobTracer`` cuts every string itself first (``redact_then_truncate``), so the
SDK never has to, and a secret-like run at the cut is dropped.
"""

from __future__ import annotations

import base64
import os
from urllib.parse import quote

import pytest

from snapshot_runtime.core.redact import scrub
from snapshot_runtime.telemetry.tracing import JobTracer, build_resource


def _fragments(secret: str, length: int = 8) -> set[str]:
    forms = {secret, quote(secret, safe="")}
    return {f[i : i + length] for f in forms for i in range(len(f) - length + 1)}


@pytest.mark.parametrize(
    "variable", ["OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT"]
)
def test_attribute_limit_cuts_after_redaction(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "60")
    sig = base64.b64encode(os.urandom(32)).decode()
    unknown = base64.b64encode(os.urandom(48)).decode()  # a token no pattern knows
    tracer = JobTracer(resource=build_resource(redact=scrub))
    root = tracer.start_root(
        "vmsnap.job",
        task_id="limit_1",
        start_ns=1,
        attributes={
            # A signature whose "sig=" would be cut off by a blind cut at 60.
            "a.url": "x" * 40 + f" see https://h/c/b?sv=1&sig={quote(sig, safe='')}",
            "a.token": "y" * 45 + f" token {unknown}",
            "a.list": ["z" * 50 + f" {unknown}"],
            "a.short": "fine",
            "a.int": 7,
        },
    )
    tracer.end(root, end_ns=2, attributes={"b.late": "w" * 55 + f" {unknown}"})
    (span,) = tracer.finished()
    attrs = dict(span.attributes or {})
    assert attrs["a.short"] == "fine" and attrs["a.int"] == 7
    for key in ("a.url", "a.token", "b.late"):
        value = attrs[key]
        assert isinstance(value, str) and len(value) <= 60 and value.endswith("..."), value
    assert attrs["a.token"] == "y" * 45 + " token ..."
    text = repr(attrs)
    assert [p for p in _fragments(sig) | _fragments(unknown) if p in text] == []


def test_no_limit_leaves_values_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", raising=False)
    monkeypatch.delenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", raising=False)
    tracer = JobTracer(resource=build_resource(redact=scrub))
    long = "v" * 5000
    root = tracer.start_root("vmsnap.job", task_id="nolimit_1", start_ns=1, attributes={"k": long})
    tracer.end(root, end_ns=2)
    (span,) = tracer.finished()
    assert (span.attributes or {})["k"] == long
