"""bench.load's printed line for one load point."""

from bench.load import describe

ROW = {"attainment": 0.99, "late_200": 0, "accuracy_per_sent": 0.7, "mean_accuracy": 0.71, "p50_ms": 5.0,
       "p99_ms": 9.0, "statuses": {"200": 99, "504": 1}, "client_cpu_ms_per_request": 0.3, "send_lag_p99_ms": 1.0}


def test_the_line_names_the_servers_learnt_device_speed_when_it_reports_one():
    assert describe({**ROW, "device_speed": 1.5}).endswith(", device speed 1.50x")
    assert "device speed" not in describe(ROW)  # bench.peers' and older servers' rows
    assert "device speed" not in describe({**ROW, "device_speed": None})
