"""Which evaluation settings a command runs with: the one place that decides precedence.

`autotts eval`, `autotts sweep`, `autotts compare` and `autotts discover` all evaluate under a
protocol (draws, draw protocol, pool, seed, probe cost κ, budget) over a β grid. Each setting
comes from the first layer that gives it:

  1. a flag the user gave explicitly (options default to None, so "not given" is visible);
  2. the environment file (`--env`, env/*.toml: [replay] probe_cost, branch_cap, budget;
     [evaluation] draws, heldout_draws, protocol, betas), when there is one;
  3. the command's own defaults (`EVAL`, `SWEEP`, `COMPARE`, `DISCOVER` below).

The seed has no field in an environment file; discover's "flags" are its DiscoverConfig values
(command-line flags over AUTOTTS_* variables, discover/config.py). `first_given` is the rule
itself, for settings that are not part of the protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autotts.envdef import EnvDef
    from autotts.units import EvalProtocol

FIELDS = ("draws", "protocol", "pool", "seed", "probe_cost", "budget", "betas")


def first_given(*layers: Any) -> Any:
    """The first value that is not None: flag, then environment, then default."""
    return next((v for v in layers if v is not None), None)


@dataclass(frozen=True)
class Defaults:
    """A command's defaults, used where neither a flag nor the environment file gives a value."""

    draws: int
    betas: tuple[float, ...]
    protocol: str = "shuffle"
    pool: int | None = None  # None: every branch of the question
    seed: int = 0
    probe_cost: int = 0
    budget: int | None = None


EVAL = Defaults(draws=100, betas=(0.0, 0.25, 0.5, 0.75, 1.0))
SWEEP = Defaults(draws=20, betas=tuple(round(0.1 * i, 1) for i in range(11)))
COMPARE = Defaults(draws=100, betas=tuple(round(0.1 * i, 1) for i in range(11)))
DISCOVER = Defaults(draws=20, betas=(0.0, 0.25, 0.5, 0.75, 1.0))  # discover always has an env


@dataclass(frozen=True)
class Settings:
    """The effective protocol and β grid, and where each setting came from."""

    proto: EvalProtocol
    betas: list[float]
    sources: dict[str, str]  # setting -> "flag", "env" or "default"

    def describe(self) -> str:
        """The protocol in words, as the commands' headers show it: the draw protocol and draws,
        then pool, κ and budget where they are set (so a default run reads as before)."""
        return describe_protocol(self.proto)


def describe_protocol(proto: EvalProtocol) -> str:
    parts = [f"{proto.protocol}, {proto.draws} draws"]
    if proto.pool is not None:
        parts.append(f"pool {proto.pool}")
    if proto.probe_cost:
        parts.append(f"κ = {proto.probe_cost}")
    if proto.budget is not None:
        parts.append(f"budget {proto.budget:,}")
    return ", ".join(parts)


def env_layer(env: EnvDef, split: str = "search") -> dict[str, Any]:
    """What an environment file says about each setting (its own defaults included: an
    environment file is a complete protocol). Draws are the split's (held-out: heldout_draws)."""
    return {
        "draws": env.draws_for(split),
        "protocol": env.protocol,
        "pool": env.branch_cap,
        "probe_cost": env.probe_cost,
        "budget": env.budget,
        "betas": list(env.betas),
    }


def resolve(defaults: Defaults, env: EnvDef | None = None, split: str = "search", *,
            draws: int | None = None, protocol: str | None = None, pool: int | None = None,
            seed: int | None = None, probe_cost: int | None = None, budget: int | None = None,
            betas: Sequence[float] | None = None) -> Settings:
    """The settings a command runs with: each keyword is a flag (None: not given), over the
    environment file `env` (its `split` decides the draws), over `defaults`. The environment's
    pool and budget, when it leaves them unset, are unset: they do not fall through to a default
    (both defaults are "none")."""
    from autotts.units import EvalProtocol

    flags: dict[str, Any] = {"draws": draws, "protocol": protocol, "pool": pool, "seed": seed,
                             "probe_cost": probe_cost, "budget": budget,
                             "betas": None if betas is None else list(betas)}
    from_env = env_layer(env, split) if env is not None else {}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in FIELDS:
        default = getattr(defaults, name)
        if flags[name] is not None:
            values[name], sources[name] = flags[name], "flag"
        elif name in from_env:
            values[name], sources[name] = from_env[name], "env"
        else:
            values[name], sources[name] = default, "default"
    values["betas"] = [float(b) for b in values["betas"]]
    proto = EvalProtocol(**{k: v for k, v in values.items() if k != "betas"})
    return Settings(proto=proto, betas=values["betas"], sources=sources)
