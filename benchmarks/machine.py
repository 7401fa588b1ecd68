"""The machine a benchmark ran on, for its table's header."""

import os
import platform


def cpu_model():
    """The CPU's model name (Linux' /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_line():
    """ "<CPU model>, <N> cores"."""
    return f"{cpu_model()}, {os.cpu_count()} cores"
