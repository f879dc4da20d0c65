"""The machine a result was measured on, without importing TensorFlow.

Shared by the benchmark harness, the reliability scripts and the tests that
write results. It imports only the standard library, so a supervisor
process (fuzz, soak, asan, safe) can record the machine without loading
TensorFlow; tests load it by path (`importlib.util.spec_from_file_location`).
"""

import os
import platform
import subprocess


def lscpu():
    """`lscpu`'s fields as a dict ({} where it cannot run)."""
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = {}
    for line in out.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def cpu_model():
    """The CPU model as the OS names it ("model name" in /proc/cpuinfo).

    Falls back to lscpu's "Model name", then to what `platform` knows.
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    model = lscpu().get("Model name")
    return model or platform.processor() or platform.machine() or "?"


def memory_gib():
    """Total memory in GiB (MemTotal of /proc/meminfo); None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 / 2**30
    except (OSError, ValueError, IndexError):
        pass
    return None


def describe(system=False, memory=False):
    """One line: "<CPU model>, <n> CPUs[, <OS>][, <n> GiB]"."""
    parts = [cpu_model(), f"{os.cpu_count()} CPUs"]
    if system:
        parts.append(platform.system())
    if memory:
        gib = memory_gib()
        if gib is not None:
            parts.append(f"{gib:.0f} GiB")
    return ", ".join(parts)
