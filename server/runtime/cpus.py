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

__all__ = ["usable_cpus", "cgroup_cpu_limit"]


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
    limits = [limit for v2, directories in _cgroup_paths(cgroup_root, proc_cgroup, "cpu") for directory in directories
              if (limit := (_read_cpu_max if v2 else _read_cfs_quota)(directory)) is not None]
    return min(limits) if limits else None


def _cgroup_paths(cgroup_root: str, proc_cgroup: str, v1_controller: str) -> list[tuple[bool, list[Path]]]:
    """Per hierarchy the process's CPU accounting lives in (cgroup v2's unified one; in v1 the one
    ``v1_controller`` is on): whether it is v2, and the directories from the process's own cgroup up
    to the mount. Inside a container the mount is often the container's own cgroup while
    ``/proc/self/cgroup`` names it from the host's root: then the mount alone describes it."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return []
    root = Path(cgroup_root)
    found = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        v2 = hierarchy == "0" and controllers == ""
        if v2:
            mount: Path | None = root
        elif v1_controller in controllers.split(","):
            mount = next(
                (m for m in (root / controllers, root / v1_controller, root / "cpu,cpuacct") if m.is_dir()), None
            )
        else:
            continue
        if mount is None:
            continue
        leaf = mount / path.lstrip("/")
        if not leaf.is_dir():
            found.append((v2, [mount]))
            continue
        directories = []
        for directory in (leaf, *leaf.parents):
            directories.append(directory)
            if directory == mount:
                break
        found.append((v2, directories))
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
