"""Answers from the inference thread: one wake-up of the event loop per batch."""

from __future__ import annotations

import asyncio
import threading

import pytest

from policies import Pending, ScheduledRequest
from server.engine.handoff import LoopAnswer, answer_all


def _pending(resolve) -> Pending:
    return Pending(ScheduledRequest(1, 1, None, float("inf"), 0.0, None), resolve)


def test_a_batch_is_settled_with_one_hand_off_and_each_request_gets_its_own_value():
    async def scenario():
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(8)]
        wakeups = []
        original = loop.call_soon_threadsafe

        def counting(callback, *args):
            wakeups.append(callback)
            return original(callback, *args)

        loop.call_soon_threadsafe = counting
        failure = RuntimeError("batch failed")
        answers = [(_pending(LoopAnswer(loop, f)), i) for i, f in enumerate(futures[:7])]
        answers.append((_pending(LoopAnswer(loop, futures[7])), failure))
        worker = threading.Thread(target=answer_all, args=(answers,))
        worker.start()
        worker.join()
        results = await asyncio.gather(*futures, return_exceptions=True)
        return wakeups, results, failure

    wakeups, results, failure = asyncio.run(scenario())
    assert len(wakeups) == 1
    assert results[:7] == list(range(7)) and results[7] is failure


def test_a_request_whose_client_left_is_skipped_and_plain_resolvers_are_called():
    async def scenario():
        loop = asyncio.get_running_loop()
        gone, waiting = loop.create_future(), loop.create_future()
        gone.cancel()
        called = []
        answer_all([(_pending(LoopAnswer(loop, gone)), 1), (_pending(LoopAnswer(loop, waiting)), 2),
                    (_pending(called.append), 3)])
        assert called == [3]  # a simulation's resolver: called at once
        return await waiting, gone

    value, gone = asyncio.run(scenario())
    assert value == 2
    with pytest.raises(asyncio.CancelledError):
        gone.result()
