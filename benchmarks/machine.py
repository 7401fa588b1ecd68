"""The machine a benchmark ran on, for its table's header (`gpq doctor`'s CPU facts)."""

from gpq_keras.environment import cpu_features


def cpu_line():
    """ "<CPU model>, <N> cores" (the machine's architecture where the model is unknown)."""
    cpu = cpu_features()
    return f"{cpu['model'] or cpu['machine']}, {cpu['cores']} cores"
