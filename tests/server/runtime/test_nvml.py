from server.runtime.nvml import DeviceSample, NvmlMonitor


def test_nvml_reads_a_gpu_or_degrades_to_none():
    nvml = NvmlMonitor()  # no GPU (or no NVML library) on CI machines
    sample = nvml.sample()
    if nvml.available:
        assert 0.0 <= sample.utilization <= 1.0 and sample.memory_used_bytes > 0
    else:
        assert sample == DeviceSample(None)
