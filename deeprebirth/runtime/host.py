"""This machine, as a measurement records it: the processor's model name, the logical CPUs and the
load average. The machines here are shared, and a neighbour's load slows every timing, so plans,
accelerate's report and the reproduction scripts (scripts/reproduce/steps.py) write these beside
their numbers."""
from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The first ``model name`` of ``cpuinfo``, else the platform's processor string or architecture."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The load average over 1, 5 and 15 minutes (None where the system does not give it)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def host(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The host's name, its processor (cpu_model), its logical CPUs and the load average now."""
    doc = {"node": platform.node(), "processor": cpu_model(cpuinfo), "logical_cpus": os.cpu_count()}
    load = load_average()
    if load is not None:
        doc["load_average"] = load
    return doc
