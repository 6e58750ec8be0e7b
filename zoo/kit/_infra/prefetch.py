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


def ahead(tasks: Iterable[Callable[[], T]], *, depth: int = 2, workers: int = 1,
          costs: Iterable[int] | None = None, budget: int | None = None) -> Iterator[T]:
    """Yield each task's result in order; at most ``depth`` tasks are submitted and not yet consumed.

    With ``costs`` (one number per task, e.g. the bytes it reads) and ``budget``, the submitted and
    not yet consumed tasks also cost at most ``budget`` together (one task is always allowed in flight,
    however large). A task's exception is raised in the consumer. A consumer that stops early (break,
    exception) cancels what has not started and waits for what has.
    """
    depth = max(1, depth)
    cost_of = iter(costs) if costs is not None else None
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="zoo-prefetch") as pool:
        pending: deque = deque()  # (future, cost)
        held = 0
        try:
            for task in tasks:
                cost = next(cost_of) if cost_of is not None else 0
                while pending and (len(pending) >= depth or (budget is not None and held + cost > budget)):
                    future, c = pending.popleft()
                    held -= c
                    yield future.result()
                pending.append((pool.submit(task), cost))
                held += cost
            while pending:
                yield pending.popleft()[0].result()
        finally:
            for future, _ in pending:
                future.cancel()
