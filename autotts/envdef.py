"""Environment definitions (env/*.toml): the splits, replay rules and evaluation protocol of a
discovery environment. A user adds a file to define a new one."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotts.datasets import FETCH_COMMAND, data_source, is_published_path
from autotts.errors import ConfigError
from autotts.paths import data_dir, envs_dir

SPLITS = ("search", "heldout")
# A held-out group's name, as `--split heldout:NAME` takes it.
_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
OBJECTIVES = ("auc",)


@dataclass(frozen=True)
class EnvDef:
    name: str
    path: str
    description: str
    splits: dict[str, list[str]]
    delta: int | None = None
    probe_cost: int = 0
    branch_cap: int | None = None
    budget: int | None = None
    betas: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    draws: int = 20
    heldout_draws: int | None = None  # None: the search draws
    protocol: str = "shuffle"
    objective: str = "auc"
    token_range: tuple[float, float] = (5e4, 1.5e6)
    # Named held-out groups (other benchmarks, other model scales), each reported on its own.
    # splits["heldout"] is all of them together; a file with only `splits.heldout` has one group,
    # "heldout".
    heldout_groups: dict[str, list[str]] = field(default_factory=dict)

    def draws_for(self, split: str) -> int:
        """Draws per question when evaluating on `split` (a held-out group: the held-out draws)."""
        held = split == "heldout" or split.startswith("heldout:")
        return (self.heldout_draws or self.draws) if held else self.draws

    def groups(self) -> dict[str, list[str]]:
        """The held-out groups by name (at least one)."""
        return {k: list(v) for k, v in (self.heldout_groups or {"heldout": self.splits["heldout"]}).items()}

    def split_paths(self, split: str) -> list[str]:
        """The stores of `split`: search, heldout (every held-out group) or heldout:NAME; a
        missing one is a ConfigError that says how `{data}` resolved and the one command that
        fetches the published data."""
        if split.startswith("heldout:"):
            name = split[len("heldout:"):]
            groups = self.groups()
            if name not in groups:
                raise ConfigError(f"{self.path}: no held-out group {name!r} (groups: "
                                  f"{', '.join(groups)})")
            paths = list(groups[name])
        elif split not in SPLITS:
            raise ConfigError(f"unknown split {split!r} (expected search, heldout or heldout:NAME)")
        else:
            paths = list(self.splits[split])
        for p in paths:
            if not Path(p).exists():
                raise ConfigError(missing_store_message(self.path, p))
        return paths

    def check_delta(self, stores: Any, split: str) -> None:
        """Every store of `split` has the environment's Δ ([replay] delta, where given) and the
        same Δ as the others: discovery tells the agent one Δ (the prompt's first store's).
        `stores`: objects with `name`, `path` and `delta` (autotts.store.Store)."""
        want = self.delta
        for s in stores:
            if want is None:
                want = s.delta
            elif s.delta != want:
                source = "[replay] delta" if self.delta is not None else f"{stores[0].name}'s Δ"
                raise ConfigError(f"{self.path}: {split} store {s.path or s.name} has Δ = "
                                  f"{s.delta} tokens per step, but {source} is {want}: every "
                                  "store of an environment must share one Δ")


def missing_store_message(env_path: str, store: str) -> str:
    """One line: which store of which env file is missing, and how to get it."""
    msg = f"{env_path}: store {store} does not exist"
    if Path(store).is_relative_to(data_dir()) or is_published_path(store):
        return (f"{msg}; {{data}} is {data_dir()} ({data_source()}): get the published replays "
                f"with `{FETCH_COMMAND}`, or set AUTOTTS_DATA to a folder that has them")
    return msg


def resolve_env_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.is_file():
        return p
    builtin = envs_dir() / f"{name_or_path}.toml"
    if builtin.is_file():
        return builtin
    raise ConfigError(f"{name_or_path}: no such environment file")


def _expand(entry: str, base: Path) -> str:
    # {data}: the data folder (autotts.paths.data_dir: $AUTOTTS_DATA, else the user cache folder
    # that `autotts data fetch` fills).
    if entry.startswith("{data}"):
        return str(data_dir() / entry[len("{data}") :].lstrip("/"))
    p = Path(entry).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}: field '{key}' has the wrong type ({value!r})")
    return value


def load_env(name_or_path: str | Path) -> EnvDef:
    path = resolve_env_path(name_or_path)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    where = str(path)
    splits_t = raw.get("splits")
    if not isinstance(splits_t, dict):
        raise ConfigError(f"{where}: missing [splits] table")
    splits: dict[str, list[str]] = {}

    def paths(entries: Any, field_name: str) -> list[str]:
        if not isinstance(entries, list) or not entries or not all(
            isinstance(e, str) for e in entries
        ):
            raise ConfigError(f"{where}: field '{field_name}' must be a non-empty list of paths")
        return [_expand(e, path.parent) for e in entries]

    splits["search"] = paths(splits_t.get("search"), "splits.search")
    groups_t = raw.get("heldout")
    groups: dict[str, list[str]] = {}
    if groups_t is not None:
        # [heldout] NAME = [paths]: several named held-out groups
        if not isinstance(groups_t, dict) or not groups_t:
            raise ConfigError(f"{where}: [heldout] must be a table of named lists of paths")
        for name, entries in groups_t.items():
            if not _GROUP_NAME.match(name):
                raise ConfigError(f"{where}: held-out group name {name!r} must be letters, digits "
                                  f"and . _ + - (at most 64)")
            groups[name] = paths(entries, f"heldout.{name}")
        if "heldout" in splits_t:
            raise ConfigError(f"{where}: give the held-out stores either as 'splits.heldout' or as "
                              f"named groups in [heldout], not both")
        splits["heldout"] = list(dict.fromkeys(p for g in groups.values() for p in g))
    else:
        splits["heldout"] = paths(splits_t.get("heldout"), "splits.heldout")
    overlap = set(splits["search"]) & set(splits["heldout"])
    if overlap:
        raise ConfigError(f"{where}: {sorted(overlap)[0]} is in both search and heldout splits")
    replay = raw.get("replay", {})
    ev = raw.get("evaluation", {})
    kwargs: dict[str, Any] = {}
    for key, kind, table, sect in (
        ("delta", int, replay, "replay"),
        ("probe_cost", int, replay, "replay"),
        ("branch_cap", int, replay, "replay"),
        ("budget", int, replay, "replay"),
        ("draws", int, ev, "evaluation"),
        ("heldout_draws", int, ev, "evaluation"),
        ("protocol", str, ev, "evaluation"),
        ("objective", str, ev, "evaluation"),
    ):
        if key in table:
            kwargs[key] = _get(table, key, kind, f"{where} [{sect}]")
    if "betas" in ev:
        betas = ev["betas"]
        if not isinstance(betas, list) or not betas or not all(
            isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b <= 1 for b in betas
        ):
            raise ConfigError(f"{where} [evaluation]: field 'betas' must be numbers in [0, 1]")
        kwargs["betas"] = [float(b) for b in betas]
    if "token_range" in ev:
        tr = ev["token_range"]
        if (
            not isinstance(tr, list) or len(tr) != 2
            or not all(isinstance(x, int | float) and x > 0 for x in tr) or tr[0] >= tr[1]
        ):
            raise ConfigError(f"{where} [evaluation]: field 'token_range' must be [low, high] > 0")
        kwargs["token_range"] = (float(tr[0]), float(tr[1]))
    if kwargs.get("objective", "auc") not in OBJECTIVES:
        raise ConfigError(f"{where} [evaluation]: unknown objective {kwargs['objective']!r}")
    for key in ("draws", "heldout_draws"):
        if kwargs.get(key, 1) < 1:
            raise ConfigError(f"{where} [evaluation]: field '{key}' must be >= 1")
    return EnvDef(
        name=str(raw.get("name", path.stem)),
        path=str(path),
        description=str(raw.get("description", "")),
        splits=splits,
        heldout_groups=groups,
        **kwargs,
    )
