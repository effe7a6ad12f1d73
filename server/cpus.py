"""How many CPUs this process may use: its affinity mask and its cgroup's CPU quota.

``os.cpu_count()`` counts the host's cores. In a Kubernetes pod with ``limits.cpu: 2`` on a
64-core node it says 64, and a runtime sized from it runs 63 threads on two cores' worth of
quota: the kernel throttles the cgroup for the rest of every 100 ms period, which is a latency
cliff no budget policy can plan for. Reads the cgroup v2 ``cpu.max`` or the v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us`` of the process's cgroup and of every ancestor that
is visible (a parent's limit binds its children too). Imports nothing heavy.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["usable_cpus", "cgroup_cpu_limit", "cgroup_cpu_usage_s", "cpu_monitor"]


def usable_cpus(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """Cores this process can keep busy: the affinity mask, capped by the CPU quota (rounded down, >= 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if limit is not None:
        cores = min(cores, math.floor(limit + 1e-9))
    return max(1, cores)


def cgroup_cpu_limit(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """CPUs' worth of time per period the process's cgroup may use (quota / period); None when unlimited
    or unreadable. The tightest limit on the path from the process's cgroup up to the mount wins."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2: one unified hierarchy
            limits += _limits_on_path(Path(cgroup_root), path, _read_cpu_max)
        elif "cpu" in controllers.split(","):  # cgroup v1: the hierarchy the cpu controller is on
            for mount in (Path(cgroup_root) / controllers, Path(cgroup_root) / "cpu", Path(cgroup_root) / "cpu,cpuacct"):
                if mount.is_dir():
                    limits += _limits_on_path(mount, path, _read_cfs_quota)
                    break
    return min(limits) if limits else None


def _limits_on_path(mount: Path, path: str, read) -> list[float]:
    """The limits of the cgroup at ``path`` under ``mount`` and of its ancestors. Inside a container
    the mount is often the container's own cgroup while ``path`` names it from the host's root:
    then only the mount's own files describe it."""
    leaf = mount / path.lstrip("/")
    directories = [leaf, *leaf.parents] if leaf.is_dir() else [mount]
    found = []
    for directory in directories:
        limit = read(directory)
        if limit is not None:
            found.append(limit)
        if directory == mount:
            break
    return found


def _read_cpu_max(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _read_cfs_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_usage_s(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """CPU seconds the process's cgroup has used so far (v2 ``cpu.stat`` ``usage_usec``, v1
    ``cpuacct.usage``); None when unreadable. Inside a container whose ``/proc/self/cgroup`` names the
    host's path, the mount's own files are the container's."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            for directory in _own_directory(Path(cgroup_root), path):
                usage = _read_usage_usec(directory)
                if usage is not None:
                    return usage / 1e6
        elif "cpuacct" in controllers.split(","):
            for mount in (Path(cgroup_root) / controllers, Path(cgroup_root) / "cpuacct", Path(cgroup_root) / "cpu,cpuacct"):
                if mount.is_dir():
                    for directory in _own_directory(mount, path):
                        try:
                            return int((directory / "cpuacct.usage").read_text()) / 1e9
                        except (OSError, ValueError):
                            continue
                    break
    return None


def _own_directory(mount: Path, path: str) -> list[Path]:
    """The cgroup directory at ``path`` under ``mount`` if it exists, else the mount itself (a container's view)."""
    leaf = mount / path.lstrip("/")
    return [leaf] if leaf.is_dir() else [mount]


def _read_usage_usec(directory: Path) -> int | None:
    try:
        for line in (directory / "cpu.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "usage_usec":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def cpu_monitor(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup",
                proc_stat: str = "/proc/stat"):
    """The CPU load signal for a server on CPUs: under a CPU quota (a Kubernetes ``limits.cpu``), the
    cgroup's usage over its quota -- what throttling is measured against; otherwise how busy the CPUs
    this process may run on are (other processes on them count: they take the same cores). Never
    the host's cores as a whole: a pod's utilization is not its node's."""
    from policies.load import CpuMonitor, QuotaCpuMonitor

    limit = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if limit is not None and cgroup_cpu_usage_s(cgroup_root, proc_cgroup) is not None:
        return QuotaCpuMonitor(lambda: cgroup_cpu_usage_s(cgroup_root, proc_cgroup), limit)
    try:
        cores = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        cores = None
    return CpuMonitor(proc_stat, cores)
