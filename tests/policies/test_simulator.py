import json

import pytest

from policies import FixedPolicy, LatencyProfile, SchedulerConfig, SlackPolicy, make_policy
from policies.simulator import SpeedTrace, arrival_times, simulate
from server.cli import main

# A CPU-like ladder: the narrowest width is 3x faster than the widest.
PROFILE = LatencyProfile({
    0.35: {1: 0.004, 2: 0.006, 4: 0.010, 8: 0.018},
    0.5: {1: 0.005, 2: 0.008, 4: 0.013, 8: 0.024},
    0.75: {1: 0.009, 2: 0.014, 4: 0.024, 8: 0.044},
    1.0: {1: 0.012, 2: 0.019, 4: 0.032, 8: 0.058},
})
ACCURACY = {0.35: 0.597, 0.5: 0.644, 0.75: 0.689, 1.0: 0.705}


def run(policy, rate, budget=0.036, trace="poisson", duration=20.0):
    arrivals = arrival_times(trace, rate, duration, seed=1)
    return simulate(PROFILE, policy, arrivals, budget, ACCURACY, noise=0.0)


def test_traces_have_the_requested_mean_rate():
    for trace in ("poisson", "bursty", "step"):
        times = arrival_times(trace, 200, 20.0, seed=3)
        assert len(times) == pytest.approx(4000, rel=0.08), trace
        assert times == sorted(times) and 0 <= times[0] and times[-1] < 20.0


def test_trace_file(tmp_path):
    path = tmp_path / "trace.json"
    path.write_text(json.dumps([0.3, 0.1, 0.2]))
    assert arrival_times(str(path), 0, 0) == [0.1, 0.2, 0.3]
    with pytest.raises(ValueError):
        arrival_times(str(tmp_path / "nope"), 1, 1)


def test_light_load_is_served_at_the_widest_width_on_time():
    result = run(make_policy("max-width", PROFILE.widths), rate=20)
    assert result.attainment == 1.0
    assert result.width_mix["1.0"] == 1.0
    assert result.mean_accuracy == pytest.approx(0.705)


def test_fixed_widest_collapses_past_its_capacity_and_adaptive_does_not():
    widest_capacity = 8 / PROFILE.predict(1.0, 8)  # ~138 req/s
    rate = 1.8 * widest_capacity
    fixed = run(FixedPolicy(1.0), rate)
    slack = run(SlackPolicy(), rate)
    assert fixed.attainment < 0.7
    assert slack.attainment > 0.97
    assert 0.597 < slack.mean_accuracy < 0.705
    assert slack.width_mix["0.35"] + slack.width_mix["0.5"] > 0.3


def test_simulation_is_deterministic_for_a_seed():
    a = run(make_policy("max-width", PROFILE.widths), rate=150)
    b = run(make_policy("max-width", PROFILE.widths), rate=150)
    assert a == b
    assert a.sent == a.served + a.rejected


def test_simulate_cli_json(tmp_path, capsys):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({**PROFILE.as_dict(), "accuracy": {str(k): v for k, v in ACCURACY.items()}}))
    argv = ["simulate", "--profile", str(path), "--policy", "slack", "--trace", "bursty", "--rate", "100",
            "--budget-ms", "36", "--duration", "5", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("attainment", "mean_accuracy", "p50_ms", "p99_ms", "width_mix"):
        assert key in report
    assert 0.9 <= report["attainment"] <= 1.0
    assert sum(report["width_mix"].values()) == pytest.approx(1.0)


def test_simulate_cli_rejects_unknown_policy(tmp_path, capsys):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(PROFILE.as_dict()))
    assert main(["simulate", "--profile", str(path), "--policy", "nope", "--budget-ms", "10"]) == 2
    assert "unknown policy" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_cli_runs_the_policy_headline_on_a_saved_profile(tmp_path, capsys):
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps(PROFILE.as_dict()))
    out = tmp_path / "out"
    assert main(["bench", "policy_sim", "--profile", str(profile), "--duration", "2", "--out", str(out)]) == 0
    report = json.loads((out / "policy_sim.json").read_text())
    assert {r["policy"] for r in report["rows"]} >= {"fixed:1", "max-width", "slack", "feedback"}
    assert (out / "policy_sim.png").stat().st_size > 0
    assert "fixed:1 past 1x" in capsys.readouterr().out


def test_simulate_flags_and_defaults_are_serves(tmp_path, monkeypatch):
    from server.cli import build_parser
    from server.settings import SCHEDULING_FIELDS, Settings, settings_from_args

    args = build_parser().parse_args(["simulate", "--profile", "p.json", "--budget-ms", "10"])
    assert settings_from_args(args).scheduler_config() == Settings().scheduler_config()
    args = build_parser().parse_args(
        [
            "simulate",
            "--profile",
            "p.json",
            "--budget-ms",
            "10",
            "--max-queue-delay-ms",
            "3",
            "--latency-margin",
            "0.2",
            "--policy",
            "slack",
        ]
    )
    settings = settings_from_args(args)
    assert settings.scheduler_config().max_queue_delay_s == 0.003 and settings.scheduler_config().margin == 0.2
    assert settings.policy == "slack"
    monkeypatch.setenv("WIDTHWISE_MAX_BATCH_SIZE", "4")  # the same environment twins as serve
    args = build_parser().parse_args(["simulate", "--profile", "p.json", "--budget-ms", "10"])
    assert settings_from_args(args).scheduler_config().max_batch_size == 4
    assert set(SCHEDULING_FIELDS) <= set(Settings.model_fields)


