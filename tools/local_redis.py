"""The command line of a throwaway redis-server on loopback, for tests and benchmarks.

One place for it, so the single server and the cluster nodes the suite and ``make bench`` start
agree: no persistence (every run starts empty), data files in a directory of the caller's.
"""

from __future__ import annotations

from pathlib import Path


def redis_server_argv(
    port: int,
    workdir: Path,
    *,
    binary: str = "redis-server",
    cluster: bool = False,
    node_timeout_ms: int | None = None,
) -> list[str]:
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port)]
    if cluster:
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        if node_timeout_ms is not None:
            argv += ["--cluster-node-timeout", str(node_timeout_ms)]
    return argv + ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
