"""`gpq doctor`: this Python's versions, backend, extras, CPU and GPUs, for a bug report."""

import os
import sys

from gpq_keras.cli.common import add_command

HELP = (
    "what a bug report needs, in a dozen lines: the Python, gpq_keras, Keras and its backend, the "
    "other backends installed, NumPy, faiss (and its fast-scan), the extras (serve, onnx, tflite, "
    "hub), the CPU's AVX2, AVX-512, AMX and bfloat16, the GPUs the NVIDIA driver lists, the "
    "backend's memory settings and whether the packaged digits load. It reads package metadata "
    "and imports no backend (well under a second); --devices imports the backend to list the "
    "devices it sees (and TensorFlow's memory growth), which takes seconds"
)


def add_doctor(sub):
    p = add_command(sub, "doctor", HELP, "gpq doctor --devices --json doctor.json", run_doctor)
    p.add_argument(
        "--devices",
        action="store_true",
        help="also list the devices the backend sees and, on TensorFlow, each GPU's memory "
        "growth: imports Keras and the backend",
    )
    p.add_argument(
        "--json", metavar="OUT", help="also write the report here, as JSON (the same facts, keyed)"
    )


def run_doctor(args):
    report = doctor_report(devices=args.devices)
    for line in report_lines(report):
        print(line)
    if args.json:
        from gpq_keras.cli.common import wrote
        from gpq_keras.files import write_json

        write_json(args.json, report)
        wrote(args.json)


def doctor_report(devices=False):
    """`gpq_keras.environment.describe(devices)` with two checks added: `faiss_fast_scan` (faiss
    has `IndexPQFastScan`; None without faiss) and `digits` ({"loads", "images", "classes",
    "error"}: the packaged digits read)."""
    from gpq_keras.environment import describe

    try:
        report = describe(devices=devices)
    except Exception as exc:  # noqa: BLE001 - the backend does not start: that is the answer
        report = describe()
        report["devices_error"] = _one_line(exc)
    report["faiss_fast_scan"] = _fast_scan() if report["packages"]["faiss"] else None
    report["digits"] = _digits()
    return report


def _fast_scan():
    from gpq_keras.retrieval.faiss_bridge import import_faiss

    try:
        return hasattr(import_faiss(), "IndexPQFastScan")
    except ImportError:
        return False


def _digits():
    try:
        from gpq_keras.data.digits import load_raw

        images, labels = load_raw()
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return {"loads": False, "images": None, "classes": None, "error": _one_line(exc)}
    return {
        "loads": True,
        "images": int(len(images)),
        "classes": int(len(set(labels.tolist()))),
        "error": None,
    }


def _one_line(exc):
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


def _version(report, name, missing="not installed"):
    version = report["packages"].get(name)
    if version is None:
        return f"{name} {missing}"
    distribution = report["distributions"].get(name)
    return f"{name} {version}" + (f" ({distribution})" if distribution else "")


def _yes(value):
    return "unknown" if value is None else ("yes" if value else "no")


def _extra(report, extra):
    from gpq_keras.environment import EXTRAS

    text = ", ".join(_version(report, name) for name in EXTRAS[extra])
    if not report["extras"][extra]:
        text += f": pip install 'gpq-keras[{extra}]'"
    return text


def report_lines(report):
    """The lines `gpq doctor` prints for a `doctor_report`."""
    backend = report["backend"]
    source = report["backend_source"]
    if source not in ("KERAS_BACKEND", "the default", "keras.config"):
        source = _home(source)
    others = [_version(report, name) for name in report["backends"] if name != backend]
    cpu = report["cpu"]
    usable = cpu["usable_cores"]
    cores = f"{cpu['cores']} cores" + (f" ({usable} usable)" if usable != cpu["cores"] else "")
    features = ", ".join(
        f"{label} {_yes(cpu[key])}"
        for label, key in (
            ("AVX2", "avx2"),
            ("AVX-512", "avx512"),
            ("AMX", "amx"),
            ("bfloat16", "bfloat16"),
        )
    )
    fast_scan = report["faiss_fast_scan"]
    faiss = _version(report, "faiss", "not installed: pip install 'gpq-keras[faiss]'")
    faiss = faiss.removeprefix("faiss ")
    if fast_scan is not None:
        faiss += f", fast-scan {'yes' if fast_scan else 'no'}"
    digits = report["digits"]
    return [
        f"python     {report['python']} {report['implementation']}, {report['platform']}",
        f"gpq_keras  {report['gpq_keras']}, keras {report['keras'] or 'not installed'}",
        f"backend    {_version(report, backend)}, chosen by {source}",
        "backends   " + ("also " + ", ".join(others) if others else "no other"),
        f"numpy      {report['packages']['numpy']}; viz: {_extra(report, 'viz')}",
        f"faiss      {faiss}",
        f"serve      {_extra(report, 'serve')}",
        f"onnx       {_extra(report, 'onnx')}",
        f"tflite     {_extra(report, 'tflite')}",
        f"hub        {_extra(report, 'hub')}",
        f"cpu        {cpu['machine']}, {cores}: {features}" + _model(cpu["model"]),
        f"gpus       {_gpus(report)}",
        f"devices    {_devices(report)}",
        f"memory     {_memory(report)}",
        "digits     "
        + (
            f"load: {digits['images']} images, {digits['classes']} classes"
            if digits["loads"]
            else f"do not load: {digits['error']}"
        ),
    ]


def _home(path):
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if home != "/" and path.startswith(home + os.sep) else path


def _model(model):
    return f" ({model})" if model else ""


def _gpus(report):
    gpus = report["gpus"]
    visible = report["environment"].get("CUDA_VISIBLE_DEVICES")
    tail = "" if visible is None else f"; CUDA_VISIBLE_DEVICES={visible!r}"
    if gpus is None:
        where = "no NVIDIA driver loaded" if sys.platform.startswith("linux") else "unknown here"
        return where + tail
    if not gpus:
        return "none listed by the NVIDIA driver" + tail
    return f"{len(gpus)}: " + ", ".join(gpus) + tail


def _devices(report):
    if report.get("devices_error"):
        return f"{report['backend']} does not start: {report['devices_error']}"
    if report["devices"] is None:
        return f"not read (gpq doctor --devices imports {report['backend']})"
    return ", ".join(report["devices"]) or "none"


def _memory(report):
    from gpq_keras.environment import MEMORY_VARIABLES

    backend = report["backend"]
    growth = report["memory_growth"]
    parts = []
    if growth:
        parts.append(
            "memory growth "
            + ", ".join(f"{gpu} {'on' if on else 'off'}" for gpu, on in growth.items())
        )
    env = report["environment"]
    for name in MEMORY_VARIABLES.get(backend, ()):
        parts.append(f"{name}={env[name]!r}" if name in env else f"{name} unset")
    if backend == "tensorflow" and not growth and "TF_FORCE_GPU_ALLOW_GROWTH" not in env:
        parts[-1] += " (TensorFlow then takes all of a GPU's memory)"
    if not parts:
        return "no settings known for this backend"
    return "; ".join(parts)
