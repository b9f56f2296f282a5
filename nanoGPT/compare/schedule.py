"""Run a comparison's tasks (train the teacher, build a cache, train a run, evaluate a run) in
dependency order: in this process one after another (jobs=1), or in `jobs` worker processes at
once, each with one torch thread. On a small model two one-thread processes do more work per
second than one process with two threads (torch's intra-op threads gain little at this size and
collapse when another process competes for the cores)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Task:
    key: str
    fn: Callable[..., Any]  # a module-level function: it is sent to a worker process
    args: tuple = ()
    after: tuple[str, ...] = ()  # keys of the tasks whose results it needs


def _one_thread_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _ready(task: Task, done: dict[str, Any]) -> bool:
    return all(key in done for key in task.after)


def check_order(tasks: Sequence[Task]) -> None:
    """Every task only depends on tasks listed before it (so the serial order is valid)."""
    seen: set[str] = set()
    for task in tasks:
        missing = [key for key in task.after if key not in seen]
        if missing:
            raise ValueError(f"task {task.key} depends on {missing}, which are not listed before it")
        seen.add(task.key)


def run_tasks(tasks: Sequence[Task], jobs: int = 1, threads: int = 1) -> dict[str, Any]:
    """key -> result of every task. The first failure stops the rest and is raised."""
    check_order(tasks)
    if jobs <= 1:
        return {task.key: task.fn(*task.args) for task in tasks}
    results: dict[str, Any] = {}
    pending = list(tasks)
    running: dict[Future, str] = {}
    # spawn: a forked child would inherit torch's thread pools in whatever state they are in
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_one_thread_worker, initargs=(threads,)
    ) as pool:
        while pending or running:
            for task in [t for t in pending if _ready(t, results)][: jobs - len(running)]:
                running[pool.submit(task.fn, *task.args)] = task.key
                pending.remove(task)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                try:
                    results[key] = future.result()
                except BaseException:
                    for other in running:
                        other.cancel()
                    raise
    return results
