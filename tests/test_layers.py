"""The layering of docs/design.md §2 holds: import-linter's contracts (pyproject.toml,
[tool.importlinter]) pass, every autotts module has a layer, a wrong-way import fails them, and
the built-in controllers import only numpy, scipy and the standard library. Also the public API
of `autotts/__init__.py` and the one private Ray name the code relies on."""

from __future__ import annotations

import ast
import importlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

from tests.conftest import require_module

ROOT = Path(__file__).resolve().parents[1]
CONTROLLER_IMPORTS = {"numpy", "scipy"}  # besides the standard library


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports on the autotts package and pyproject.toml under `root`."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which(
        "lint-imports")
    assert exe, "lint-imports is missing: pip install -e '.[dev]' (import-linter)"
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([exe, "--no-cache", "--config", str(root / "pyproject.toml")],
                          capture_output=True, text=True, cwd=root, env=env, timeout=300)


def broken_part(out: str) -> str:
    """The 'Broken contracts' section of lint-imports' report (the whole report without one)."""
    return out[out.find("Broken contracts"):] if "Broken contracts" in out else out


def layer_names() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    assert layers["containers"] == ["autotts"]
    return {name.strip() for layer in layers["layers"] for name in re.split(r"[|:]", layer)}


def top_modules() -> set[str]:
    """The modules and subpackages directly below autotts (what a layer can name)."""
    pkg = ROOT / "autotts"
    names = {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name for p in pkg.glob("*/__init__.py")}
    return names


def foreign_imports(source: str) -> list[str]:
    """Modules a controller file imports that are neither numpy, scipy nor the standard library."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if node.level == 0 else ["." * node.level]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in CONTROLLER_IMPORTS and top not in sys.stdlib_module_names:
                bad.append(name)
    return bad


def test_import_contracts_hold() -> None:
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, broken_part(proc.stdout + proc.stderr)
    assert "BROKEN" not in proc.stdout and proc.stdout.count("KEPT") >= 3, proc.stdout


def test_every_module_has_a_layer() -> None:
    missing = top_modules() - layer_names()
    assert not missing, f"add these autotts modules to a layer in pyproject.toml: {sorted(missing)}"
    stale = layer_names() - top_modules()
    assert not stale, f"layers in pyproject.toml name modules that do not exist: {sorted(stale)}"


def test_a_wrong_way_import_breaks_the_layers(tmp_path: Path) -> None:
    """The store importing the evaluator (even lazily, inside a function) breaks the contract,
    and the report names the import."""
    shutil.copytree(ROOT / "autotts", tmp_path / "autotts",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    store = tmp_path / "autotts" / "store.py"
    store.write_text(store.read_text() + "\n\ndef wrong_way():\n    import autotts.evaluate\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "Dependencies run one way (docs/design.md §2) BROKEN" in proc.stdout, proc.stdout
    assert "autotts.store -> autotts.evaluate" in proc.stdout, proc.stdout


def test_the_collector_may_not_reach_past_the_store(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "autotts", tmp_path / "autotts",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    writer = tmp_path / "autotts" / "collect" / "writer.py"
    writer.write_text(writer.read_text() + "\n\ndef wrong_way():\n    import autotts.executors\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "autotts.collect.writer -> autotts.executors" in proc.stdout, proc.stdout


def test_controllers_import_only_numpy_scipy_and_the_standard_library() -> None:
    files = sorted((ROOT / "controllers").glob("*.py"))
    assert len(files) >= 9
    bad = {f.name: foreign_imports(f.read_text()) for f in files}
    assert not {k: v for k, v in bad.items() if v}, bad


def test_the_controller_check_catches_a_foreign_import() -> None:
    assert foreign_imports("import numpy as np\nfrom scipy import stats\nimport math\n") == []
    assert foreign_imports("import autotts.store\nfrom pandas import DataFrame\n"
                           "from . import x\n") == ["autotts.store", "pandas", "."]


# ---- the public API -------------------------------------------------------------------------


def private_uses(source: str, module: str) -> list[str]:
    """Underscore names taken from another autotts module: `from autotts.x import _y` (x not
    `module`), `import autotts.x._y`, and `autotts.x._y` attribute chains. Dunder names are fine."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "autotts" or node.module.startswith("autotts.")):
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if (private or any(p.startswith("_") and not p.startswith("__")
                                   for p in node.module.split("."))) and node.module != module:
                    found.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "autotts" and any(
                        p.startswith("_") and not p.startswith("__") for p in parts):
                    found.append(alias.name)
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_module_imports_another_modules_private_names() -> None:
    bad = []
    for path in sorted((ROOT / "autotts").rglob("*.py")):
        if "_builtin" in path.parts:
            continue
        mod = module_name(path)
        bad += [f"{mod}: {name}" for name in private_uses(path.read_text(), mod)]
    assert not bad, "imports of another module's underscore names:\n" + "\n".join(bad)


