"""bench/saturation.py's summary: medians over rounds, the widthwise / bare ratio and the audit share."""

from bench.saturation import print_summary


def test_summary_reports_medians_ratio_and_the_share_of_needless_refusals(capsys):
    closed = [{"backend": "onnx", "width": 1.0, "server": server, "throughput_rps": rate}
              for server, rate in (("widthwise", 90.0), ("widthwise", 110.0), ("widthwise", 100.0),
                                   ("bare", 80.0), ("bare", 80.0), ("bare", 120.0))]
    open_rows = [
        {"backend": "onnx", "width": 1.0, "load": 1.0, "server": "widthwise", "on_time": 0.6},
        {"backend": "onnx", "width": 1.0, "load": 1.0, "server": "bare", "on_time": 0.1},
        {"backend": "onnx", "width": 1.0, "load": 1.0, "server": "audited", "on_time": 0.5,
         "audits": {"on_time": 3.0, "late": 9.0}},
        {"backend": "onnx", "width": 1.0, "load": 1.0, "server": "audited", "on_time": 0.5,
         "audits": {"on_time": 1.0, "late": 7.0}},
    ]
    print_summary({"closed": closed, "open": open_rows})
    out = capsys.readouterr().out
    assert "widthwise 100.0, bare 80.0, ratio 1.250" in out
    assert "widthwise 0.600, bare 0.100; audited refusals in time 4 of 20 (20.0%)" in out
