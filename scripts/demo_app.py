"""The demo's live application: a SQLite writer that a pre-script can quiesce.

Runs from the demo on a loop filesystem. Every ~10 ms it commits one
transaction. When ``<dir>/quiesce.request`` appears it finishes the current
transaction, writes ``<dir>/quiesced`` with the last committed transaction id
and waits; when the request disappears it writes ``<dir>/resumed`` and goes
on. Stops when ``<dir>/stop`` appears.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time


def main(directory: str) -> int:
    db = sqlite3.connect(os.path.join(directory, "app.db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS txn (id INTEGER PRIMARY KEY, at REAL)")
    request = os.path.join(directory, "quiesce.request")
    quiesced = os.path.join(directory, "quiesced")
    resumed = os.path.join(directory, "resumed")
    stop = os.path.join(directory, "stop")
    paused = False
    last = 0
    while not os.path.exists(stop):
        if os.path.exists(request):
            if not paused:
                # Checkpoint so the database file alone is consistent in the snapshot.
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                with open(quiesced + ".tmp", "w") as fh:
                    fh.write(f"{last}\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(quiesced + ".tmp", quiesced)
                paused = True
            time.sleep(0.01)
            continue
        if paused:
            with open(resumed, "w") as fh:
                fh.write(f"{last}\n")
            paused = False
        db.execute("BEGIN")
        cur = db.execute("INSERT INTO txn (at) VALUES (?)", (time.time(),))
        db.execute("COMMIT")
        last = cur.lastrowid or last
        time.sleep(0.01)
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
