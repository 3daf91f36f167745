"""Settings of a discovery run: what the agent talks to, what it may spend, how candidates are
evaluated. `DiscoverConfig.from_env` fills them from `AUTOTTS_*` environment variables, below the
command-line flags; docs/discovery.md lists every variable.

Only a few settings define a run's *identity* (`identity()`): a run directory refuses to resume
under a different identity, because its rounds would no longer be the rounds of one run. The rest
(rounds, spend cap, workers, executor, timeouts) may change between invocations: results do not
depend on them, only how many rounds run and how fast.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotts.discover.race import DEFAULT_RACE_DRAWS, DEFAULT_RACE_Z
from autotts.errors import ConfigError
from autotts.settings import DISCOVER, first_given, resolve

if TYPE_CHECKING:
    from autotts.envdef import EnvDef
    from autotts.evaluate import EvalProtocol

# USD per million tokens (input, output). List prices of a few common chat models (2025); prices
# change, so AUTOTTS_PRICES (a JSON file or inline JSON object) overrides or extends this table:
#   {"my-model": {"input": 0.5, "output": 1.5}}
# A model served by a local `vllm serve` costs nothing: give it {"input": 0, "output": 0}.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4o": {"input": 2.50, "output": 10.00},
    "gpt-4.1": {"input": 2.00, "output": 8.00},
    "gpt-4.1-mini": {"input": 0.40, "output": 1.60},
    "gpt-4.1-nano": {"input": 0.10, "output": 0.40},
    "o4-mini": {"input": 1.10, "output": 4.40},
    "o3": {"input": 2.00, "output": 8.00},
    "gpt-5": {"input": 1.25, "output": 10.00},
    "gpt-5-mini": {"input": 0.25, "output": 2.00},
    "gpt-5-nano": {"input": 0.05, "output": 0.40},
}

DEFAULT_SEEDS = ("sc", "asc", "esc", "parallel_probe")
# Compared with the selected candidate on the held-out split only: the strongest built-ins, which
# the agent never sees (the seeds are shown to it, and are compared there too).
DEFAULT_BASELINES = ("cmc", "dynaact")
DEFAULT_ROUNDS = 10
MAX_CANDIDATES = 8  # per round: more would not fit one response's token budget anyway


def _env(name: str) -> str | None:
    v = os.environ.get(name)
    return v if v not in (None, "") else None


def _env_num(name: str, kind: type, default: Any) -> Any:
    v = _env(name)
    if v is None:
        return default
    try:
        return kind(v)
    except ValueError:
        raise ConfigError(f"{name} must be a {kind.__name__}, got {v!r}") from None


def _env_bool(name: str) -> bool:
    v = (_env(name) or "").lower()
    if v in ("", "0", "false", "no", "off"):
        return False
    if v in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be 1/0 (true/false), got {v!r}")


def _names(spec: str) -> tuple[str, ...]:
    """A comma-separated list of controllers; "none" is the empty list."""
    if spec.strip().lower() == "none":
        return ()
    return tuple(s.strip() for s in spec.split(",") if s.strip())


def load_prices(spec: str | None) -> dict[str, dict[str, float]]:
    """The default price table updated by `spec`: a path to a JSON file, or inline JSON."""
    table = {k: dict(v) for k, v in DEFAULT_PRICES.items()}
    if not spec:
        return table
    text = spec
    if not spec.lstrip().startswith("{"):
        try:
            text = Path(spec).expanduser().read_text()
        except OSError as e:
            raise ConfigError(f"AUTOTTS_PRICES: cannot read {spec}: {e.strerror or e}") from None
    try:
        extra = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"AUTOTTS_PRICES: not valid JSON: {e}") from None
    if not isinstance(extra, dict):
        raise ConfigError("AUTOTTS_PRICES must be a JSON object: model -> {input, output}")
    for model, p in extra.items():
        ok = isinstance(p, dict) and all(
            isinstance(p.get(k), int | float) and not isinstance(p.get(k), bool) and p[k] >= 0
            for k in ("input", "output")
        )
        if not ok:
            raise ConfigError(
                f"AUTOTTS_PRICES: {model!r} needs non-negative 'input' and 'output' "
                "(USD per million tokens)"
            )
        table[str(model)] = {"input": float(p["input"]), "output": float(p["output"])}
    return table


def price_for(model: str, prices: dict[str, dict[str, float]]) -> dict[str, float] | None:
    """The model's price; OpenRouter-style names ('openai/gpt-4o-mini') fall back to the part
    after the last slash."""
    if model in prices:
        return prices[model]
    short = model.rsplit("/", 1)[-1]
    return prices.get(short)


@dataclass
class DiscoverConfig:
    env: str
    run_dir: Path
    model: str | None = None
    base_url: str | None = None
    # Never written to the run directory, the logs or the sandbox's environment.
    api_key: str | None = field(default=None, repr=False)
    rounds: int = DEFAULT_ROUNDS
    budget_usd: float | None = None
    critic: str | None = None  # critic model; None = no critic call
    seeds: tuple[str, ...] = DEFAULT_SEEDS
    baselines: tuple[str, ...] = DEFAULT_BASELINES  # held-out only; () for none
    seed: int = 0  # the draw protocol's first seed
    workers: int = 2
    heldout_draws: int | None = None  # None: the environment's draws
    trace_draws: int = 2  # draws per (store, β) whose traces feed the digests
    # Racing over draws (autotts/discover/race.py): a candidate's sweep runs its first
    # race_draws draws and stops when its objective's optimistic bound (z = race_z) is below the
    # best so far. 0: off, every candidate is swept in full.
    race_draws: int = DEFAULT_RACE_DRAWS
    race_z: float = DEFAULT_RACE_Z
    smoke_questions: int = 3
    smoke_draws: int = 1
    max_tokens: int = 8192
    temperature: float | None = None
    request_timeout: float = 600.0
    max_attempts: int = 6
    retry_base_s: float = 2.0
    offline: bool = False  # replay: a cache miss is an error, never an HTTP call
    cache_dir: Path | None = None  # default RUN_DIR/cache
    prices: dict[str, dict[str, float]] = field(default_factory=lambda: load_prices(None))
    recent: int = 1  # most recent candidates shown in detail in the prompt (besides the best)
    sandbox_limits: dict[str, Any] | None = None
    # Evaluate candidates even where the OS cannot keep them from the host's files and network.
    allow_weak_sandbox: bool = False
    candidates: int = 1  # controller files asked for per round, evaluated concurrently
    executor: str = "local"  # where evaluations run: "local" processes or "ray"
    ray_address: str | None = None  # None with executor "ray": a local runtime on 127.0.0.1

    @classmethod
    def from_env(cls, env: str | Path, run_dir: str | Path, **flags: Any) -> DiscoverConfig:
        """Flags (non-None keyword arguments) win over AUTOTTS_* variables, which win over the
        defaults. The API key comes from AUTOTTS_API_KEY, else OPENAI_API_KEY."""
        seeds = _env("AUTOTTS_SEEDS")
        baselines = _env("AUTOTTS_BASELINES")
        critic = _env("AUTOTTS_CRITIC")
        cfg = cls(
            env=str(env),
            run_dir=Path(run_dir),
            model=_env("AUTOTTS_MODEL"),
            base_url=_env("AUTOTTS_BASE_URL") or _env("OPENAI_BASE_URL"),
            api_key=_env("AUTOTTS_API_KEY") or _env("OPENAI_API_KEY"),
            rounds=_env_num("AUTOTTS_ROUNDS", int, DEFAULT_ROUNDS),
            budget_usd=_env_num("AUTOTTS_BUDGET_USD", float, None),
            critic=critic,
            seeds=tuple(s.strip() for s in seeds.split(",") if s.strip()) if seeds
            else DEFAULT_SEEDS,
            baselines=_names(baselines) if baselines is not None else DEFAULT_BASELINES,
            seed=_env_num("AUTOTTS_SEED", int, 0),
            workers=_env_num("AUTOTTS_WORKERS", int, max(1, min(os.cpu_count() or 1, 8))),
            heldout_draws=_env_num("AUTOTTS_HELDOUT_DRAWS", int, None),
            trace_draws=_env_num("AUTOTTS_TRACE_DRAWS", int, 2),
            race_draws=_env_num("AUTOTTS_RACE_DRAWS", int, DEFAULT_RACE_DRAWS),
            race_z=_env_num("AUTOTTS_RACE_Z", float, DEFAULT_RACE_Z),
            max_tokens=_env_num("AUTOTTS_MAX_TOKENS", int, 8192),
            temperature=_env_num("AUTOTTS_TEMPERATURE", float, None),
            request_timeout=_env_num("AUTOTTS_REQUEST_TIMEOUT", float, 600.0),
            max_attempts=_env_num("AUTOTTS_MAX_ATTEMPTS", int, 6),
            retry_base_s=_env_num("AUTOTTS_RETRY_BASE", float, 2.0),
            offline=_env_bool("AUTOTTS_OFFLINE"),
            cache_dir=Path(_env("AUTOTTS_CACHE_DIR")) if _env("AUTOTTS_CACHE_DIR") else None,
            prices=load_prices(_env("AUTOTTS_PRICES")),
            candidates=_env_num("AUTOTTS_CANDIDATES", int, 1),
            executor=_env("AUTOTTS_EXECUTOR") or "local",
            ray_address=_env("AUTOTTS_RAY_ADDRESS"),
        )
        for k, v in flags.items():
            if v is not None:
                setattr(cfg, k, v)
        if cfg.critic in ("1", "true", "same"):
            cfg.critic = cfg.model
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.rounds < 0:
            raise ConfigError(f"--rounds must be >= 0, got {self.rounds}")
        if self.budget_usd is not None and self.budget_usd < 0:
            raise ConfigError(f"--budget-usd must be >= 0, got {self.budget_usd}")
        for name in ("workers", "trace_draws", "smoke_questions", "smoke_draws", "max_tokens",
                     "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.race_draws != 0 and self.race_draws < max(2, self.trace_draws):
            raise ConfigError(
                f"--race-draws must be 0 (off) or at least {max(2, self.trace_draws)} (2, and "
                f"the traced draws, AUTOTTS_TRACE_DRAWS={self.trace_draws}, which the race's "
                f"first draws hold), got {self.race_draws}")
        if not (math.isfinite(self.race_z) and self.race_z > 0):
            raise ConfigError(f"AUTOTTS_RACE_Z must be a positive number, got {self.race_z}")
        if self.heldout_draws is not None and self.heldout_draws < 1:
            raise ConfigError(f"held-out draws must be at least 1, got {self.heldout_draws}")
        if not self.seeds:
            raise ConfigError("AUTOTTS_SEEDS names no seed controller")
        if not 1 <= self.candidates <= MAX_CANDIDATES:
            raise ConfigError(f"--candidates must be between 1 and {MAX_CANDIDATES}, got "
                              f"{self.candidates}")
        from autotts.executors import EXECUTORS

        if self.executor not in EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got "
                              f"{self.executor!r}")
        if self.ray_address and self.executor != "ray":
            raise ConfigError("--ray-address needs --executor ray")

    def protocol(self, env: EnvDef, split: str = "search", draws: int | None = None) -> EvalProtocol:
        """The protocol candidates are evaluated under on `split`: the same precedence as eval
        and sweep (autotts/settings.py), with the run's seed and held-out draws as the flags
        (AUTOTTS_HELDOUT_DRAWS, else the environment's heldout_draws, else its draws) over the
        environment file. `draws` fixes the draws of one stage (smoke, traces)."""
        held = split == "heldout" or split.startswith("heldout:")
        return resolve(DISCOVER, env, split, seed=self.seed,
                       draws=first_given(draws, self.heldout_draws if held else None)).proto

    def cache_path(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.run_dir / "cache"

    def request_params(self) -> dict[str, Any]:
        """Sampling parameters sent with every request (and part of its cache key). OpenAI's
        reasoning models take max_completion_tokens; everything else max_tokens."""
        model = (self.model or "").rsplit("/", 1)[-1]
        reasoning = model.startswith(("o1", "o3", "o4", "gpt-5"))
        params: dict[str, Any] = {
            "max_completion_tokens" if reasoning else "max_tokens": self.max_tokens
        }
        if self.temperature is not None:
            params["temperature"] = self.temperature
        return params
