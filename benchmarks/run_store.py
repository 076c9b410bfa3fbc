"""What a run on object storage costs: the mirror's push and pull against s3fs copying the
same files, and the sync overhead of a command on an unchanged run.

A real S3-compatible server (moto's server mode, its own process on 127.0.0.1) holds the
bucket. The run is ``--parts`` score parts of ``--part-mb`` MB each (random bytes: Parquet
would not compress them either) with a completion record per part, plus run records, written
into a mirror folder, then measured side by side in one process:

* ``push``: ``RemoteRun.push`` of the whole run (ordered: data, records, run.json) against
  ``s3fs.put`` of the same folder (one call, s3fs's own concurrency);
* ``pull``: ``RemoteRun.pull`` into an empty mirror (another machine) against ``s3fs.get``;
* ``no-op``: push and pull again with nothing changed (what every command on a remote run
  pays: one listing, a stat per file);
* ``one part``: one part and its record rewritten, then pushed.

Usage::

    .venv/bin/python benchmarks/run_store.py [--parts 64] [--part-mb 4] [--json]

moto keeps objects in memory and is Python: its bandwidth is far below S3's or MinIO's, so
the ratios (ours / s3fs against the same server) are the figures, not the MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _paths  # noqa: F401  (repository root on sys.path)

BUCKET = "bench"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("moto server did not start") from None
            time.sleep(0.1)


def _write_run(root: Path, parts: int, part_bytes: int) -> int:
    (root / "pool").mkdir(parents=True)
    (root / "scores" / "dfn" / "_done").mkdir(parents=True)
    (root / "run.json").write_text("{}")
    (root / "scores" / "dfn" / "_scorer.json").write_text("{}")
    for i in range(parts):
        (root / "scores" / "dfn" / f"part-{i:05d}.parquet").write_bytes(os.urandom(part_bytes))
        (root / "pool" / f"part-{i:05d}.parquet").write_bytes(os.urandom(part_bytes // 4))
        (root / "scores" / "dfn" / "_done" / f"part-{i:05d}.json").write_text('{"ok": 1}')
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _timed(function) -> float:  # noqa: ANN001
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=int, default=64)
    parser.add_argument("--part-mb", type=float, default=4.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    server, endpoint = _start_server()
    work = Path(tempfile.mkdtemp(prefix="run-store-bench-"))
    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                       "AWS_EC2_METADATA_DISABLED": "true",
                       "FILTER_POOL_CACHE": str(work / "cache-a")})
    try:
        import s3fs

        from curate.io.run_store import RemoteRun

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        store = RemoteRun.of(f"s3://{BUCKET}/runs/ours")
        total = _write_run(store.mirror, args.parts, int(args.part_mb * 1e6))
        files = sum(1 for p in store.mirror.rglob("*") if p.is_file())
        figures: dict[str, float] = {"bytes": total, "files": files}
        figures["push_ours"] = _timed(store.push)
        figures["push_s3fs"] = _timed(lambda: fs.put(str(store.mirror), f"{BUCKET}/runs/plain",
                                                     recursive=True))
        other = RemoteRun(store.url, {}, work / "cache-b" / "mirror")
        figures["pull_ours"] = _timed(other.pull)
        figures["pull_s3fs"] = _timed(lambda: fs.get(f"{BUCKET}/runs/plain",
                                                     str(work / "plain-copy"), recursive=True))
        figures["noop_push"] = _timed(store.push)
        figures["noop_pull"] = _timed(store.pull)
        part = store.mirror / "scores" / "dfn" / "part-00000.parquet"
        part.write_bytes(os.urandom(int(args.part_mb * 1e6)))
        (store.mirror / "scores" / "dfn" / "_done" / "part-00000.json").write_text('{"ok": 2}')
        figures["one_part_push"] = _timed(store.push)
    finally:
        server.terminate()
        server.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    mb = figures["bytes"] / 1e6
    print(f"run: {figures['files']:.0f} files, {mb:.0f} MB (moto server on 127.0.0.1)")
    for step in ("push", "pull"):
        ours, plain = figures[f"{step}_ours"], figures[f"{step}_s3fs"]
        print(f"{step}: ours {ours:.2f} s ({mb / ours:.0f} MB/s), s3fs {plain:.2f} s "
              f"({mb / plain:.0f} MB/s): ours / s3fs {ours / plain:.2f}x")
    print(f"unchanged run: push {figures['noop_push'] * 1e3:.0f} ms, pull "
          f"{figures['noop_pull'] * 1e3:.0f} ms; one part rewritten: push "
          f"{figures['one_part_push'] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
