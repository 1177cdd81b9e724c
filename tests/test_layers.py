"""The package's imports flow one way: each subpackage imports only from its own layer or the
layers below it (docs/development.md#layers). Reads the source (every ``import`` statement,
those inside functions included), so it also catches an import that only runs on one path."""
import ast
import os

from tests.common import REPO

PACKAGE = os.path.join(REPO, "oneshot_d2")

# bottom to top; a module may import its own layer and those below
LAYERS = [
    {"errors", "version", "utils"},
    {"compat", "config"},
    {"data"},
    {"modeling"},
    {"checkpoint", "evaluation", "export"},
    {"inference"},
    {"engine"},
    {"benchmark"},
    {"cli"},
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _part(module: str) -> str:
    """``oneshot_d2.data.io`` -> ``data``; ``oneshot_d2.cli`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _source_files(root: str):
    """Every ``.py`` file under ``root``, in a fixed order."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(folder, f)


def _imported_modules(path: str, package: str):
    """(line, absolute module) of every oneshot_d2 import in a source file of ``package``."""
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "oneshot_d2":  # from oneshot_d2 import x: the submodule x
                for alias in node.names:
                    yield node.lineno, f"oneshot_d2.{alias.name}"
            elif target.startswith("oneshot_d2."):
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("oneshot_d2."):
                    yield node.lineno, alias.name


def layer_violations(root: str = PACKAGE):
    """``file:line: a -> b`` for each import from a higher layer (or from an unknown part)."""
    out = []
    for path in _source_files(root):
        rel = os.path.relpath(path, os.path.dirname(root))[:-3].replace(os.sep, ".")
        package = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel.rsplit(".", 1)[0]
        source = _part(rel)
        if source in ("", "__init__"):  # oneshot_d2/__init__.py: the package's entry
            continue
        for line, target in _imported_modules(path, package):
            part = _part(target)
            if part == source:
                continue
            if source not in LAYER_OF or part not in LAYER_OF \
                    or LAYER_OF[part] > LAYER_OF[source]:
                out.append(f"{os.path.relpath(path, REPO)}:{line}: {source} -> {part}")
    return out


def test_every_subpackage_has_a_layer():
    parts = {f[:-3] if f.endswith(".py") else f for f in os.listdir(PACKAGE)
             if not f.startswith(("_", ".")) and (f.endswith(".py") or os.path.isdir(
                 os.path.join(PACKAGE, f)))}
    assert parts - set(LAYER_OF) == set()


def test_imports_flow_one_way():
    assert layer_violations() == []


def test_an_upward_import_is_found(tmp_path):
    pkg = tmp_path / "oneshot_d2"
    (pkg / "data").mkdir(parents=True)
    (pkg / "data" / "x.py").write_text("def f():\n    from ..inference.study import Study\n")
    (pkg / "utils").mkdir()
    (pkg / "utils" / "y.py").write_text("from oneshot_d2.errors import DatasetError\n"
                                        "from ..config import load_config\n")
    found = layer_violations(str(pkg))
    assert [v.split(": ", 1)[1] for v in found] == ["data -> inference", "utils -> config"]


# Libraries that take a second or more to import, or that only some paths need: imported inside
# the functions that use them, so that the processes which never do (every spawned training and
# prediction worker, every tool run) do not pay for them.
LAZY_LIBRARIES = ("sklearn", "onnx", "onnxruntime", "matplotlib", "highdicom", "timm")


def eager_heavy_imports(root: str = PACKAGE):
    """``file:line: library`` for each import of a :data:`LAZY_LIBRARIES` library that runs
    when its module is imported: at the top level, or in a top-level if / try / with block
    (not in ``if TYPE_CHECKING:``, which never runs, nor in a function or class)."""
    out = []
    for path in _source_files(root):
        with open(path, encoding="utf-8") as source:
            tree = ast.parse(source.read(), path)
        stack = list(tree.body)
        while stack:
            node = stack.pop(0)
            if isinstance(node, ast.If) and ast.unparse(node.test) in (
                    "TYPE_CHECKING", "typing.TYPE_CHECKING"):
                stack.extend(node.orelse)
                continue
            if isinstance(node, (ast.If, ast.Try, ast.TryStar, ast.ExceptHandler, ast.With)):
                stack.extend(n for n in ast.iter_child_nodes(node) if isinstance(
                    n, (ast.stmt, ast.ExceptHandler)))
                continue
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                if name.split(".")[0] in LAZY_LIBRARIES:
                    out.append((os.path.relpath(path, REPO), node.lineno, name))
    return [f"{path}:{line}: {name}" for path, line, name in sorted(out)]


def test_heavy_libraries_are_imported_where_used():
    # catches e.g. `from sklearn import metrics` back at the top of classification_metrics.py:
    # 1.3 s more for every process that imports the trainer
    assert eager_heavy_imports() == []


def test_an_eager_heavy_import_is_found(tmp_path):
    pkg = tmp_path / "oneshot_d2"
    pkg.mkdir()
    (pkg / "a.py").write_text("import numpy\ntry:\n    import onnx\nexcept ImportError:\n"
                              "    import onnxruntime\n\ndef f():\n"
                              "    from sklearn import metrics\n\nclass A:\n"
                              "    def g(self):\n        import timm\n\n"
                              "if TYPE_CHECKING:\n    import highdicom\nelse:\n"
                              "    import matplotlib\n")
    (pkg / "b.py").write_text("import contextlib\nwith contextlib.suppress(ImportError):\n"
                              "    from sklearn.metrics import roc_auc_score\n")
    assert [v.split(": ", 1)[1] for v in eager_heavy_imports(str(pkg))] == [
        "onnx", "onnxruntime", "matplotlib", "sklearn.metrics"]
