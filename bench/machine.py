"""What the figures were measured on: CPU, cores, memory, OS, library versions, load.

Every results file embeds this, so a number is never read without its machine. The load
average before and after a run is recorded too: on a shared machine it is the first thing
to check when two runs disagree.
"""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _physical_cores() -> int | None:
    """Distinct (physical id, core id) pairs; None where /proc/cpuinfo does not say."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return None
    cores, physical = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            cores.add((physical, value.strip()))
    return len(cores) or None


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text(encoding="utf-8").splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.platform()


def _cgroup_cpu_limit() -> float | None:
    """CPUs the cgroup allows (cgroup v2 cpu.max), which nproc does not show."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text(encoding="utf-8").split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> str | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # no driver, no device
        return None


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def describe(provider: str) -> dict[str, Any]:
    """The machine and software, as one JSON-able dict."""
    import onnxruntime as ort

    memory = _memory_bytes()
    return {
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": _physical_cores(),
        "cgroup_cpu_limit": _cgroup_cpu_limit(),
        "memory_gib": round(memory / 2**30, 1) if memory else None,
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "onnxruntime_providers": list(ort.get_available_providers()),
        "grpcio": _version("grpcio"),
        "numpy": _version("numpy"),
        "provider": provider,
        "gpu": _gpu(),
        "load_average_start": load_average(),
    }


def one_line(machine: dict[str, Any]) -> str:
    cores = f"{machine['logical_cores']} logical"
    if machine.get("physical_cores"):
        cores += f" / {machine['physical_cores']} physical"
    if machine.get("cgroup_cpu_limit"):
        cores += f", cgroup limit {machine['cgroup_cpu_limit']:g} CPUs"
    gpu = f", GPU {machine['gpu']}" if machine.get("gpu") else ""
    return (
        f"{machine['cpu_model']} ({cores}), {machine['memory_gib']} GiB RAM{gpu}, {machine['os']} "
        f"(kernel {machine['kernel']}), Python {machine['python']}, onnxruntime {machine['onnxruntime']}, "
        f"grpcio {machine['grpcio']}, provider {machine['provider']}"
    )
