"""How often the race (autotts.discover.race) would stop a candidate that could reach the best:
`python -m autotts.discover.race_calibration`.

Built-in controllers and variants of their schedules (other knob ranges) are evaluated in-process
on the environment's search stores over `--draws` draws (default 100, seed 0). Their draws are cut
into disjoint groups of the environment's N draws (20): each group is one full sweep. In each
group, `--subsets` random k-draw subsets play the race's first k draws: O_k and the spread s come
from the subset (race.decide's formulas), O_N from the whole group. The false-stop rate at z is
the share of (group, subset) pairs with O_k + z·s < O_N, the worst case over every possible best
(a candidate exactly at the best; docs/discovery.md explains why it bounds the rest). The power
at a gap Δ is the share with O_k + z·s < O_N + Δ: how often a candidate Δ points below the best
is stopped.

    python -m autotts.discover.race_calibration [--env FILE] [--draws 100] [--ks 3,4,5,6,8]
        [--zs 2,2.5,3,3.5,4] [--subsets 400] [--cache FILE.npz] [--slow] [--json OUT]

The per-draw tables are cached in `--cache` (default: the system temp folder), so the analysis
can be rerun without the evaluations. `--slow` adds cmc and stability_vote (per-episode
controllers: minutes of CPU at 100 draws, so they get one group of 20 draws each).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from autotts import controller as ctl
from autotts.discover.race import (
    Table,
    episode_table,
    jackknife_se,
    jackknife_se_draws,
    subset_objectives,
)
from autotts.paths import envs_dir

# (label, built-in, {text in its schedule: replacement}): the variants change knob ranges, so
# the population spans cheap and dear, flat and steep curves.
VARIANTS: list[tuple[str, str, dict[str, str]]] = [
    ("sc", "sc", {}),
    ("sc_n16", "sc", {"1 + 63 * b": "1 + 15 * b"}),
    ("sc_n32", "sc", {"1 + 63 * b": "1 + 31 * b"}),
    ("sc_from8", "sc", {"1 + 63 * b": "8 + 56 * b"}),
    ("asc", "asc", {}),
    ("asc_small", "asc", {"4 + 60 * b": "2 + 30 * b"}),
    ("asc_loose", "asc", {"0.80 + 0.19 * b": "0.60 + 0.30 * b"}),
    ("esc", "esc", {}),
    ("esc_small", "esc", {"1 + 7 * b": "1 + 3 * b"}),
    ("esc_w4", "esc", {'"window": 8': '"window": 4'}),
    ("parallel_probe", "parallel_probe", {}),
    ("pp_narrow", "parallel_probe", {"4 + 60 * b": "2 + 30 * b"}),
    ("pp_short", "parallel_probe", {"8 + 32 * b": "4 + 16 * b", "5 + 10 * b": "3 + 5 * b"}),
    ("pp_impatient", "parallel_probe", {"3 + 4 * b": "2 + 2 * b"}),
    ("st_bon", "st_bon", {}),
    ("st_bon_small", "st_bon", {"2 + round(30 * b)": "2 + round(14 * b)"}),
    ("answer_convergence", "answer_convergence", {}),
    ("ac_wide", "answer_convergence", {"1 + round(6 * b)": "2 + round(10 * b)"}),
]
SLOW = [("stability_vote", "stability_vote", {}), ("cmc", "cmc", {})]


def _variant_file(tmp: Path, label: str, name: str, edits: dict[str, str]) -> Path:
    src = Path(ctl.load(name).path).read_text()
    for old, new in edits.items():
        if old not in src:
            raise SystemExit(f"variant {label}: {old!r} is not in controllers/{name}.py")
        src = src.replace(old, new)
    path = tmp / f"{label}.py"
    path.write_text(src)
    return path


def tables(env_path: str, draws: int, cache: Path, slow: bool, log: Any = None
           ) -> dict[str, Table]:
    """{label: the episode table (race.episode_table)} of every variant, from `cache` when it
    has them (keyed by label and draws)."""
    from autotts.envdef import load_env
    from autotts.evaluate import evaluate
    from autotts.settings import DISCOVER, resolve
    from autotts.store import open_store

    env = load_env(env_path)
    n_stores = len(env.split_paths("search"))
    have: dict[str, np.ndarray] = dict(np.load(cache)) if cache.is_file() else {}
    stores = None
    out = {}
    todo = [(v, draws) for v in VARIANTS] + ([(v, env.draws) for v in SLOW] if slow else [])
    with tempfile.TemporaryDirectory(prefix="autotts-race-") as tmp:
        for (label, name, edits), d in todo:
            key = f"{label}:{d}"
            if f"{key}:0:acc" not in have:
                if stores is None:
                    stores = [open_store(p) for p in env.split_paths("search")]
                t0 = time.process_time()
                path = _variant_file(Path(tmp), label, name, edits)
                proto = resolve(DISCOVER, env, "search", seed=0, draws=d).proto
                ev = evaluate(str(path), stores, env.betas, proto, episodes=True,
                              on_error="record")
                table = episode_table(ev.episodes or [], [s.name for s in stores], env.betas)
                for i, (acc, tok) in enumerate(table):
                    have[f"{key}:{i}:acc"], have[f"{key}:{i}:tok"] = acc, tok
                np.savez(cache, **have)
                if log:
                    log(f"{label}: {d} draws in {time.process_time() - t0:.1f} s CPU")
            out[label] = [(have[f"{key}:{i}:acc"], have[f"{key}:{i}:tok"])
                          for i in range(n_stores)]
    return out


def _group(table: Table, lo: int, hi: int) -> Table:
    return [(a[:, :, lo:hi], t[:, :, lo:hi]) for a, t in table]


def analyse(tabs: dict[str, Table], *, n: int, ks: list[int], zs: list[float], subsets: int,
            token_range: tuple[float, float], gaps: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 5.0),
            seed: int = 0) -> dict[str, Any]:
    """The false-stop rate and the power, per spread estimator, k and z, over every group of n
    draws: "questions" is the race's (race.jackknife_se), "draws" a jackknife of whole draws
    (race.jackknife_se_draws)."""
    rng = np.random.default_rng(seed)
    res: dict[str, Any] = {"groups": 0, "methods": {}}
    est = {"questions": jackknife_se, "draws": jackknife_se_draws}
    # method -> k -> [(O_N − O_k, s, label) per group]
    got: dict[str, dict[int, list[tuple[np.ndarray, np.ndarray, str]]]] = {
        m: {k: [] for k in ks} for m in est}
    for label, table in tabs.items():
        for g in range(table[0][0].shape[2] // n):
            gt = _group(table, g * n, (g + 1) * n)
            res["groups"] += 1
            o_n = float(subset_objectives(gt, np.arange(n)[None, :], token_range)[0])
            for k in ks:
                subs = np.array([np.sort(rng.choice(n, k, replace=False))
                                 for _ in range(subsets)])
                o_k = subset_objectives(gt, subs, token_range)
                for m, f in est.items():
                    s = np.array([f(gt, row, token_range) for row in subs]) * np.sqrt(1 - k / n)
                    got[m][k].append((o_n - o_k, s, label))
    for m in est:
        rows: dict[str, Any] = {}
        for k in ks:
            diff = np.concatenate([d for d, _, _ in got[m][k]])
            s = np.concatenate([x for _, x, _ in got[m][k]])
            row: dict[str, Any] = {"pairs": int(len(diff)),
                                   "sd_of_difference": round(float(diff.std()), 4),
                                   "mean_s": round(float(s.mean()), 4), "z": {}}
            for z in zs:
                false = [float((d > z * x).mean()) for d, x, _ in got[m][k]]
                worst = int(np.argmax(false))
                row["z"][str(z)] = {
                    "false_stop_rate": round(float((diff > z * s).mean()), 5),
                    "worst_group_rate": round(false[worst], 4),
                    "worst_group": got[m][k][worst][2],
                    "stopped_at_gap": {str(gap): round(float((diff + gap > z * s).mean()), 4)
                                       for gap in gaps},
                }
            rows[str(k)] = row
        res["methods"][m] = rows
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from autotts.envdef import load_env

    ap = argparse.ArgumentParser(prog="python -m autotts.discover.race_calibration",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--env", default=str(envs_dir() / "aime-qwen3.toml"))
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--ks", default="3,4,5,6,8")
    ap.add_argument("--zs", default="2,2.33,2.5,3,3.5,4")
    ap.add_argument("--subsets", type=int, default=200)
    ap.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "autotts-race-episodes.npz"))
    ap.add_argument("--slow", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    env = load_env(a.env)
    tabs = tables(a.env, a.draws, Path(a.cache), a.slow,
                  log=lambda m: print(m, file=sys.stderr, flush=True))
    ks = [int(x) for x in a.ks.split(",")]
    zs = [float(x) for x in a.zs.split(",")]
    res = analyse(tabs, n=env.draws, ks=ks, zs=zs, subsets=a.subsets,
                  token_range=tuple(env.token_range))
    res.update({"env": env.name, "n": env.draws, "variants": sorted(tabs), "subsets": a.subsets})
    print(json.dumps(res, indent=1))
    for m, per_k in res["methods"].items():
        for k, row in per_k.items():
            print(f"{m}: k={k}: sd(O_N − O_k) {row['sd_of_difference']:.3f}, mean s "
                  f"{row['mean_s']:.3f}")
            for z, r in row["z"].items():
                print(f"  z={z}: false stops {100 * r['false_stop_rate']:.2f}% (worst group "
                      f"{100 * r['worst_group_rate']:.1f}%, {r['worst_group']}); stopped at "
                      "gap " + ", ".join(f"{g}: {100 * p:.0f}%"
                                         for g, p in r["stopped_at_gap"].items()))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