def test_the_private_name_check_catches_one() -> None:
    assert private_uses("from autotts.engine import _describe\n", "autotts.batch") == [
        "autotts.engine._describe"]
    assert private_uses("import autotts._builtin.x\n", "autotts.paths") == ["autotts._builtin.x"]
    assert private_uses("from autotts.engine import Episode, __doc__\n", "autotts.x") == []
    assert private_uses("from autotts.engine import _describe\n", "autotts.engine") == []


def test_public_api_resolves_and_matches_all() -> None:
    import autotts

    for name in autotts.__all__:
        assert getattr(autotts, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        autotts.nothing  # noqa: B018
    from autotts import errors, evaluate

    # The module, callable as its function (a submodule of the same name binds on the package).
    assert evaluate is sys.modules["autotts.evaluate"] and callable(evaluate)
    assert autotts.InvalidAction is errors.InvalidAction
    assert autotts.load_controller("sc").name == "sc"


def test_import_autotts_is_cheap_and_evaluate_is_callable() -> None:
    """`import autotts` loads no other module (no numpy or pyarrow, not even typing);
    `autotts.evaluate` calls the evaluator whichever was imported first, and a patched function
    is the one called."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import autotts\n"
        "loaded = sorted(set(sys.modules) - before)\n"
        "assert loaded == ['autotts'], loaded\n"
        "import autotts.evaluate\n"
        "from autotts.evaluate import score\n"
        "from autotts import evaluate\n"
        "assert evaluate is autotts.evaluate is sys.modules['autotts.evaluate']\n"
        "autotts.evaluate.evaluate = lambda *a, **k: ('patched', a, k)\n"
        "assert autotts.evaluate('sc', [], x=1) == ('patched', ('sc', []), {'x': 1})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_errors_are_importable_from_their_old_places() -> None:
    from autotts import errors
    from autotts.collect.engines import EngineError
    from autotts.collect.questions import QuestionError
    from autotts.collect.ray_shards import ShardError
    from autotts.collect.writer import CollectError
    from autotts.datasets import DataError
    from autotts.discover.agent import AgentError, SpendCapReached
    from autotts.engine import InvalidAction
    from autotts.evaluate import EvaluationError
    from autotts.sandbox import SandboxError
    from autotts.sandbox.lockdown import WeakSandboxError

    for cls in (EngineError, QuestionError, ShardError, CollectError, DataError, AgentError,
                SpendCapReached, InvalidAction, EvaluationError, SandboxError, WeakSandboxError):
        assert getattr(errors, cls.__name__) is cls
        assert cls.__module__ == "autotts.errors"


# ---- Ray ------------------------------------------------------------------------------------


def test_ray_private_constant_still_exists() -> None:
    """raysupport.loopback_only switches Ray's import-time ENABLE_RAY_CLUSTER (no public API for
    it): fail loudly, naming it, the day a Ray version drops or renames it."""
    require_module("ray")
    from autotts.raysupport import ray_cluster_constants

    constants = ray_cluster_constants()
    assert isinstance(getattr(constants, "ENABLE_RAY_CLUSTER", None), bool), (
        "ray._private.ray_constants.ENABLE_RAY_CLUSTER is gone: update "
        "autotts/raysupport.py:loopback_only for this Ray version")
    assert constants.ENABLE_RAY_CLUSTERS_ENV_VAR == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"



def test_the_old_name_of_the_evaluation_protocol_still_imports() -> None:
    """Scripts written against the old name keep working; once renamed, with a
    DeprecationWarning that names the new one."""
    mod = importlib.import_module("autotts.evaluate")
    old = "Proto" + "col"  # spelled so that the rename's command leaves it alone
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cls = getattr(mod, old)
    assert cls.__module__ == "autotts.units" and cls(draws=3).draws == 3
    if cls.__name__ != old:
        assert cls.__name__ == "Eval" + old
        assert [str(w.message) for w in caught] == [
            f"autotts.evaluate.{old} is deprecated: use Eval{old}"]
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        mod.Nothing  # noqa: B018
