"""`gpq doctor` and `gpq_keras.environment.describe`: their facts against independent sources
(package metadata, `platform`, setup.cfg, fake /proc texts), the JSON, and that nothing heavy is
imported without --devices."""

import configparser
import importlib
import importlib.metadata
import json
import os
import pathlib
import platform
import subprocess
import sys

import keras
import pytest

from gpq_keras import cli, environment
from gpq_keras.cli import doctor
from gpq_keras.environment import cpu_features, describe, keras_backend, nvidia_gpus, parse_cpuinfo
from gpq_keras.training import new_record

ROOT = pathlib.Path(__file__).resolve().parents[1]
LABELS = [
    "python",
    "gpq_keras",
    "backend",
    "backends",
    "numpy",
    "faiss",
    "serve",
    "onnx",
    "tflite",
    "hub",
    "cpu",
    "gpus",
    "devices",
    "memory",
    "digits",
]

SAPPHIRE_RAPIDS = """\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""
HASWELL = """\
processor\t: 0
model name\t: Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz
flags\t\t: fpu sse2 avx avx2 fma
"""
GRAVITON3 = """\
processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 sve bf16 i8mm
CPU implementer\t: 0x41
"""


def _distribution_version(module):
    """The version of the distribution that installs `module`, found the other way round from
    `environment.installed` (every distribution's files), or None."""
    names = importlib.metadata.packages_distributions().get(module)
    return importlib.metadata.version(names[0]) if names else None


# --- the CPU, the GPUs, the backend choice --------------------------------------------------------


def test_cpu_features_from_x86_and_arm_flags():
    assert parse_cpuinfo(HASWELL) == {
        "model": "Intel(R) Core(TM) i7-4770 CPU @ 3.40GHz",
        "flags": {"fpu", "sse2", "avx", "avx2", "fma"},
    }
    features = ("avx2", "avx512", "amx", "bfloat16")
    got = {name: cpu_features(text) for name, text in [("spr", SAPPHIRE_RAPIDS), ("hsw", HASWELL)]}
    assert [got["spr"][f] for f in features] == [True, True, True, True]
    assert got["spr"]["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert [got["hsw"][f] for f in features] == [True, False, False, False]
    arm = cpu_features(GRAVITON3)
    assert [arm[f] for f in features] == [False, False, False, True] and arm["model"] is None
    unknown = cpu_features("")  # no /proc/cpuinfo (macOS, Windows): unknown, not "no"
    assert [unknown[f] for f in features] == [None] * 4
    assert unknown["machine"] == platform.machine() and unknown["cores"] == os.cpu_count()


def test_cpu_features_of_this_machine_are_its_flags():
    with open("/proc/cpuinfo") as fh:
        lines = [line for line in fh if line.split(":")[0].strip() in ("flags", "Features")]
    flags = set(lines[0].split(":", 1)[1].split())
    cpu = describe()["cpu"]
    assert cpu["avx2"] == ("avx2" in flags) and cpu["avx512"] == ("avx512f" in flags)
    assert cpu["amx"] == bool(flags & {"amx_tile", "amx_bf16", "amx_int8"})


def test_nvidia_gpus_from_the_driver_listing(tmp_path):
    assert nvidia_gpus(str(tmp_path / "absent")) is None
    root = tmp_path / "gpus"
    root.mkdir()
    assert nvidia_gpus(str(root)) == []
    for bus, model in [("0000:1b:00.0", "NVIDIA H100 80GB HBM3"), ("0000:2c:00.0", "NVIDIA L4")]:
        (root / bus).mkdir()
        (root / bus / "information").write_text(
            f"Model: \t\t {model}\nIRQ:   \t\t 42\nGPU UUID: \t GPU-1234\n"
        )
    assert nvidia_gpus(str(root)) == ["NVIDIA H100 80GB HBM3", "NVIDIA L4"]


def test_the_backend_is_read_as_keras_reads_it_without_keras(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "keras")  # as before Keras is imported (restored after)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert keras_backend() == ("tensorflow", "the default")
    (tmp_path / "keras.json").write_text('{"backend": "jax", "floatx": "float32"}')
    assert keras_backend() == ("jax", str(tmp_path / "keras.json"))
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert keras_backend() == ("torch", "KERAS_BACKEND")
    (tmp_path / "keras.json").write_text("{not json")
    monkeypatch.delenv("KERAS_BACKEND")
    assert keras_backend() == ("tensorflow", "the default")


# --- describe(): versions against metadata --------------------------------------------------------


def test_versions_and_packages_agree_with_the_metadata():
    facts = describe()
    assert facts["python"] == platform.python_version() == facts["versions"]["python"]
    assert facts["platform"] == platform.platform() and facts["executable"] == sys.executable
    assert facts["gpq_keras"] == importlib.metadata.version("gpq-keras")
    assert facts["keras"] == importlib.metadata.version("keras") == keras.__version__
    assert facts["backend"] == keras.config.backend()
    for module, name in [("numpy", "numpy"), ("faiss", "faiss"), ("tensorflow", "tensorflow")]:
        assert facts["packages"][name] == _distribution_version(module), name
    for name in ("jax", "torch"):
        assert facts["backends"][name] == _distribution_version(name), name
    assert facts["backend_version"] == importlib.import_module(facts["backend"]).__version__
    assert set(facts["versions"]) == {"gpq_keras", "keras", "numpy", "python", facts["backend"]}
    dist = importlib.metadata.packages_distributions()["tensorflow"][0]
    if dist.replace("_", "-").lower() != "tensorflow":
        assert facts["distributions"]["tensorflow"].replace("_", "-") == dist.replace("_", "-")
    assert facts["devices"] is None and facts["memory_growth"] is None


def test_the_extras_are_setup_cfgs():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    extras = parser["options.extras_require"]
    assert set(environment.EXTRAS) == set(extras)
    for extra, names in environment.EXTRAS.items():
        required = [line.split(">")[0].split("[")[0].strip() for line in extras[extra].split()]
        assert set(required) == set(names) or (extra == "faiss" and required == ["faiss-cpu"])
    facts = describe()
    for extra, names in environment.EXTRAS.items():
        assert facts["extras"][extra] == all(facts["packages"][n] is not None for n in names)


def test_a_missing_package_is_none(monkeypatch):
    monkeypatch.setitem(
        environment.PACKAGES, "onnx", ("gpq_no_such_module", ("gpq-no-such-distribution",))
    )
    facts = describe()
    assert facts["packages"]["onnx"] is None and facts["extras"]["onnx"] is False
    line = next(x for x in doctor.report_lines(doctor.doctor_report()) if x.startswith("onnx "))
    assert "onnx not installed" in line and "pip install 'gpq-keras[onnx]'" in line


# --- run.json -------------------------------------------------------------------------------------


def test_run_json_keeps_its_keys_and_values():
    record = new_record(["gpq", "train"], {"config": None, "seed": 3})
    backend = keras.config.backend()
    assert set(record) == {
        "command",
        "settings",
        "config",
        "seed",
        "backend",
        "versions",
        "devices",
        "started",
    }
    assert record["backend"] == backend and record["seed"] == 3
    assert record["versions"] == {
        "gpq_keras": importlib.metadata.version("gpq-keras"),
        "keras": keras.__version__,
        "numpy": importlib.import_module("numpy").__version__,
        "python": platform.python_version(),
        backend: importlib.import_module(backend).__version__,
    }
    if backend == "tensorflow":
        import tensorflow as tf

        assert record["devices"] == [d.name for d in tf.config.list_logical_devices()]
    else:
        assert record["devices"] == [str(d) for d in keras.distribution.list_devices()]


# --- the command ----------------------------------------------------------------------------------


def test_doctor_prints_a_line_per_fact_and_json_of_the_same(tmp_path, capsys):
    out = tmp_path / "doctor.json"
    assert cli.main(["doctor", "--json", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"wrote {out}"
    assert [line.split()[0] for line in lines[:-1]] == LABELS
    report = json.loads(out.read_text())
    assert doctor.report_lines(report) == lines[:-1]  # the lines are the JSON's, nothing else
    facts = describe()
    for key in ("python", "gpq_keras", "keras", "backend", "packages", "extras", "cpu", "gpus"):
        assert report[key] == facts[key], key
    faiss = importlib.import_module("faiss")
    assert report["faiss_fast_scan"] == hasattr(faiss, "IndexPQFastScan")
    assert report["digits"] == {"loads": True, "images": 1797, "classes": 10, "error": None}
    by_label = dict(line.split(None, 1) for line in lines[:-1])
    assert by_label["python"].startswith(platform.python_version())
    assert f"keras {keras.__version__}" in by_label["gpq_keras"]
    assert by_label["devices"].startswith("not read (gpq doctor --devices")
    assert "AVX2" in by_label["cpu"] and "bfloat16" in by_label["cpu"]


def test_doctor_devices_lists_what_the_backend_sees(capsys):
    assert cli.main(["doctor", "--devices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    devices = dict(line.split(None, 1) for line in lines)["devices"]
    assert devices == ", ".join(new_record([], {})["devices"])


def test_digits_that_do_not_load_are_reported(monkeypatch, capsys):
    from gpq_keras.data import digits

    def broken():
        raise OSError("digits.npz: no such file")

    monkeypatch.setattr(digits, "load_raw", broken)
    assert cli.main(["doctor"]) == 0
    line = capsys.readouterr().out.splitlines()[-1]
    assert line == "digits     do not load: OSError: digits.npz: no such file"


def test_doctor_imports_no_backend_without_devices(tmp_path):
    """On the TensorFlow backend, `gpq doctor` imports neither TensorFlow nor Keras (nor the other
    backends): it reads metadata."""
    code = (
        "import json, sys\nfrom gpq_keras import cli\n"
        f"status = cli.main(['doctor', '--json', {str(tmp_path / 'd.json')!r}])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'tensorflow', 'keras', 'jax', 'torch', 'faiss_bridge'})\n"
        "print(json.dumps([status, heavy]))"
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == [0, []]
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["backend"] == "tensorflow" and report["backend_source"] == "KERAS_BACKEND"


def test_help_names_the_devices_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["doctor", "--help"])
    text = capsys.readouterr().out
    assert "--devices" in text and "imports Keras and the backend" in " ".join(text.split())
