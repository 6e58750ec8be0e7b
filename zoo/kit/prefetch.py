"""Run tasks on background threads, a bounded number ahead of their consumer, in order.

Reading and hashing member files is I/O plus hashlib, both of which release the GIL, as
does torch's arithmetic: worker threads keep the disk and the hash busy while the main
thread adds. ``depth`` bounds what is in flight, and therefore the memory it costs.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")


def ahead(tasks: Iterable[Callable[[], T]], *, depth: int = 2, workers: int = 1) -> Iterator[T]:
    """Yield each task's result in order; at most ``depth`` tasks are submitted and not yet consumed.

    A task's exception is raised in the consumer. A consumer that stops early (break,
    exception) cancels what has not started and waits for what has.
    """
    depth = max(1, depth)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="zoo-prefetch") as pool:
        pending: deque = deque()
        try:
            for task in tasks:
                pending.append(pool.submit(task))
                if len(pending) >= depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
