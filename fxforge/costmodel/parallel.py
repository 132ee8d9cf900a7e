"""Running profiling jobs in parallel: local processes, or a Ray cluster (`ray="auto"` or an address).

    rows = run_jobs(profile_job, jobs, workers=2)              # local processes (spawn)
    rows = run_jobs(profile_job, jobs, ray="auto")             # a local Ray cluster, or the one at an address

Decisions:
- Each job is independent (one model x scheme x input), so the results are concatenated in job order.
- Ray is optional (the `ray` extra) and imported only when asked for. `ray="auto"` starts a local cluster
  (or joins the one RAY_ADDRESS names). An address is first probed with a TCP connect under a timeout, so
  an unreachable cluster is a ConfigError naming the address, never a hang; `ray.init` itself runs in the
  calling thread (run in a worker thread, Ray's GCS client lost its server within a minute, measured).
- `workers=1` runs the jobs in this process (tests, debugging).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

from fxforge.errors import ConfigError

RAY_CONNECT_TIMEOUT = 30.0


def _ray_connect(address: str, timeout: float) -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'fxforge[ray]' (ray==2.60.0), or drop --ray to use "
                          "local processes") from None
    if ray.is_initialized():
        return ray
    if address != "auto":
        _probe(address, timeout)
    try:
        ray.init(include_dashboard=False, log_to_driver=False, **({} if address == "auto" else {"address": address}))
    except Exception as e:
        raise ConfigError(f"cannot connect to the Ray cluster at {address!r}: {type(e).__name__}: {e}") from None
    return ray


def _probe(address: str, timeout: float) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address {address!r} is not 'auto' or HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address!r} within {timeout:.0f} s ({e}); check the "
                          "address (ray status on the head node) or drop --ray") from None


def parallelism(workers: int, ray: str | None = None, timeout: float = RAY_CONNECT_TIMEOUT) -> int:
    """How many jobs run at once: `workers`, or the Ray cluster's CPUs (connecting to it)."""
    if not ray:
        return max(1, workers)
    return max(1, int(_ray_connect(ray, timeout).cluster_resources().get("CPU", 1)))


def run_jobs(fn: Callable[[Any], list], jobs: Sequence[Any], *, workers: int = 2, ray: str | None = None,
             timeout: float = RAY_CONNECT_TIMEOUT, flat: bool = True) -> list:
    """Run `fn(job)` for every job; the results in job order (`flat`: concatenated)."""
    results = _run(fn, jobs, workers, ray, timeout)
    return [row for rows in results for row in rows] if flat else results


def _run(fn: Callable[[Any], list], jobs: Sequence[Any], workers: int, ray: str | None, timeout: float) -> list[list]:
    if ray:
        rt = _ray_connect(ray, timeout)
        remote = rt.remote(fn)
        return list(rt.get([remote.remote(job) for job in jobs]))
    if workers <= 1 or len(jobs) <= 1:
        return [fn(job) for job in jobs]
    ctx = multiprocessing.get_context("spawn")
    results: list[list] = [[] for _ in jobs]
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        futures = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            results[futures[future]] = future.result()
            print(f"fxforge costmodel: {fn.__name__} {done}/{len(jobs)} done", file=sys.stderr, flush=True)
    return results
