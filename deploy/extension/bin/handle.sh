#!/bin/sh
# Entry point named by HandlerManifest.json. The guest agent runs it from the
# handler directory (where HandlerEnvironment.json is) with
# ConfigSequenceNumber in the environment: find the runtime's Python and hand
# over. Nothing secret passes through here.
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")/.." && pwd)
for py in "$here/venv/bin/python" /opt/snapshot-runtime/.venv/bin/python; do
    if [ -x "$py" ]; then
        exec "$py" -m snapshot_runtime.handler "$@" --handler-dir "$here"
    fi
done
echo "snapshot-runtime: no Python with snapshot_runtime in $here/venv or /opt/snapshot-runtime/.venv" >&2
exit 3
