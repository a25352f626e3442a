"""Bounded capture of a script's stdout and stderr: head and tail, the rest counted.

Both pipes are drained concurrently by the caller's loop (``OutputCapture.read``
on readiness, non-blocking). Per stream, at most ``limit`` bytes of head and
``limit`` bytes of tail are kept; the rest is only counted
(``OutputCapture.output_bytes`` is the true total of both streams, all
attempts). When bytes are omitted, the head and tail are cut to whole lines
(when they hold a line break) so that no secret is left half-visible, and
joined with ``…[N bytes omitted]…``; a single long line has the secret-like
run (base64, percent escapes) at each side of the seam dropped, since the
tail may start with the END of a signature. Attempts after the first are
separated by a ``--- attempt N ---`` line. Text is decoded with ``errors="replace"``;
redaction is the caller's.

Memory is bounded by ``2 * limit`` per stream plus one read buffer
(256 KiB), whatever the script prints. Not thread-safe; never raises for a
closed or failing pipe (that is EOF). ``render_excerpt`` is pure.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from snapshot_runtime.core.redact import drop_partial_run

__all__ = ["OutputCapture", "OutputExcerpt", "render_excerpt"]

_READ_BYTES = 256 * 1024
_PIPE_BYTES = 1024 * 1024


def render_excerpt(head: bytes, tail: bytes, omitted: int) -> str:
    """Decode head/tail; when bytes are omitted, cut both to whole lines."""
    if omitted == 0:
        return (head + tail).decode("utf-8", "replace")
    # A secret cut in two by the omission would be unrecognisable to the
    # redactor; dropping the partial lines at the seam removes both halves.
    cut = head.rfind(b"\n") + 1
    if cut:
        omitted += len(head) - cut
        head = head[:cut]
    cut = tail.find(b"\n") + 1
    if cut:
        omitted += cut
        tail = tail[cut:]
    head_text = head.decode("utf-8", "replace")
    tail_text = tail.decode("utf-8", "replace")
    # One long line (no line break to cut at): drop the secret-like run the
    # seam goes through. The tail's first run may be the END of a signature,
    # which no pattern recognises.
    if not cut and tail_text:
        kept = drop_partial_run(tail_text, at_end=False)
        omitted += len(tail) - len(kept.encode("utf-8", "replace"))
        tail_text = kept
    if head_text and not head_text.endswith("\n"):
        kept = drop_partial_run(head_text, at_end=True)
        omitted += len(head) - len(kept.encode("utf-8", "replace"))
        head_text = kept
    return head_text + f"…[{omitted} bytes omitted]…" + tail_text


class OutputExcerpt:
    """Head and tail of one stream, bounded; the middle is only counted."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head = bytearray()
        self.tail = bytearray()
        self.seen = 0
        self.last = b"\n"

    def feed(self, data: bytes | memoryview) -> None:
        if not data:
            return
        self.seen += len(data)
        self.last = bytes(data[-1:])
        room = self.limit - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.limit:
                del self.tail[: len(self.tail) - self.limit]

    def mark(self, text: str) -> None:
        if self.seen:
            self.feed(("" if self.last == b"\n" else "\n").encode() + text.encode())

    def render(self) -> str:
        return render_excerpt(
            bytes(self.head), bytes(self.tail), self.seen - len(self.head) - len(self.tail)
        )


class OutputCapture:
    """Both streams of one script run (all its attempts), read from pipe fds."""

    def __init__(self, limit: int) -> None:
        self.stdout = OutputExcerpt(limit)
        self.stderr = OutputExcerpt(limit)
        self.output_bytes = 0
        self.buf = bytearray(_READ_BYTES)
        self.streams: dict[int, OutputExcerpt] = {}  # the pipes still open

    def mark_attempt(self, n: int) -> None:
        """Separate attempt ``n``'s output from what came before."""
        for excerpt in (self.stdout, self.stderr):
            excerpt.mark(f"--- attempt {n} ---\n")

    def attach(self, stdout_fd: int, stderr_fd: int) -> dict[int, OutputExcerpt]:
        """Make one attempt's pipes non-blocking and start reading them."""
        self.streams = {}
        for fd, excerpt in ((stdout_fd, self.stdout), (stderr_fd, self.stderr)):
            os.set_blocking(fd, False)
            with contextlib.suppress(OSError):  # fewer wake-ups for chatty scripts
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
            self.streams[fd] = excerpt
        return dict(self.streams)

    def read(self, fd: int) -> bool:
        """Read one chunk; False at EOF."""
        try:
            count = os.readv(fd, [self.buf])
        except BlockingIOError:
            return True
        except OSError:
            return False
        if count == 0:
            return False
        self.streams[fd].feed(memoryview(self.buf)[:count])
        self.output_bytes += count
        return True
