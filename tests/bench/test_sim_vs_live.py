"""bench.sim_vs_live: the live batches and the device's speed recovered from the answers' headers."""

import pytest

from bench.http_client import Answer
from bench.sim_vs_live import live_batches, speed_points
from policies import LatencyProfile


def ok(width: str, input_ms: float, queue_ms: float, inference_ms: float) -> Answer:
    timing = f"queue;dur={queue_ms:.3f}, inference;dur={inference_ms:.3f}, total;dur=0, input;dur={input_ms:.3f}"
    return Answer(200, 0.0, {"x-served-width": width, "server-timing": timing}, b"")


def test_requests_of_one_batch_are_grouped_and_its_speed_is_net_of_arrivals_cpu():
    answers = [
        (0.000, ok("1.0", 1.0, 0.0, 12.0)),  # alone: 12 ms against a 6 ms profile
        (0.100, ok("0.5", 1.0, 2.0, 5.0)),  # these two ran together (same width, time, start)
        (0.1015, ok("0.5", 0.5, 1.0, 5.0)),
        (0.2000, ok("0.5", 1.0, 0.0, 5.0)),  # same inference time, but 100 ms later: its own batch
        (0.300, Answer(504, 0.0, {}, b"")),  # refused: no batch
    ]
    batches = live_batches(answers)
    assert [(round(s, 4), w, n) for s, w, n, _ in batches] == [(0.001, 1.0, 1), (0.103, 0.5, 2), (0.201, 0.5, 1)]
    profile = LatencyProfile({0.5: {1: 0.002, 2: 0.0025}, 1.0: {1: 0.006, 2: 0.011}})
    # no request was sent while a batch ran, so the factors are the plain ratios to the profile
    points = speed_points(batches, [a for a, _ in answers], profile, request_cpu_s=0.001)
    assert [f for _, f in points] == pytest.approx([2.0, 2.0, 2.5])
    # a request sent during the first batch takes its CPU from it: 1 ms less of device time
    points = speed_points(batches, [0.005] + [a for a, _ in answers], profile, request_cpu_s=0.001)
    assert points[0][1] == pytest.approx(11 / 6, abs=1e-3)
