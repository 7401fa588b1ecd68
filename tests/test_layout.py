"""The package's shape: imports run one way, data -> model -> retrieval -> metrics/viz -> server ->
cli, and one module imports faiss. Read from the sources (ast), so nothing is imported."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "gpq_keras"

# Layer of each module (a dotted prefix of its name); a module may import its own layer and those
# before it. The base modules come first: every layer uses them.
LAYERS = (
    (
        "base",
        (
            "gpq_keras",
            "config",
            "files",
            "parallel",
            "image_converter",
            "distribute",
            "environment",
        ),
    ),
    ("data", ("data",)),
    ("model", ("layers", "losses", "optimizers", "backbones", "trainers", "model", "convert")),
    ("retrieval", ("retrieval", "export")),
    ("metrics/viz", ("metrics", "viz", "training")),
    ("server", ("server",)),
    ("cli", ("cli",)),
)


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name):
    """The index in LAYERS of a gpq_keras module name."""
    rest = name.split(".", 1)[1] if "." in name else "gpq_keras"
    for number, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if rest == prefix or rest.startswith(prefix + "."):
                return number
    raise AssertionError(f"{name} is in no layer of tests/test_layout.py: add it there")


def imports(path):
    """(line, imported module) of every import in the file, those inside functions included."""
    tree = ast.parse(path.read_text(), str(path))
    package = (
        module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    )
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + [base]
                )
            yield node.lineno, base.rstrip(".")
            for alias in node.names:  # `from gpq_keras import metrics` imports a module
                yield node.lineno, f"{base}.{alias.name}".rstrip(".")


SOURCES = sorted(PACKAGE.rglob("*.py"))


def known_module(name):
    """`name` if it is a module or package of gpq_keras, else the longest prefix that is."""
    while name.startswith("gpq_keras"):
        relative = pathlib.Path(*name.split("."))
        if (PACKAGE.parent / relative).with_suffix(".py").exists() or (
            PACKAGE.parent / relative / "__init__.py"
        ).exists():
            return name
        name = name.rpartition(".")[0]
    return None


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_run_one_way(path):
    mine = layer_of(module_name(path))
    for line, name in imports(path):
        target = known_module(name)
        if target is None:
            continue
        theirs = layer_of(target)
        assert theirs <= mine, (
            f"{path.relative_to(PACKAGE.parent)}:{line} ({LAYERS[mine][0]}) imports {target} "
            f"({LAYERS[theirs][0]}), a later layer"
        )


def test_the_layer_table_sees_every_module():
    names = {module_name(path) for path in SOURCES}
    for name in names:
        layer_of(name)
    assert layer_of("gpq_keras.retrieval.index") == 3 and layer_of("gpq_keras.cli.train") == 6
    assert layer_of("gpq_keras.data.images") == 1 and layer_of("gpq_keras.model") == 2


def test_one_module_imports_faiss():
    importers = sorted(
        module_name(path)
        for path in SOURCES
        if any(name == "faiss" or name.startswith("faiss.") for _, name in imports(path))
    )
    assert importers == ["gpq_keras.retrieval.faiss_bridge"]


def test_one_module_per_backend_and_no_backend_branch_in_the_model():
    model = (PACKAGE / "model.py").read_text()
    assert "keras.config.backend()" not in model
    assert "import tensorflow" not in model and "import jax" not in model
    trainers = {path.stem for path in (PACKAGE / "trainers").glob("*.py")}
    assert {"tensorflow", "jax"} <= trainers
