from policies.load import CpuMonitor, DeviceMonitor, NvmlMonitor


def test_cpu_monitor_reads_proc_stat(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    monitor = CpuMonitor(str(stat))
    stat.write_text("cpu  150 0 150 900 0 0 0 0 0 0\n")  # +100 busy, +100 idle
    assert monitor.sample().utilization == 0.5


def test_missing_signals_degrade_to_none(tmp_path):
    assert CpuMonitor(str(tmp_path / "absent")).sample().utilization is None
    nvml = NvmlMonitor()  # no GPU (or no NVML library) on CI machines
    if not nvml.available:
        assert nvml.sample().utilization is None


def test_device_monitor_keeps_the_latest_sample():
    monitor = DeviceMonitor("cpu")
    assert monitor.latest.utilization is None
    sample = monitor.refresh()
    assert monitor.latest == sample
    assert sample.utilization is None or 0.0 <= sample.utilization <= 1.0
