"""House style is checked with the tests, so a clean CI run means a ruff-clean tree."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.fail("ruff is missing: run scripts/setup.sh (the dev extra installs it)")
    done = subprocess.run([ruff, "check", "--output-format", "concise", str(REPO)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


#: docs/architecture.md §1: which stages each folder may import, at the top or inside a function (the core imports
#: none, not even lazily or by a module name in a string). The CLI layer (cli/, installed as salad.cli: the commands and
#: the demo) is the one place that reaches every stage.
ALLOWED_STAGES = {
    "salad": set(),
    "train": set(),
    "runtime": set(),
    "export": {"train"},
    "calibration": {"runtime"},
    "serve": {"runtime"},
    "similarity": {"onsite"},  # the estimator format, distances and forms that fit writes and onsite reads
    "onsite": {"runtime"},  # the Scorer its drift guard listens to and choose-bundle scores with
    "cli": {"train", "export", "calibration", "runtime", "serve", "similarity", "onsite"},
}
#: The folder of the CLI layer (a key of ALLOWED_STAGES).
CLI_LAYER = "cli"
#: Modules allowed one stage more than their folder, and which: the torch reference runner imports salad.train
#: lazily, inside its activation.
ENTRY_POINTS = {"runtime/torch_runner.py": {"train"}}
#: Modules outside the CLI layer that may import it: `python -m salad.train` reuses `salad train`'s parameters.
CLI_IMPORTERS = {"train/__main__.py"}
#: A module named in a string (`import_module("salad.train.x")`, `"salad.onsite.score:score_command"`).
_MODULE_STRING = re.compile(r"salad(\.[A-Za-z_][A-Za-z0-9_]*)+(:[A-Za-z_][A-Za-z0-9_]*)?")


def _stage_imports(path: Path, package: str) -> set[str]:
    """The salad.<stage> packages a file imports, absolute or relative, at the top, inside a function or by name in a string."""
    import ast

    here = ["salad"] + ([] if package == "salad" else [package]) + list(path.relative_to(REPO / package).parent.parts)
    stages = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.fullmatch(node.value):
            names = [node.value.partition(":")[0]]
        for name in names:
            parts = name.split(".")
            if parts[0] == "salad" and len(parts) > 1 and parts[1] in ALLOWED_STAGES:
                stages.add(parts[1])
    return stages


def test_imports_follow_the_design_tree() -> None:
    wrong = []
    for package, allowed in ALLOWED_STAGES.items():
        for path in sorted((REPO / package).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            exempt = ENTRY_POINTS.get(rel, set()) | ({CLI_LAYER} if rel in CLI_IMPORTERS else set())
            extra = _stage_imports(path, package) - allowed - exempt - {package}
            if extra:
                wrong.append(f"{rel} imports salad.{', salad.'.join(sorted(extra))}")
    assert not wrong, "imports outside the tree of docs/architecture.md §1:\n" + "\n".join(wrong)


def _imported_names(path: Path) -> set[str]:
    """Every dotted module name a file imports (`from a.b import c` gives a.b), anywhere in the file."""
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


def test_the_cli_layer_calls_only_public_stage_apis() -> None:
    """cli/ (the commands and the demo) imports a stage through its package (its __all__) or its `cli` module."""
    wrong = []
    for path in sorted((REPO / CLI_LAYER).rglob("*.py")):
        rel = str(path.relative_to(REPO))
        for name in _imported_names(path):
            parts = name.split(".")
            stage = parts[1] if parts[0] == "salad" and len(parts) > 2 else None
            if stage in ALLOWED_STAGES and stage not in ("salad", CLI_LAYER) and parts[2] != "cli":
                wrong.append(f"{rel} imports {name}")
    assert not wrong, "the CLI layer reaches past a stage's public API:\n" + "\n".join(wrong)


def test_only_entry_points_import_the_cli_layer() -> None:
    """No stage or core module imports salad.cli (the dispatcher that loads them): commands use salad.clitools."""
    wrong = []
    for folder in sorted(set(ALLOWED_STAGES) - {CLI_LAYER}):
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = str(path.relative_to(REPO))
            if rel in CLI_IMPORTERS:
                continue
            wrong += [f"{rel} imports {n}" for n in _imported_names(path) if n == "salad.cli" or n.startswith("salad.cli.")]
    assert not wrong, "\n".join(wrong)


#: docs/architecture.md §1: folders a console runs with salad-edge[runtime] alone, which never import torch or onnx (nor
#: the libraries only the train extra brings), not even inside a function. runtime/ is checked by running it without
#: them (tests/runtime/test_cli.py): its torch reference runner imports torch when it activates.
CONSOLE_FOLDERS = ("serve", "onsite")
#: What a console lacks: the train extra's graph and training libraries.
TRAIN_ONLY = {"torch", "torchvision", "onnx", "onnxscript", "onnxconverter_common", "sklearn", "scipy", "matplotlib"}


def test_console_folders_never_import_torch_or_onnx() -> None:
    """The DICOM node and the site's side (drift, choosing a bundle, similarity's reading side): numpy + ONNX Runtime."""
    wrong = []
    for folder in CONSOLE_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            wrong += [f"{path.relative_to(REPO)} imports {n}" for n in sorted(_imported_names(path)) if n.split(".")[0] in TRAIN_ONLY]
    assert not wrong, "a console module imports what only the train extra installs:\n" + "\n".join(wrong)


#: Every stage folder and the CLI layer → its name under the salad namespace (setup.py's package_dir): the rules
#: below (module length, import cycles) hold in each of them.
PACKAGES = {folder: "salad" if folder == "salad" else f"salad.{folder}" for folder in ALLOWED_STAGES}
#: docs/architecture.md §1: no module in these folders is longer than this many lines.
MAX_MODULE_LINES = 450


def test_every_folder_the_wheel_installs_is_checked() -> None:
    """setup.py's stage map and this file's agree, so a new stage folder cannot escape the rules above and below."""
    import ast

    tree = ast.parse((REPO / "setup.py").read_text())
    (stages,) = [ast.literal_eval(n.value) for n in ast.walk(tree)
                 if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "STAGES" for t in n.targets)]
    assert stages == PACKAGES, f"setup.py installs {stages}; tests/test_style.py checks {PACKAGES}"


def _modules() -> dict[str, Path]:
    """Every module of every folder, by its dotted name (a package by its __init__)."""
    out = {}
    for folder, name in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([name, *parts])] = path
    return out


def _import_graph() -> dict[str, set[str]]:
    """module → the package modules it imports anywhere: top level, inside a function or under `if TYPE_CHECKING:`."""
    import ast

    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level else []
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def test_no_import_cycles_counting_imports_inside_functions_and_for_type_checking() -> None:
    """Modules form a tree: a type-only import is a dependency too (the two modules cannot be understood apart)."""
    graph = _import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, "modules that import each other (directly or through others):\n" + "\n".join(map(str, cycles))


def test_no_module_is_longer_than_the_limit() -> None:
    long = {str(p.relative_to(REPO)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them by idea): {long}"


#: No function or method in these folders is longer than this many lines, from its `def` to its last line (a click
#: command's option decorators are declarations, not steps, and do not count): a longer one is split into named steps.
MAX_FUNCTION_LINES = 100


def _function_lengths() -> dict[str, int]:
    """`folder/module.py:name` (`Class.name` for a method) → lines from its `def` to its end, for every function."""
    import ast

    lengths: dict[str, int] = {}
    for path in _modules().values():
        rel = str(path.relative_to(REPO))

        def visit(node: ast.AST, prefix: str, rel: str = rel) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    name = f"{prefix}{child.name}"
                    lengths[f"{rel}:{name}"] = max(lengths.get(f"{rel}:{name}", 0), (child.end_lineno or child.lineno) - child.lineno + 1)
                    visit(child, f"{name}.")
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")
                else:
                    visit(child, prefix)

        visit(ast.parse(path.read_text()), "")
    return lengths


def test_no_function_is_longer_than_the_limit() -> None:
    """Long orchestrators become named steps (issue 27), in every stage folder and the CLI layer."""
    long = {name: n for name, n in _function_lengths().items() if n > MAX_FUNCTION_LINES}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {long}"


def test_the_function_rule_sees_methods_and_nested_functions() -> None:
    """The rule measures what it claims to: a method and a function inside a function, by name, `def` to end."""
    lengths = _function_lengths()
    assert lengths["runtime/scorer.py:Scorer.score"] > 20  # a method, named by its class
    assert "cli/demo.py:_Demo.train.do_train" in lengths  # a step's closure, named by the function around it
