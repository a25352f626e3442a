"""Log mirroring throughput to Azurite, against raw uploads of the same bytes.

One job with a large log (default 32 MiB of ~200-byte JSON lines) is mirrored
by the sidecar's ``LogMirror`` with its default ``MirrorConfig`` (append blob,
appends guarded by ``appendpos_condition``, the state committed after every
append), with ``--latency`` (50 ms) added to every storage request by a TCP
delay proxy in front of Azurite (benchmarks/_delay_proxy.py). Baselines, same
bytes, same proxy, same run:

* ``upload_blob``: one block-blob upload (the SDK's own chunking);
* ``append_block``: a bare loop of 4 MiB ``append_block`` calls, no
  condition, no state, no line handling (one 4 MiB append per round trip:
  what the mirror did before issue 15).

Prints min/median/max MB/s and ratios, and a ``VERDICT`` line (goal, issue
15: mirror >= 50 MB/s per blob with 50 ms latency). No assertions.
Run: ``.venv/bin/python -m benchmarks.sidecar_mirror [--mib N] [--rounds N] [--latency S]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from azure.storage.blob import BlobClient
from snapshot_sidecar.keys import Keys
from snapshot_sidecar.mirror import LogMirror, MirrorConfig
from snapshot_sidecar.spool_reader import SpoolReader
from snapshot_sidecar.state import Ledger

from benchmarks._delay_proxy import delay_proxy
from benchmarks._verdict import verdict
from snapshot_runtime.snapshot.blob_policy import BlobPolicy
from tests.support.azurite import Azurite, run_azurite
from tests.support.spoolgen import SpoolGen

BLOCK = 4 * 1024 * 1024


def _mirror_once(azurite: Azurite, endpoint: str, root: Path, log: bytes) -> float:
    spool, state = root / "spool", root / "state"
    keys = Keys.load_or_create(state)
    keys.publish(spool)
    gen = SpoolGen(spool)
    job = gen.job(f"bench-{uuid.uuid4().hex[:8]}")
    job.log_path.write_bytes(log)
    container = azurite.container()
    gen.seal_logs_url(job, azurite.sas_url(container, "mirror.log", endpoint=endpoint))
    reader, ledger = SpoolReader(spool), Ledger(state)
    with ledger.transaction() as st:
        st.job(job.name, now=time.time()).complete = True
    policy = BlobPolicy(request_timeout=60, connect_timeout=5, retries=3, backoff_seconds=0.2)
    mirror = LogMirror(reader, ledger, keys, MirrorConfig(policy=policy))  # default batch
    start = time.perf_counter()
    mirror.step()
    took = time.perf_counter() - start
    mirror.close()
    assert ledger.state.jobs[job.name].log.offset == len(log), "mirror incomplete"
    blob = azurite.service().get_blob_client(container, "mirror.log")
    assert blob.get_blob_properties().size == len(log)
    blob.delete_blob()  # Azurite keeps blobs in memory (512 MB cap)
    return took


def _client(azurite: Azurite, endpoint: str, name: str) -> BlobClient:
    return BlobClient.from_blob_url(azurite.sas_url(azurite.container(), name, endpoint=endpoint))


def _upload_blob(azurite: Azurite, endpoint: str, data: bytes) -> float:
    blob = _client(azurite, endpoint, "upload.log")
    start = time.perf_counter()
    blob.upload_blob(data, blob_type="BlockBlob", overwrite=True, max_concurrency=1)
    took = time.perf_counter() - start
    blob.delete_blob()
    return took


def _append_loop(azurite: Azurite, endpoint: str, data: bytes) -> float:
    blob = _client(azurite, endpoint, "append.log")
    blob.create_append_blob()
    start = time.perf_counter()
    for pos in range(0, len(data), BLOCK):
        blob.append_block(data[pos : pos + BLOCK])
    took = time.perf_counter() - start
    blob.delete_blob()
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=32)  # Azurite holds 512 MB in memory
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mirror-bench-"))
    try:
        gen_root = root / "gen"
        gen = SpoolGen(gen_root / "spool")
        job = gen.job("source")
        lines = max(1, args.mib * 1024 * 1024 // 200)
        log = gen.log_lines(job, lines, size=200)
        mb = len(log) / 1e6
        print(
            f"log mirroring to Azurite through a {args.latency * 1000:g} ms delay proxy: "
            f"{mb:.1f} MB, {lines} lines, {args.rounds} rounds; default MirrorConfig "
            f"(max_batch {MirrorConfig().max_batch // 2**20} MiB)"
        )
        with run_azurite() as azurite, delay_proxy(azurite.port, args.latency) as port:
            endpoint = f"http://127.0.0.1:{port}/devstoreaccount1"
            results: dict[str, list[float]] = {"mirror": [], "upload_blob": [], "append_block": []}
            # Warm-up, not counted: Azurite's first large requests are several times slower.
            _mirror_once(azurite, endpoint, root / "warm", log)
            for n in range(args.rounds):
                results["mirror"].append(_mirror_once(azurite, endpoint, root / f"r{n}", log))
                results["upload_blob"].append(_upload_blob(azurite, endpoint, log))
                results["append_block"].append(_append_loop(azurite, endpoint, log))
        rates = {k: mb / statistics.median(v) for k, v in results.items()}
        for name, rate in rates.items():
            each = sorted(mb / t for t in results[name])
            print(
                f"  {name:13s} min {each[0]:6.1f} / median {rate:6.1f} / max {each[-1]:6.1f} MB/s"
            )
        print(
            f"  ratios: mirror/upload_blob {rates['mirror'] / rates['upload_blob']:.2f}, "
            f"mirror/append_block (4 MiB) {rates['mirror'] / rates['append_block']:.2f}"
        )
        verdict("log mirroring per blob, median", rates["mirror"], 50.0, "MB/s", at_least=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
