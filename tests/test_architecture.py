"""The package's layers, checked from the source: which side may import which (docs/architecture.md).
The base is three layers: core (errors, outputs: nothing about Caffe), caffe/ (the schema, reading
and writing nets and weights, built-in models) and graph/ (the DAG, shapes, costs, the in-memory
model), each standing only on those below it. Transforms and runtime stand on the base only;
learning on the base, transforms and runtime; cli on everything; nothing on cli."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "deeprebirth"

BASE = {"core", "caffe", "graph"}
ALLOWED = {
    "core": {"core"},
    "caffe": {"core", "caffe"},
    "graph": {"core", "caffe", "graph"},
    "transforms": BASE | {"transforms"},
    "runtime": BASE | {"runtime"},
    "learning": BASE | {"transforms", "runtime", "learning"},
    "cli": BASE | {"transforms", "runtime", "learning", "cli"},
}


def side(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] in ("errors", "outputs", "__init__"):
        return "core"
    return parts[1]


def test_side_separates_the_three_base_layers():
    assert side("deeprebirth.caffe.netio") == "caffe"
    assert side("deeprebirth.graph.dag") == "graph"
    assert side("deeprebirth.outputs") == side("deeprebirth.errors") == side("deeprebirth") == "core"
    assert "graph" not in ALLOWED["caffe"] and "caffe" not in ALLOWED["core"]


def imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):      # function-level imports count too
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deeprebirth"):
            yield node.lineno, node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("deeprebirth"):
                    yield node.lineno, alias.name


def test_every_import_goes_down_the_layers():
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        me = side("deeprebirth." + ".".join(path.relative_to(PKG).with_suffix("").parts))
        for line, module in imports(path):
            if side(module) not in ALLOWED[me]:
                bad.append(f"{path.relative_to(PKG.parent)}:{line} ({me}) imports {module} ({side(module)})")
    assert not bad, "\n".join(bad)


def test_no_relative_imports_and_no_module_shadows_the_standard_library():
    import sys
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text())
        assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), path
        assert path.stem not in sys.stdlib_module_names or path.stem == "__init__", f"{path} shadows the stdlib"


def test_no_function_over_80_lines():
    long = []
    for path in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{path.relative_to(PKG.parent)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "\n".join(long)


def test_top_level_help_names_every_built_in_model():
    from click.testing import CliRunner

    from deeprebirth.caffe import builtin
    from deeprebirth.cli import main
    text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    for name in builtin.NAMES:
        assert name in text, name


def test_every_command_is_registered():
    from deeprebirth.cli import main
    commands = {p.stem[:-4].replace("_", "-") for p in (PKG / "cli").glob("*_cmd.py")}
    assert commands and commands <= set(main.commands), commands - set(main.commands)
