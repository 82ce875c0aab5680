"""Races between spawned processes: every process starts at one barrier, each puts one result.

A spawn target is called as ``target(*args, barrier, results)``: it waits at ``barrier`` (shared by
every process of the race) and puts exactly one value on ``results``. Targets must be importable
module-level functions, since ``spawn`` starts a fresh interpreter.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Race:
    """What each process put on the queue (in arrival order) and each process's exit code."""

    outcomes: list[Any]
    exitcodes: list[int | None]


def race(
    target: Callable[..., None],
    args_per_process: Sequence[tuple[Any, ...]],
    *,
    timeout: float = 120,
    join_timeout: float = 60,
) -> Race:
    """Start one spawned process per entry of ``args_per_process`` at a shared barrier.

    Args:
        target: module-level function called as ``target(*args, barrier, results)``.
        args_per_process: the leading arguments of each process; its length is the process count.
        timeout: seconds to wait for each process's result.
        join_timeout: seconds to wait for each process to exit once every result arrived.

    Returns:
        The results in arrival order and the exit codes in process order.
    """
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(len(args_per_process)), context.Queue()
    workers = [
        context.Process(target=target, args=(*args, barrier, results)) for args in args_per_process
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=timeout) for _ in workers]
    for worker in workers:
        worker.join(timeout=join_timeout)
    return Race(outcomes, [worker.exitcode for worker in workers])
