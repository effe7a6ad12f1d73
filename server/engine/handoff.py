"""Answers from the inference thread to the event loops that wait for them: one wake-up per loop
per batch, not one per request.

Each ``call_soon_threadsafe`` writes the loop's self-pipe and wakes its thread. On a core shared
by both threads the woken loop (the worker runs nicer) preempts the worker at once, so answering
a batch of 8 request by request switched threads up to 8 times, each switch evicting the batch's
working set from the caches. One hand-off settles the whole batch (BENCHMARKS.md, "Saturation").
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

__all__ = ["LoopAnswer", "answer_all"]


class LoopAnswer:
    """A request's ``resolve``: settles ``future`` on ``loop`` (from any thread)."""

    __slots__ = ("loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:
        self.loop = loop
        self.future = future

    def __call__(self, value: Any) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, value)


def answer_all(answers: Iterable[tuple[Any, Any]]) -> None:
    """Resolve each ``(pending, value)``: those awaited on an event loop with one hand-off per loop,
    any other ``resolve`` (a simulation's, a test's) by calling it."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
    for pending, value in answers:
        resolve = pending.resolve
        if isinstance(resolve, LoopAnswer):
            by_loop.setdefault(resolve.loop, []).append((resolve.future, value))
        else:
            resolve(value)
    for loop, settles in by_loop.items():
        loop.call_soon_threadsafe(_settle_all, settles)


def _settle_all(settles: list[tuple[asyncio.Future, Any]]) -> None:
    for future, value in settles:
        _settle(future, value)


def _settle(future: asyncio.Future, value: Any) -> None:
    if future.done():  # the client went away and the handler was cancelled
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
