"""Rows (g) of bench_streaming: one pass of the brainnet loader over a Zarr store read locally, from S3
and over HTTP, both served on 127.0.0.1, without cache and through brainprep's disk chunk cache (cold:
empty at the start of the pass; warm: the same pass again).

The S3 server is moto's server mode in a child process (``python -m moto.server``), so it does not share
the benchmark's GIL; its buckets also answer plain, unsigned HTTP GETs with Range support, which is the
HTTP server of the HTTP rows. Every row reads each valid slot once (no replacement), through the threads
backend with the same workers and batch size as (a2); ratios are against the local row of the same pass.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import Row, require, time_stream, touch

BUCKET = "bench"
ROW_LOCAL = "(g) one pass, local Zarr"
ROW_S3 = "(g) one pass, S3 on 127.0.0.1, no cache"
ROW_S3_COLD = "(g) one pass, S3 on 127.0.0.1, cold cache"
ROW_S3_WARM = "(g) one pass, S3 on 127.0.0.1, warm cache"
ROW_HTTP_COLD = "(g) one pass, HTTP on 127.0.0.1, cold cache"
ROW_HTTP_WARM = "(g) one pass, HTTP on 127.0.0.1, warm cache"
ROWS = (ROW_LOCAL, ROW_S3, ROW_S3_COLD, ROW_S3_WARM, ROW_HTTP_COLD, ROW_HTTP_WARM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in a child process on 127.0.0.1; yields its endpoint URL; stopped on exit."""
    require("moto.server")
    port = _free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline or child.poll() is not None:
                raise RuntimeError("moto server did not start")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        child.terminate()
        child.wait(timeout=30)


def upload(store: Path, endpoint: str) -> str:
    """Put every file of ``store`` into the bucket; returns the store's key prefix."""
    s3fs = require("s3fs")
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="bench", secret="bench")
    fs.mkdir(BUCKET)
    for path in sorted(store.rglob("*")):
        if path.is_file():
            key = f"{BUCKET}/{store.name}/{path.relative_to(store).as_posix()}"
            fs.pipe_file(key, path.read_bytes(), ACL="public-read")  # public: the HTTP rows read unsigned
    return f"{BUCKET}/{store.name}"


def one_pass(name: str, location: str, workers: int, batch_size: int, **open_options: Any) -> Row:
    """The threads loader over every valid slot of ``location`` once, shard-aware order."""
    data = require("brainnet.data")
    open_store = require("brainprep.store.reader", "open_store")
    store = open_store(location, **open_options)
    dataset = data.PatchDataset(store, data.split_slots(store, None))
    sampler = data.ShardShuffleSampler(dataset.shards, seed=0)
    loader = data.make_loader(dataset, sampler, batch_size=batch_size, workers=workers, backend="threads")
    n = len(dataset)
    result = time_stream(iter(loader), n - batch_size, warmup_batches=1, count=touch)
    store.close()
    return Row(
        name,
        result.rate,
        "patches/s",
        f"{n} slots once, batch {batch_size}, {workers} worker threads",
        {"patches": result.patches, "seconds": round(result.seconds, 3)},
    )


def remote_rows(store: Path, workers: int, batch_size: int) -> list[Row]:
    """Rows :data:`ROWS`, in that order; the cache of each protocol starts empty before its cold row."""
    rows = [one_pass(ROW_LOCAL, str(store), workers, batch_size)]
    cache_params = require("brainprep.store.chunk_cache", "ChunkCacheParams")
    options = {"endpoint_url": "", "key": "bench", "secret": "bench"}
    with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="brainprep-cache-") as cache_root:
        prefix = upload(store, endpoint)
        options["endpoint_url"] = endpoint
        s3, http = f"s3://{prefix}", f"{endpoint}/{prefix}"
        rows.append(one_pass(ROW_S3, s3, workers, batch_size, storage_options=options))
        for protocol, url, cold, warm, opts in (
            ("s3", s3, ROW_S3_COLD, ROW_S3_WARM, options),
            ("http", http, ROW_HTTP_COLD, ROW_HTTP_WARM, None),
        ):
            cache = cache_params(directory=os.path.join(cache_root, protocol), max_bytes=2**40)
            for row in (cold, warm):
                rows.append(one_pass(row, url, workers, batch_size, storage_options=opts, cache=cache))
    local = rows[0].value
    for row in rows[1:]:
        if local and row.value:
            row.note += f"; {row.value / local:.2f} of local"
    return rows
