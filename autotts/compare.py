"""`autotts compare A B [C ...]`: paired ΔAUC of the first controller against each of the others,
with 95% intervals over questions, per store and pooled, and which questions the gain comes from.

A controller is a built-in name or a controller file (evaluated here over the β grid with its
episodes), or a result file that carries its episodes: `eval --json FILE --json-episodes` (.json)
or `eval --episodes FILE` (.jsonl). The statistics are autotts.stats (docs/comparisons.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from autotts import stats
from autotts.errors import ConfigError

SPLIT_CHOICES = "search, heldout, heldout:NAME or all"


@dataclass
class Group:
    """Stores whose ΔAUCs are pooled together (a split, a held-out group, or the --store list)."""

    name: str
    paths: list[str]
    draws: int
    stores: list[str] | None = None  # store names, once opened


def env_groups(env: Any, split: str) -> list[Group]:
    """The groups a split of an environment reports: search; every held-out group (and all of
    them pooled, where there are several); one named group; or all of these."""
    held = env.groups()
    hd = env.draws_for("heldout")

    def heldout() -> list[Group]:
        out = [Group(n, p, hd) for n, p in held.items()]
        if len(held) > 1:
            out.append(Group("heldout (all groups)", env.split_paths("heldout"), hd))
        return out

    if split == "search":
        return [Group("search", env.split_paths("search"), env.draws)]
    if split == "heldout":
        return heldout()
    if split.startswith("heldout:"):
        name = split[len("heldout:"):]
        return [Group(name, env.split_paths(split), hd)]
    if split == "all":
        return [Group("search", env.split_paths("search"), env.draws), *heldout()]
    raise ConfigError(f"unknown split {split!r} (expected {SPLIT_CHOICES})")


def _is_results(arg: str) -> bool:
    p = Path(arg)
    if p.suffix in (".json", ".jsonl"):
        if not p.is_file():
            raise ConfigError(f"{arg}: no such result file")
        return True
    return False


def _file_curves(arg: str) -> tuple[str, dict[str, stats.Curve]]:
    curves = stats.load_curves(arg)
    controllers = sorted({c for _, c in curves})
    if len(controllers) != 1:
        raise ConfigError(f"{arg}: holds results of {len(controllers)} controllers "
                          f"({', '.join(controllers)}); give one per file")
    return controllers[0], {s: c for (s, _), c in curves.items()}


def _fmt_iv(iv: stats.Interval, fmt: str = ".2f") -> str:
    return f"{iv.estimate:{fmt}} {iv.bracket(fmt)}"


def run_compare(
    entries: Sequence[str],
    *,
    store_paths: Sequence[str] = (),
    env: Any = None,
    split: str = "search",
    betas: Sequence[float] | None = None,
    draws: int | None = None,
    seed: int = 0,
    workers: int = 1,
    resamples: int = stats.DEFAULT_RESAMPLES,
    level: float = stats.DEFAULT_LEVEL,
    method: str = stats.DEFAULT_METHOD,
    token_range: tuple[float, float] | None = None,
    top: int = 3,
    console: Console | None = None,
    progress: Console | None = None,
) -> dict[str, Any]:
    """Evaluate (or load) every entry, compare the first with each other one on every group, print
    the tables to `console` and return everything as a JSON-able dict."""
    console = console or Console()
    if len(entries) < 2:
        raise ConfigError("compare needs at least two controllers or result files")
    if resamples < 100:
        raise ConfigError(f"--resamples must be at least 100, got {resamples}")
    if top < 0:  # a negative slice would silently drop the largest gains and losses instead
        raise ConfigError(f"--top must be at least 0, got {top}")
    stats.check_method(method, level)  # before any evaluation
    from autotts.evaluate import evaluate
    from autotts.settings import COMPARE, resolve
    from autotts.store import open_store

    # ---- the stores, grouped -------------------------------------------------------------------
    # Flags > environment file > defaults (autotts.settings): the protocol (pool, κ, budget,
    # draw protocol), the β grid and each group's draws (held-out groups take heldout_draws).
    setting = resolve(COMPARE, env, "search", draws=draws, seed=seed, betas=betas)
    betas = setting.betas
    groups: list[Group] = []
    if env is not None:
        held_draws = resolve(COMPARE, env, "heldout", draws=draws).proto.draws
        groups = env_groups(env, split)
        for g in groups:
            g.draws = setting.proto.draws if g.name == "search" else held_draws
        token_range = token_range or env.token_range
    if store_paths:
        # Stores named beside --env take its search draws, as --help says (flags first).
        groups.append(Group("stores", [str(p) for p in store_paths], setting.proto.draws))
    tr = stats.check_range(token_range or stats.DEFAULT_TOKEN_RANGE)

    opened: dict[str, Any] = {}
    for g in groups:
        names = []
        for p in g.paths:
            if p not in opened:
                opened[p] = open_store(p)
            names.append(opened[p].name)
        g.stores = names

    # ---- each entry's curves, by store name ------------------------------------------------------
    labels: list[str] = []
    curves: list[dict[str, stats.Curve]] = []
    is_file = [_is_results(arg) for arg in entries]  # a missing file fails before any evaluation
    for arg, from_file in zip(entries, is_file, strict=True):
        if from_file:
            label, by_store = _file_curves(arg)
        else:
            by_store = {}
            label = ""
            by_draws: dict[int, list[str]] = {}
            for g in groups:
                for p in g.paths:
                    if p not in by_draws.get(g.draws, []):
                        by_draws.setdefault(g.draws, []).append(p)
            if not by_draws:
                raise ConfigError(f"{arg}: a controller needs stores to run on (--store or --env)")
            for d, paths in by_draws.items():
                proto = dataclasses.replace(setting.proto, draws=d)
                if progress is not None:
                    progress.print(f"evaluating {arg} on {len(paths)} store(s) × {len(betas)} β × "
                                   f"{d} draws")
                ev = evaluate(arg, [opened[p] for p in paths], betas, proto, episodes=True,
                              workers=workers)
                for (s, c), cv in stats.curves_from_episodes(ev.episodes or []).items():
                    by_store[s] = cv
                    label = c
        labels.append(label)
        curves.append(by_store)
    # Two entries with one name (a controller and its earlier results): tell them apart.
    names_now = list(labels)
    for i, lab in enumerate(names_now):
        if names_now.count(lab) > 1:
            where = Path(entries[i]).name
            labels[i] = f"{lab} ({where if where != lab else i + 1})"

    if not groups:  # result files only: the stores they share
        common = [s for s in curves[0] if all(s in c for c in curves[1:])]
        if not common:
            raise ConfigError("the result files share no store")
        groups = [Group("results", [], 0, common)]
        # No store is opened: stores named MODEL/BENCHMARK share their benchmark's questions.
        clusters = stats.clusters_by_name(
            common, {s: curves[0][s].num_questions for s in common})
    else:
        # Stores that hold the same questions (every model's replay of one benchmark) are
        # resampled together: a pooled figure rests on one sample of those questions.
        clusters = stats.question_clusters(opened.values())
    for i, by_store in enumerate(curves):
        for g in groups:
            missing = [s for s in g.stores or [] if s not in by_store]
            if missing:
                raise ConfigError(f"{entries[i]}: no results on {missing[0]}")

    kw = {"resamples": resamples, "seed": seed, "level": level, "method": method}
    shared = {s: k for s, k in clusters.items() if k != s}
    report: dict[str, Any] = {
        "a": labels[0], "token_range": list(tr), "betas": betas, "resamples": resamples,
        "level": level, "method": method, "seed": seed,
        "groups": {g.name: g.stores for g in groups}, "shared_questions": shared,
        "comparisons": [],
    }
    pct = f"{level:.0%}"
    if shared:
        sets: dict[str, list[str]] = {}
        for s, k in shared.items():
            sets.setdefault(k, []).append(s)
        console.print("Stores holding the same questions, resampled together (question i of each "
                      "in the same resamples): "
                      + "; ".join(", ".join(v) for v in sets.values()), markup=False,
                      highlight=False)
    # Every comparison first: the family the Holm correction runs over is all that is shown.
    computed: list[tuple[dict[str, Any], list[tuple[Group, stats.Comparison]]]] = []
    for j in range(1, len(entries)):
        a, b = curves[0], curves[j]
        a_lab, b_lab = labels[0], labels[j]
        entry: dict[str, Any] = {"a": a_lab, "b": b_lab, "groups": {}, "questions": {},
                                 "matched_tokens": {}}
        cmps = []
        for g in groups:
            names = list(g.stores or [])
            cmp = stats.compare([a[s] for s in names], [b[s] for s in names], tr,
                                clusters=clusters, **kw)
            cmps.append((g, cmp))
            entry["groups"][g.name] = {**cmp.as_dict(), "a": a_lab, "b": b_lab}
            for s in names:
                if s not in entry["questions"]:
                    entry["questions"][s] = stats.question_table(a[s], b[s], tr)
                    # Δaccuracy at B's own β points (where both curves reach): the same
                    # comparison read at matched cost instead of averaged over the range.
                    entry["matched_tokens"][s] = [
                        {"tokens": at, **d.as_dict()}
                        for at, d in stats.delta_accuracy_at_tokens(a[s], b[s], **kw)]
        computed.append((entry, cmps))
    holm = _holm(computed, level)
    report["family"] = {"comparisons": len(holm), "method": "holm", "level": level}
    family = len(holm)
    for entry, cmps in computed:
        a_lab, b_lab = entry["a"], entry["b"]
        t = Table(title=f"ΔAUC = AUC({a_lab}) − AUC({b_lab})  (objective: mean accuracy % over "
                        f"log-tokens {tr[0]:,.0f}–{tr[1]:,.0f}; {pct} intervals over questions, "
                        f"{method}, {resamples} resamples; Holm p: adjusted over the {family} "
                        f"comparisons shown)")
        for col in ("group", "store", f"AUC {a_lab}", f"AUC {b_lab}", "ΔAUC", f"{pct} interval",
                    "P(improvement)", "Holm p", "verdict"):
            t.add_column(col, justify="left" if col in ("group", "store", "verdict") else "right")
        for g, cmp in cmps:
            names = list(g.stores or [])
            for s in names:
                d = cmp.stores[s]
                h = holm.get((a_lab, b_lab, "", s))
                t.add_row(g.name, s, _fmt_iv(cmp.auc_a[s]), _fmt_iv(cmp.auc_b[s]),
                          f"{d.estimate:+.2f}", d.bracket("+.2f"), d.prob_text(), _p_text(h),
                          _verdict(d, h, level))
            if len(names) > 1:
                d = cmp.pooled
                h = holm.get((a_lab, b_lab, g.name, ""))
                assert cmp.pooled_a is not None and cmp.pooled_b is not None
                t.add_row(g.name, "[bold]pooled (mean over stores)[/]", _fmt_iv(cmp.pooled_a),
                          _fmt_iv(cmp.pooled_b), f"[bold]{d.estimate:+.2f}[/]",
                          f"[bold]{d.bracket('+.2f')}[/]", d.prob_text(), _p_text(h),
                          f"[bold]{_verdict(d, h, level)}[/]")
            t.add_section()
        console.print(t)
        console.print(_question_summary(entry["questions"], a_lab, b_lab, top))
        matrix = _matrix(entry)
        if matrix is not None:
            entry["matrix"] = matrix
            console.print(_matrix_table(matrix, a_lab, b_lab, pct))
        report["comparisons"].append(entry)
    return report


def _holm(computed: list[tuple[dict[str, Any], list[tuple[Group, stats.Comparison]]]],
          level: float) -> dict[tuple[str, str, str, str], float]:
    """Holm-adjusted p-values over every comparison shown (each pair's per-store ΔAUCs, a store
    shown in several groups once, and its pooled ones), keyed (a, b, group, store) with group ""
    for a store's and store "" for a group's pooled figure; written into the JSON as "p_holm"
    and "significant_holm" beside each "p_value". Stores without an interval are left out."""
    keys: list[tuple[str, str, str, str]] = []
    cells: list[tuple[tuple[str, str, str, str], dict[str, Any]]] = []
    ps: list[float] = []
    for entry, cmps in computed:
        a, b = entry["a"], entry["b"]
        for g, cmp in cmps:
            out = entry["groups"][g.name]
            for s in g.stores or []:
                k = (a, b, "", s)
                if k not in keys:
                    keys.append(k)
                    ps.append(cmp.stores[s].p_value)
                cells.append((k, out["stores"][s]))
            if len(g.stores or []) > 1:
                k = (a, b, g.name, "")
                keys.append(k)
                ps.append(cmp.pooled.p_value)
                cells.append((k, out["pooled"]))
    adjusted = dict(zip(keys, stats.holm(ps), strict=True))
    for k, cell in cells:
        h = adjusted[k]
        cell["p_holm"] = None if math.isnan(h) else h
        cell["significant_holm"] = bool(not math.isnan(h) and h < 1 - level
                                        and cell["significant"])
    return {k: h for k, h in adjusted.items() if not math.isnan(h)}


def _p_text(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _verdict(d: stats.Difference, p_holm: float | None, level: float) -> str:
    """The interval's verdict, and where the interval excludes 0 but the Holm-adjusted p-value
    does not clear 1 − level, that it does not hold over the family shown."""
    v = d.verdict()
    if d.significant and (p_holm is None or p_holm >= 1 - level):
        return f"{v} (not after Holm)"
    return v


def _question_summary(tables: dict[str, list[dict[str, Any]]], a: str, b: str, top: int) -> Table:
    t = Table(title=f"per question: where ΔAUC({a} − {b}) comes from (contribution: jackknife "
                    f"pseudo-value / Q; they add up to about ΔAUC)")
    for col in ("store", "wins", "losses", "ties", "largest gains (question: +points)",
                "largest losses"):
        t.add_column(col, justify="left" if col == "store" or "largest" in col else "right")
    for s, rows in tables.items():
        wins = sorted((r for r in rows if r["outcome"] == "win"), key=lambda r: -r["contribution"])
        losses = sorted((r for r in rows if r["outcome"] == "loss"), key=lambda r: r["contribution"])
        ties = sum(r["outcome"] == "tie" for r in rows)

        def fmt(rs: list[dict[str, Any]]) -> str:
            return ", ".join(f"q{r['question']}: {r['contribution']:+.2f}" for r in rs[:top]) or "–"

        t.add_row(s, str(len(wins)), str(len(losses)), str(ties), fmt(wins), fmt(losses))
    return t


def _split_name(store: str) -> tuple[str, str] | None:
    parts = store.split("/")
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _matrix(entry: dict[str, Any]) -> dict[str, Any] | None:
    """Model × benchmark table of ΔAUC with intervals, for stores named MODEL/BENCHMARK (the
    published replay's names), when there are at least two models or two benchmarks."""
    cells: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    for gname, cmp in entry["groups"].items():
        for s, d in cmp["stores"].items():
            if s in cells:
                continue
            cells[s] = d
            where[s] = gname
    names = {s: _split_name(s) for s in cells}
    if not cells or any(v is None for v in names.values()):
        return None
    models = list(dict.fromkeys(v[0] for v in names.values() if v))
    benches = list(dict.fromkeys(v[1] for v in names.values() if v))
    if len(models) < 2 and len(benches) < 2:
        return None
    return {
        "models": models, "benchmarks": benches,
        "cells": {s: {**cells[s], "group": where[s]} for s in cells},
    }


def _matrix_table(matrix: dict[str, Any], a: str, b: str, pct: str) -> Table:
    t = Table(title=f"ΔAUC({a} − {b}) by model × benchmark, {pct} interval over questions "
                    f"(* significant; † also after Holm over every comparison shown; the cell's group in "
                    f"parentheses)")
    t.add_column("model")
    for bench in matrix["benchmarks"]:
        t.add_column(bench, justify="right")
    for m in matrix["models"]:
        row = [m]
        for bench in matrix["benchmarks"]:
            d = matrix["cells"].get(f"{m}/{bench}")
            if d is None:
                row.append("–")
                continue
            star = ("*" if d["significant"] else "") + ("†" if d.get("significant_holm") else "")
            iv = (stats.NO_INTERVAL if d["low"] is None else
                  f"[{d['low']:+.2f}, {d['high']:+.2f}]")
            row.append(f"{d['estimate']:+.2f}{star} {iv} ({d['group']})")
        t.add_row(*row)
    return t


def write_json(path: Path, report: dict[str, Any]) -> None:
    from autotts.fsio import atomic_write_bytes, json_default_or_str

    text = json.dumps(report, indent=2, ensure_ascii=False, default=json_default_or_str) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
