import pytest

from policies.load import CpuMonitor, DeviceMonitor, DeviceSample, NvmlMonitor, QuotaCpuMonitor


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


def test_cpu_monitor_of_some_cpus_reads_only_their_lines(tmp_path):
    # cpu1 is saturated by someone else; cpu0, ours, is a quarter busy: the host-wide line says 62.5%.
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 0 300 0 0 0 0 0 0\ncpu0 50 0 0 150 0 0 0 0 0 0\ncpu1 50 0 0 150 0 0 0 0 0 0\nintr 5\n")
    ours, host = CpuMonitor(str(stat), cpus={0}), CpuMonitor(str(stat))
    stat.write_text("cpu  225 0 0 375 0 0 0 0 0 0\ncpu0 75 0 0 225 0 0 0 0 0 0\ncpu1 150 0 0 150 0 0 0 0 0 0\nintr 9\n")
    assert ours.sample().utilization == 0.25
    assert host.sample().utilization == 0.625
    assert CpuMonitor(str(stat), cpus={7}).sample().utilization is None  # no such line: no signal


def test_quota_cpu_monitor_divides_usage_by_the_quota_and_degrades_to_none():
    usage = iter([4.0, 5.5, None])
    clock = iter([0.0, 1.0, 2.0])
    monitor = QuotaCpuMonitor(lambda: next(usage), 1.5, clock=lambda: next(clock))
    assert monitor.sample().utilization == pytest.approx(1.0)  # 1.5 CPU-s in 1 s against 1.5 CPUs
    assert monitor.sample().utilization is None  # the usage file went away


def test_device_monitor_samples_the_cpu_reader_it_is_given():
    class Fixed:
        def sample(self):
            return DeviceSample(0.42)

    monitor = DeviceMonitor("cpu", cpu_reader=Fixed())
    assert monitor.refresh().utilization == 0.42 and monitor.latest.utilization == 0.42
