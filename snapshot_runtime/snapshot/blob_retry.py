"""Bounded, counted retries of one blob request.

``BlobPolicy`` (blob_policy.py) bounds them. ``call_with_retries``
runs ``op(budget)`` until it succeeds, fails for good, or time runs out, and
returns an ``Attempt`` (a value, or the last ``BlobFailure``): it never
raises for an exception its ``Classifier`` translates (``blob_errors.SDK_ERRORS``
for the SDK's requests, ``blob_rules.WIRE_ERRORS`` for blob_wire's), does no I/O
besides ``op``, and blocks the calling thread for the attempts plus the
backoff between them (``backoff_delay``, pure: doubling from
``backoff_seconds``, twice that when throttled). ``stop`` cuts a backoff
short; no backoff is started that would end past ``deadline``. Imports no
SDK itself: the SDK-free guest path retries through it (docs/startup.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from snapshot_runtime.core.redact import scrub
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from snapshot_runtime.snapshot.blob_rules import Classifier
from snapshot_runtime.snapshot.failures import BlobFailure

__all__ = ["Attempt", "backoff_delay", "call_with_retries"]

T = TypeVar("T")


@dataclass(frozen=True)
class Attempt(Generic[T]):
    """The outcome of ``call_with_retries``: a value, or the last failure."""

    value: T | None
    attempts: int
    failure: BlobFailure | None

    @property
    def ok(self) -> bool:
        return self.failure is None


def backoff_delay(policy: BlobPolicy, attempt: int, failure: BlobFailure) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based). Pure."""
    base = policy.backoff_seconds * (2.0 if failure.kind == "throttled" else 1.0)
    return float(base * 2 ** max(0, attempt - 1))


def call_with_retries(
    op: Callable[[float], T],
    *,
    errors: Classifier,
    policy: BlobPolicy,
    redact: Callable[[str], str] = scrub,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    stop: threading.Event | None = None,
) -> Attempt[T]:
    """Run ``op(budget)`` until it succeeds, fails for good, or time runs out.

    ``budget`` is the read timeout to use for this attempt: the policy's, cut
    to what is left before ``deadline`` (a ``clock()`` value). Retries only
    retryable failures, at most ``policy.retries`` times, and never starts a
    backoff that would end past the deadline. ``stop`` cuts a backoff short.
    Does no I/O besides ``op``, and never raises for the exceptions ``errors``
    translates (it classifies them).
    """
    attempts = 0
    failure: BlobFailure | None = None
    while True:
        budget = policy.request_timeout
        if deadline is not None:
            budget = min(budget, deadline - clock())
        if budget <= 0 or (stop is not None and stop.is_set()):
            if failure is None:
                failure = BlobFailure("timeout", None, None, True, "timeout: deadline reached")
            break
        attempts += 1
        try:
            return Attempt(op(budget), attempts, None)
        except errors.translated as exc:
            failure = errors.classify(exc, redact)
        if not failure.retryable or attempts > policy.retries:
            break
        delay = backoff_delay(policy, attempts, failure)
        if deadline is not None and clock() + delay >= deadline:
            break
        if stop is not None:
            if stop.wait(delay):
                break
        else:
            time.sleep(delay)
    return Attempt(None, attempts, failure)