def test_the_servers_own_cpu_per_request_slows_the_shared_core():
    # One request every 5 ms; width 0.25 takes 1 ms. Alone the device is idle 80% of the time; with
    # 3 ms of HTTP/decoding CPU per request on the same core it is 80% busy, and latencies grow by
    # at least that CPU (half before the queue, half after the batch).
    profile = LatencyProfile({0.25: {1: 0.001, 8: 0.004}})
    arrivals = [i * 0.005 for i in range(400)]
    free = simulate(profile, FixedPolicy(0.25), arrivals, budget_s=0.020)
    shared = simulate(profile, FixedPolicy(0.25), arrivals, budget_s=0.020, request_cpu_s=0.003)
    assert free.attainment == 1.0 and free.p50_ms == pytest.approx(1.0, abs=0.01)
    assert shared.p50_ms == pytest.approx(free.p50_ms + 3.0)  # parsing before the queue, the reply after
    assert shared.attainment <= free.attainment
    tight = simulate(profile, FixedPolicy(0.25), arrivals, budget_s=0.003, request_cpu_s=0.003)
    assert tight.attainment < 0.5  # 3 ms of CPU cannot fit a 3 ms budget with the model's time on top


def test_speed_trace_follows_slow_spells_and_not_single_batches():
    # 0-1 s at profile speed, 1-2 s at 1.5x, one outlier batch at 0.5 s
    points = [(t / 100, 1.0) for t in range(100)] + [(1 + t / 100, 1.5) for t in range(100)] + [(0.5, 4.0)]
    speed = SpeedTrace(points, window_s=0.5)
    assert speed(0.5) == 1.0  # one slow batch inside a fast spell is outvoted
    assert speed(1.6) == 1.5
    assert speed(-3.0) == 1.0 and speed(99.0) == 1.5  # before the first point, after the last
    assert 1.2 < speed.mean() < 1.3 and 0.45 < speed.share_above(1.25) < 0.55
    with pytest.raises(ValueError):
        SpeedTrace([])


def test_a_malformed_speed_trace_file_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "trace.json"
    profile = tmp_path / "profile.json"
    LatencyProfile({1.0: {1: 0.004}}).save(profile)
    for text in ('{"x": 1}', "not json", '[["a", "b"]]', '[["a", 2]]', "[1, 2]", "[]"):
        bad.write_text(text)
        with pytest.raises(ValueError, match="speed trace"):
            SpeedTrace.load(bad)
        assert main(["simulate", "--profile", str(profile), "--budget-ms", "20", "--speed-trace", str(bad)]) == 2
        assert "speed trace" in capsys.readouterr().err


def test_simulate_runs_batches_at_the_traced_speed():
    """The same arrivals and profile on a device 2x slower for the second half: the batches there take
    twice as long, so a tight budget is missed there only (answered 504 by the server's late check,
    as serve does), and a looser one is met at twice the latency."""
    profile = LatencyProfile({1.0: {1: 0.004}})
    arrivals = [i * 0.02 for i in range(100)]  # 50 req/s, 2 s, one at a time
    half_slow = lambda t: 2.0 if t >= 1.0 else 1.0  # noqa: E731
    steady = simulate(profile, make_policy("fixed:1.0", (1.0,)), arrivals, budget_s=0.006, noise=0.0)
    tight = simulate(profile, make_policy("fixed:1.0", (1.0,)), arrivals, budget_s=0.006, noise=0.0, speed=half_slow)
    loose = simulate(profile, make_policy("fixed:1.0", (1.0,)), arrivals, budget_s=0.012, noise=0.0, speed=half_slow)
    assert steady.attainment == 1.0 and steady.p99_ms == pytest.approx(4.0)
    assert (tight.on_time, tight.rejected, tight.served) == (50, 50, 50)  # 8 ms batches, 6 ms budget
    assert loose.attainment == 1.0 and loose.p99_ms == pytest.approx(8.0)


def test_simulate_refuses_an_answer_ready_too_close_to_its_budget_as_serve_does():
    """serve answers 504 when an answer is ready less than its reply margin (1 ms at least) before the
    budget; with --admission best_effort it sends it, late or not."""
    profile = LatencyProfile({1.0: {1: 0.004}})
    arrivals = [i * 0.02 for i in range(10)]
    strict = simulate(profile, make_policy("fixed:1.0", (1.0,)), arrivals, budget_s=0.0045, noise=0.0)
    lenient = simulate(profile, make_policy("fixed:1.0", (1.0,)), arrivals, budget_s=0.0045, noise=0.0,
                       config=SchedulerConfig(admission="best_effort"))
    assert (strict.rejected, strict.served) == (10, 0)
    assert (lenient.on_time, lenient.served) == (10, 10)


def test_without_request_cpu_the_simulation_still_keeps_the_servers_1_ms_reserve():
    """serve keeps at least 1 ms of every budget for the reply and refuses answers ready later than
    that: a plan filling the whole budget would be refused, so max-width must plan without it."""
    profile = LatencyProfile({0.5: {1: 0.002}, 1.0: {1: 0.005}}, ewma_alpha=0.0)
    arrivals = [i * 0.05 for i in range(20)]  # one at a time
    result = simulate(profile, make_policy("max-width", (0.5, 1.0)), arrivals, budget_s=0.0058, noise=0.0)
    assert result.attainment == 1.0 and result.width_mix == {"0.5": 1.0, "1.0": 0.0}
