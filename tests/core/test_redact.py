"""Redaction (I5): the forms a SAS signature takes, and "redact before you truncate"."""

from __future__ import annotations

import base64
import os
import re
from urllib.parse import quote, unquote

import pytest
from azure.core.exceptions import HttpResponseError

from snapshot_runtime.core.redact import (
    REDACTED,
    Redactor,
    drop_partial_run,
    redact_then_keep_tail,
    redact_then_truncate,
    scrub,
)
from snapshot_runtime.scripts.output_capture import render_excerpt
from snapshot_runtime.snapshot.blob_errors import classify
from snapshot_runtime.snapshot.blob_rules import sas_redactor
from snapshot_runtime.snapshot.failures import MAX_MESSAGE


def _sig() -> str:
    while True:
        value = base64.b64encode(os.urandom(32)).decode()
        # Two escaped characters in a row ("//" -> "%252F%252F" twice encoded) make
        # 8-character fragments that also occur in the URL's own "https://": a
        # signature that shares fragments with non-secret text cannot be searched for.
        if "/" in value and "+" in value and not re.search(r"[/+=]{2}", value):
            return value


def _fragments(secret: str, length: int = 8) -> set[str]:
    forms = {secret, quote(secret, safe=""), quote(quote(secret, safe=""), safe="")}
    return {f[i : i + length] for f in forms for i in range(len(f) - length + 1)}


def _leaked(text: str, secret: str) -> list[str]:
    return sorted(p for p in _fragments(secret) if p in text)


SIG = _sig()
ENC = quote(SIG, safe="")
URL = f"https://acct.blob.core.windows.net/c/disk.vhd?sv=2021-08-06&sp=r&sig={ENC}&se=x"


@pytest.mark.parametrize(
    "text",
    [
        URL,
        URL.replace("sig=", "SIG="),
        URL.replace("sig=", "Sig="),
        URL.replace("&se=x", f"&sig={ENC}"),  # sig twice in one URL
        unquote(URL),  # decoded: / + = inside the value
        quote(URL, safe=""),  # a URL inside a URL: %26sig%3D, %252F inside
        quote(quote(URL, safe=""), safe=""),  # twice: %2526sig%253D
        URL.replace("/", "\\/"),  # JSON's escaped slash
        f'{{"sig": "{SIG}", "sp": "r"}}',
        f"sig&#61;{ENC}&sp=r",
        f"sig\\u003d{ENC}",
        f"https://x/y?sas_sig={ENC}",
        quote(f"https://x/y?sig={ENC}", safe=""),  # %3Fsig%3D
    ],
    ids=[
        "raw",
        "upper",
        "mixed-case",
        "twice",
        "decoded",
        "nested",
        "nested-twice",
        "json-slash",
        "json-key",
        "html-entity",
        "json-escape",
        "prefixed-key",
        "nested-first-param",
    ],
)
def test_scrub_removes_every_form_of_a_signature(text: str) -> None:
    clean = scrub(text)
    assert REDACTED in clean
    assert _leaked(clean, SIG) == []


def test_scrub_leaves_words_that_merely_contain_sig() -> None:
    text = "design=ok assign=me signature ok consign:x"
    assert scrub(text) == text


def test_connection_string_secrets_in_every_separator() -> None:
    key = base64.b64encode(os.urandom(64)).decode()
    for text in (
        f"AccountName=a;AccountKey={key};EndpointSuffix=x",
        quote(f"AccountName=a;AccountKey={key};EndpointSuffix=x", safe=""),
        f'{{"AccountKey": "{key}"}}',
    ):
        assert _leaked(scrub(text), key) == [], text


def test_redactor_knows_the_encoded_forms_of_a_value() -> None:
    secret = _sig()
    redact = Redactor([secret])
    for form in (secret, quote(secret, safe=""), quote(quote(secret, safe=""), safe="")):
        assert _leaked(redact(f"value [{form}] here"), secret) == [], form
    assert _leaked(redact(secret.replace("/", "\\/")), secret) == []


def test_redact_then_truncate_removes_a_value_only_known_whole() -> None:
    # A bare signature (no sig= key a pattern could see), cut by the limit:
    # cutting first leaves a fragment no redactor recognises.
    secret = _sig()
    redact = Redactor([secret])
    text = "x" * 270 + f" signature {secret} " + "y" * 100  # a cut at 297 keeps 16 chars
    cut_first = redact(text[:297] + "...")
    assert _leaked(cut_first, secret) != []  # the defect, shown
    out = redact_then_truncate(text, 300, redact)
    assert len(out) <= 300 and out.endswith("...")
    assert _leaked(out, secret) == []


def test_truncation_drops_an_unknown_secret_like_run_at_the_cut() -> None:
    unknown = base64.b64encode(os.urandom(48)).decode()  # no redactor knows it
    out = redact_then_truncate("error: token " + unknown, 40)
    assert out == "error: token ..."
    # Words are cut too, but text before the run is kept.
    assert redact_then_truncate("hello world, how are you", 15) == "hello world,..."
    assert redact_then_truncate("short", 300) == "short"


def test_keep_tail_drops_the_end_of_a_signature_at_the_cut() -> None:
    secret = _sig()
    text = f"trace: url?sig={quote(secret, safe='')}&sp=r next line\nlast line"
    # A tail that starts inside the value: only the value's END is kept.
    start = text.index("sig=") + 20
    out = redact_then_keep_tail(text, len(text) - start + 3, lambda t: t)  # no redaction
    assert out.startswith("...&sp=r")
    assert _leaked(out, secret) == []


def test_drop_partial_run_is_bounded() -> None:
    assert drop_partial_run("a" * 5000, at_end=True, longest=1024) == "a" * 3976
    assert drop_partial_run("a" * 5000, at_end=False, longest=1024) == "a" * 3976
    assert drop_partial_run("ok, abc", at_end=True) == "ok, "
    assert drop_partial_run("abc, ok", at_end=False) == ", ok"


def test_script_excerpt_drops_both_halves_of_a_signature_at_the_seam() -> None:
    secret = _sig()
    line = f"curl https://a/b?sp=r&sig={quote(secret, safe='')}&se=x done".encode()
    seam = line.index(b"sig=") + 30
    head, tail = line[:seam], line[seam:]
    text = render_excerpt(head, tail, omitted=1000)
    assert "bytes omitted" in text
    assert text.startswith("curl https://a/b?sp=r&") and text.endswith("&se=x done")
    assert _leaked(text, secret) == []


def test_classify_redacts_before_it_cuts() -> None:
    secret = _sig()
    url = f"https://acct.blob.core.windows.net/c/d.vhd?sv=1&sig={quote(secret, safe='')}"
    for echoed in (
        "x" * 250 + f" URI {quote(url, safe='')}",  # nested: %26sig%3D
        "x" * 250 + f" signature {secret}",  # bare: only the exact value knows it
    ):
        exc = HttpResponseError(message=echoed)
        failure = classify(exc, sas_redactor(url))
        assert len(echoed) > MAX_MESSAGE
        assert _leaked(failure.message, secret) == [], failure.message
