"""Worker threads for kernels made of many small blocks (the row-wise cubic kernels).

Why: a block-wise kernel issues thousands of cache-sized torch ops per call. With torch's own
intra-op parallelism every op is an OpenMP parallel region whose end is a barrier; on a shared,
oversubscribed machine a barrier waits for a descheduled thread for a scheduler tick, and the
kernel slows down by one to two orders of magnitude (measured: ``x1*x2*x3`` forward, n = 256,
b*h = 4, 2 threads, load ~5 on 2 cores: 21.8 s with OpenMP ops vs 0.53 s with two single-threaded
workers; 0.20 s with one thread and no load). So the blocks are split into independent parts
(heads, else query-row ranges: the planner's blocks are unchanged) and each part runs on its own
Python thread whose torch ops are single-threaded: no barriers, each core keeps its blocks in its
own L2, and the GIL is released inside every op.

The number of workers is the calling thread's ``torch.get_num_threads()`` (so ``torch.set_num_threads(1)``
keeps everything on the calling thread). Worker threads are created once per process and count;
their single-thread setting is thread-local (OpenMP ICV, ``mkl_set_num_threads_local``); the
process-wide default that ``torch.set_num_threads`` also records is restored right after they start.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from .common import under_functorch

__all__ = ["workers", "run_parts"]

T = TypeVar("T")

_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def workers() -> int:
    """Threads available to a kernel called from this thread."""
    return max(1, torch.get_num_threads())


def _pool(n: int) -> ThreadPoolExecutor:
    key = (os.getpid(), n)  # a forked child starts without the parent's threads
    with _LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            prev = torch.get_num_threads()
            ready = threading.Barrier(n + 1)

            def init() -> None:
                torch.get_num_threads()  # the thread's lazy torch init first: it would undo the next line
                torch.set_num_threads(1)
                ready.wait()

            pool = ThreadPoolExecutor(n, thread_name_prefix="polyattn-kernel", initializer=init)
            started = [pool.submit(lambda: None) for _ in range(n)]
            ready.wait()
            for f in started:
                f.result()
            torch.set_num_threads(prev)  # the workers' call also set the process default; restore it
            _POOLS[key] = pool
    return pool


def run_parts(fn: Callable[..., T], parts: Sequence[tuple[Any, ...]]) -> list[T]:
    """``[fn(*p) for p in parts]``, on the worker threads unless this thread has only one.

    A single part also goes to a worker: its many small ops then run single-threaded instead of
    as parallel regions that each wait at a barrier (measured: ``x1*x2*x3`` at n = 48, b*h = 2,
    under load: 0.10 s inline vs ~1 ms on a worker). ``fn`` must be thread-safe on its part
    (disjoint outputs) and set its own grad mode: worker threads start with autograd enabled.
    """
    if workers() <= 1 or under_functorch():
        return [fn(*p) for p in parts]
    pool = _pool(workers())
    futures = [pool.submit(fn, *p) for p in parts]
    return [f.result() for f in futures]
