"""autotts: offline discovery of test-time-scaling controllers by replaying recorded reasoning branches.

The public API, importable from here:

    import autotts
    store = autotts.open_store("data/synthetic")
    spec = autotts.load_controller("sc")
    result = autotts.evaluate(spec, [store], [0.0, 0.5, 1.0], autotts.EvalProtocol(draws=10))

Names are imported on first use (PEP 562), so `import autotts` stays cheap: it loads neither numpy
nor pyarrow. `autotts.evaluate` is the evaluate module, which is callable: `autotts.evaluate(...)`
calls `autotts.evaluate.evaluate(...)`, whichever was imported first, and patching the function
(`monkeypatch.setattr("autotts.evaluate.evaluate", ...)`) patches the call too. Every error a user may catch is in `autotts.errors`, and the
common ones are here too.
"""

# No other import at all (not even __future__, typing or importlib): `import autotts` costs
# next to nothing, and annotations here are strings.
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing

__version__ = "0.1.0"

# (public name, module, attribute or None for the module): imported by __getattr__ on first use.
_TABLE = (
    # replay stores
    ("Store", "autotts.store", "Store"),
    ("open_store", "autotts.store", "open_store"),
    ("write_store", "autotts.store", "write_store"),
    # the replay semantics
    ("Episode", "autotts.engine", "Episode"),
    # controllers
    ("ControllerSpec", "autotts.controller", "ControllerSpec"),
    ("load_controller", "autotts.controller", "load"),
    # evaluation
    ("EvalProtocol", "autotts.evaluate", "EvalProtocol"),
    ("Evaluation", "autotts.evaluate", "Evaluation"),
    ("evaluate", "autotts.evaluate", None),  # the module, callable as its evaluate()
    ("evaluate_sandboxed", "autotts.sandbox", "evaluate_sandboxed"),
    # environments
    ("EnvDef", "autotts.envdef", "EnvDef"),
    ("load_env", "autotts.envdef", "load_env"),
    ("WidthDepthEnv", "autotts.gym_env", "WidthDepthEnv"),
    # discovery
    ("DiscoverConfig", "autotts.discover", "DiscoverConfig"),
    ("run_discovery", "autotts.discover", "run_discovery"),
    # errors (all of them: autotts.errors)
    ("AutoTTSError", "autotts.errors", "AutoTTSError"),
    ("ConfigError", "autotts.errors", "ConfigError"),
    ("ControllerError", "autotts.errors", "ControllerError"),
    ("DataError", "autotts.errors", "DataError"),
    ("EvaluationError", "autotts.errors", "EvaluationError"),
    ("InvalidAction", "autotts.errors", "InvalidAction"),
    ("SandboxError", "autotts.errors", "SandboxError"),
    ("StoreError", "autotts.errors", "StoreError"),
    ("WeakSandboxError", "autotts.errors", "WeakSandboxError"),
)
_EXPORTS = {name: (module, attr) for name, module, attr in _TABLE}

__all__ = [  # the names of _EXPORTS
    "AutoTTSError",
    "ConfigError",
    "ControllerError",
    "ControllerSpec",
    "DataError",
    "DiscoverConfig",
    "EnvDef",
    "Episode",
    "EvalProtocol",
    "Evaluation",
    "EvaluationError",
    "InvalidAction",
    "SandboxError",
    "Store",
    "StoreError",
    "WeakSandboxError",
    "WidthDepthEnv",
    "__version__",
    "evaluate",
    "evaluate_sandboxed",
    "load_controller",
    "load_env",
    "open_store",
    "run_discovery",
    "write_store",
]


def __getattr__(name: str) -> "Any":
    try:
        module, attr = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'autotts' has no attribute {name!r}") from None
    # __import__, never an import statement: low modules import __version__ from this package,
    # so a visible import of the evaluator here would sit below them (the layers contract says so).
    __import__(module)
    value = sys.modules[module] if attr is None else getattr(sys.modules[module], attr)
    globals()[name] = value  # later lookups do not come back here
    return value


def __dir__() -> "list[str]":
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports these
    from typing import Any

    from autotts.controller import ControllerSpec
    from autotts.controller import load as load_controller
    from autotts.discover import DiscoverConfig, run_discovery
    from autotts.engine import Episode
    from autotts.envdef import EnvDef, load_env
    from autotts.errors import (
        AutoTTSError,
        ConfigError,
        ControllerError,
        DataError,
        EvaluationError,
        InvalidAction,
        SandboxError,
        StoreError,
        WeakSandboxError,
    )
    from autotts.evaluate import EvalProtocol, Evaluation, evaluate
    from autotts.gym_env import WidthDepthEnv
    from autotts.sandbox import evaluate_sandboxed
    from autotts.store import Store, open_store, write_store
