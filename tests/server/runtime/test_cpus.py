"""Usable CPUs: the affinity mask capped by the cgroup's CPU quota, read from fake cgroup trees."""

import os
from pathlib import Path

import pytest

from server.runtime import cpus
from server.runtime.cpus import cgroup_cpu_limit, usable_cpus
from server.runtime.ort import default_ort_threads
from server.runtime.torch_cpu import default_torch_threads


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v2_tree(tmp_path: Path, limits: dict[str, str], own: str = "/kubepods/pod1/ctr") -> tuple[str, str]:
    """A cgroup v2 mount with ``cpu.max`` files at the given paths; the process sits at ``own``."""
    root = tmp_path / "cgroup"
    (root / own.lstrip("/")).mkdir(parents=True)
    for path, cpu_max in limits.items():
        write(root / path.lstrip("/") / "cpu.max", cpu_max)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::{own}\n")
    return str(root), str(proc)


def test_a_v2_quota_of_the_processs_cgroup_is_read_as_cpus(tmp_path):
    root, proc = v2_tree(tmp_path, {"/kubepods/pod1/ctr": "150000 100000"})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)


def test_the_tightest_limit_on_the_path_to_the_root_wins(tmp_path):
    # The pod's limit (0.5 CPU) binds the container below it, whose own is "max".
    root, proc = v2_tree(tmp_path, {"/kubepods/pod1/ctr": "max 100000", "/kubepods/pod1": "50000 100000",
                                    "/kubepods": "400000 100000"})
    assert cgroup_cpu_limit(root, proc) == pytest.approx(0.5)


def test_no_quota_anywhere_means_no_limit(tmp_path):
    root, proc = v2_tree(tmp_path, {"/kubepods/pod1/ctr": "max 100000"})
    assert cgroup_cpu_limit(root, proc) is None
    assert cgroup_cpu_limit(root, str(tmp_path / "missing")) is None


def test_inside_a_container_the_mount_itself_is_the_processs_cgroup(tmp_path):
    # /proc/self/cgroup names the host's path, but only the container's own cgroup is mounted.
    root = tmp_path / "cgroup"
    write(root / "cpu.max", "200000 100000")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/kubepods/burstable/pod9/abc\n")
    assert cgroup_cpu_limit(str(root), str(proc)) == pytest.approx(2.0)


def test_a_v1_cfs_quota_is_read_from_the_cpu_controllers_hierarchy(tmp_path):
    root = tmp_path / "cgroup"
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "250000\n")
    write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")  # the root: unlimited
    write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cgroup_cpu_limit(str(root), str(proc)) == pytest.approx(2.5)


def test_usable_cpus_is_the_affinity_mask_capped_by_the_quota_rounded_down(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    root, proc = v2_tree(tmp_path, {"/kubepods/pod1/ctr": "150000 100000"})
    assert usable_cpus(root, proc) == 1
    root, proc = v2_tree(tmp_path / "small", {"/kubepods/pod1/ctr": "20000 100000"})
    assert usable_cpus(root, proc) == 1  # a fifth of a CPU still runs one thread
    root, proc = v2_tree(tmp_path / "big", {"/kubepods/pod1/ctr": "6400000 100000"})
    assert usable_cpus(root, proc) == affinity  # 64 CPUs of quota, but only the mask's cores


def test_onnx_runtime_threads_default_to_the_usable_cpus_not_the_hosts_cores(monkeypatch):
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 3)
    assert default_ort_threads() == 2
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 1)
    assert default_ort_threads() == 1


def test_torch_threads_default_to_its_own_choice_capped_by_the_usable_cpus_but_one(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "get_num_threads", lambda: 32)  # torch's default on a 32-core node
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 2)  # a pod with limits.cpu: 2: one for the event loop
    assert default_torch_threads() == 1
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 1)
    assert default_torch_threads() == 1
    monkeypatch.setattr(cpus, "usable_cpus", lambda: 64)
    assert default_torch_threads() == 32


@pytest.mark.parametrize("usable, shares", [(1, True), (2, False)])
def test_the_engine_sees_the_model_take_every_core_the_quota_allows(monkeypatch, usable, shares):
    """One ORT thread in a 1-CPU pod shares its core with the event loop (so --worker-nice applies)
    even on a host with many cores."""
    from prometheus_client import CollectorRegistry

    from policies.deadline import Deadlines
    from server.engine import host_probe
    from server.metrics import Metrics

    monkeypatch.setattr(host_probe, "usable_cpus", lambda: usable)
    probe = host_probe.HostProbe(Deadlines(), Metrics(CollectorRegistry(), "m"))
    probe.read_host()  # as start-up reads it
    probe.model_started("cpu", threads=1, worker_cpu_s=lambda: 0.0, device_speed=lambda: None)
    assert probe.shares_cores_with_model is shares
