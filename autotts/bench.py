"""`autotts bench`: throughput figures, measured on the published replay (never asserted in tests).

Each figure comes with a baseline measured in the same run, so that the ratio, not the absolute
number of this particular machine, is what a reader compares.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from autotts.errors import ConfigError
from autotts.paths import data_dir, project_data_dir, reference_dir

MODELS = ("Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B", "Qwen3-8B")
BENCHES = ("aime24", "aime25")
BASELINES = ("sc", "asc", "esc", "parallel_probe")


def reference_files() -> list[Path]:
    files = [data_dir() / "autotts-replay" / m / f"{b}.json" for m in MODELS for b in BENCHES]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        from autotts.datasets import missing_hint

        raise ConfigError(f"bench needs the published replay: missing {missing[0]}; {missing_hint()}")
    return files


def _timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    result = fn()
    return time.perf_counter() - t, result


def bench_loading(files: list[Path]) -> dict[str, float]:
    from autotts.store import import_files, open_store

    with tempfile.TemporaryDirectory() as tmp:
        dirs = import_files(files, tmp)
        parquet_s, _ = _timed(lambda: [open_store(d).replay() for d in dirs])
    json_s, _ = _timed(lambda: [open_store(f).replay() for f in files])
    return {"parquet_s": parquet_s, "json_s": json_s}


_ONE_THREAD = "OPENBLAS_NUM_THREADS=1"


def bench_startup(files: list[Path], repeats: int = 5) -> dict[str, Any]:
    """End to end, as a user types it: `autotts eval --controller sc` (default β grid and draws)
    on one store, in a fresh interpreter each time, beside the interpreter's own start-up and
    `import numpy` (the floor). Median wall time and median CPU time (the process and its
    children) of `repeats` runs each."""
    import os
    import resource
    import statistics
    import subprocess
    import sys

    py = sys.executable
    eval_sc = [py, "-m", "autotts", "eval", "--controller", "sc", "--store"]
    cases = {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import numpy'": [py, "-c", "import numpy"],
        # The floor of any `eval`: numpy as eval loads it (one OpenBLAS thread), and with rich,
        # which prints its table.
        f"{_ONE_THREAD} python -c 'import numpy'": [py, "-c", "import numpy"],
        f"{_ONE_THREAD} python -c 'import numpy, rich.table'": [
            py, "-c", "import numpy, rich.console, rich.table"],
        "autotts --version": [py, "-m", "autotts", "--version"],
        "autotts eval sc, synthetic store (Parquet)": [*eval_sc, str(project_data_dir() / "synthetic")],
        f"autotts eval sc, {files[-2].parent.name}/{files[-2].stem} (JSON)": [*eval_sc,
                                                                              str(files[-2])],
    }
    with tempfile.TemporaryDirectory() as tmp:
        from autotts.store import import_files

        (parquet,) = import_files([files[-2]], tmp)
        cases[f"autotts eval sc, {files[-2].parent.name}/{files[-2].stem} (Parquet)"] = [
            *eval_sc, str(parquet)]
        # The interpreter must find this autotts, wherever it runs from.
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        # As installed: with bytecode caches (else every run compiles every module it imports).
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        out: dict[str, Any] = {}
        for name, cmd in cases.items():
            walls, cpus = [], []
            for _ in range(repeats):
                r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                t = time.perf_counter()
                subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               check=True, env={**env, "OPENBLAS_NUM_THREADS": "1"}
                               if name.startswith(_ONE_THREAD) else env)
                walls.append(time.perf_counter() - t)
                r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
            out[name] = {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}
    return out


# One `python -m autotts eval --controller sc` on one store, stage by stage, in a fresh
# interpreter: the same imports in the same order and the same calls as the command's plain path
# (autotts/__main__.py, autotts/evalcli.py; the process settings as their environment
# equivalents). Prints one JSON object of seconds per stage.
_STAGES_SCRIPT = r"""
import json, sys, time
t = [time.time()]
def mark():
    t.append(time.time())
import autotts.evalcli
mark()
import numpy
mark()
from autotts.evaluate import EvalProtocol, evaluate
from autotts.settings import EVAL
mark()
from autotts.store import open_store
store = open_store(sys.argv[1])
mark()
ev = evaluate("sc", [store], [0.0, 0.25, 0.5, 0.75, 1.0], EvalProtocol())
mark()
from autotts.stats import attach_question_intervals, curves_from_outcomes
attach_question_intervals(ev.rows, curves=curves_from_outcomes(ev.outcomes))
mark()
names = ["rich, autotts CLI", "numpy", "autotts modules", "store load", "evaluation",
         "question intervals"]
print(json.dumps({"start": t[0], "end": t[-1],
                  **{n: t[i + 1] - t[i] for i, n in enumerate(names)}}))
import atexit, gc
atexit.register(gc.freeze)  # as the CLI does
"""


def bench_startup_stages(store: Path, repeats: int = 5) -> dict[str, float]:
    """Where the seconds of `python -m autotts eval --controller sc --store STORE` go, stage by
    stage: the interpreter's start, the imports (rich and the command, numpy, autotts), the store
    load (pyarrow's import with it for a Parquet store: a JSON store needs none), the evaluation,
    the question intervals (their import included), and the interpreter's exit (median of
    `repeats` fresh interpreters). Reading the arguments and the printed table are the rest of
    the end-to-end time."""
    import os
    import statistics
    import subprocess
    import sys

    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # What `autotts eval` sets for itself (autotts/cli.py), here by their environment names.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(32 << 20))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(256 << 20))
    runs: list[dict[str, float]] = []
    for _ in range(repeats):
        t0 = time.time()
        res = subprocess.run([sys.executable, "-c", _STAGES_SCRIPT, str(store)],
                             capture_output=True, text=True, env=env, check=True)
        t1 = time.time()
        got = json.loads(res.stdout)
        start, end = got.pop("start"), got.pop("end")
        runs.append({"interpreter start": start - t0, **got, "interpreter exit": t1 - end})
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def bench_steps(file: Path, seconds: float = 2.0) -> dict[str, float]:
    """Actions per second through the episode handle (ADVANCE of one branch at a time) and
    environment steps per second through the Gymnasium env, random valid actions."""
    from autotts.engine import Episode, Question
    from autotts.gym_env import WidthDepthEnv
    from autotts.store import open_store

    store = open_store(file)
    data = store.replay()
    questions = [Question(data, q) for q in range(data.num_questions)]
    rng = np.random.default_rng(0)
    actions = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        q = questions[int(rng.integers(len(questions)))]
        ep = Episode(q, rng.permutation(q.num_branches))
        for _ in range(8):
            ep.branch(probe=True)
        actions += 8
        for i in range(8):
            while not ep.is_finished(i):
                ep.advance(i)
                actions += 1
    handle_rate = actions / (time.perf_counter() - t0)

    env = WidthDepthEnv(store, branch_cap=8)
    env.reset(seed=0)
    steps = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        mask = env.action_masks()
        mask[0] = steps % 200 == 199  # answer now and then, otherwise keep acting
        choices = np.flatnonzero(mask)
        a = 0 if len(choices) == 0 else int(rng.choice(choices))
        _, _, term, trunc, _ = env.step(a)
        steps += 1
        if term or trunc:
            env.reset()
    env_rate = steps / (time.perf_counter() - t0)
    return {"handle_actions_per_s": handle_rate, "env_steps_per_s": env_rate}


def reference_cells() -> list[dict[str, str]]:
    path = reference_dir() / "reference_evaluator_outputs.csv"
    if not path.is_file():
        raise ConfigError(f"bench needs the reference evaluator's figures: {path} "
                          "(set AUTOTTS_REFERENCE to the folder that has them)")
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r["controller"] in BASELINES]


# The published evaluator's time for one cell (one replay file, 100 draws, one process): the LOW
# end of each range measured in /work/shared/reference/README.md, so that every ratio against it
# is conservative; and its total for the 32 cells as the issue quotes it.
PUBLISHED_CELL_S = {"esc": 1.0, "asc": 4.0, "sc": 15.0, "parallel_probe": 20.0}
PUBLISHED_32_CELLS_S = 445.0


def bench_reproduction(draws: int, workers: int, *, per_episode: bool = True) -> dict[str, Any]:
    """The 32 published baseline cells (4 controllers × 8 stores), each timed on its own through
    the lockstep path (run_batch) and, in the same run, through the per-episode path (run), and
    whether each reproduces the published figure (both paths give the same rows, or it says so)."""
    from autotts.controller import parse_sets
    from autotts.evaluate import EvalProtocol, evaluate
    from autotts.store import open_store

    cells = reference_cells()
    stores = {}
    load_s, _ = _timed(
        lambda: stores.update(
            {
                (c["model"], c["benchmark"]): open_store(
                    data_dir() / "autotts-replay" / c["model"] / f"{c['benchmark']}.json"
                )
                for c in cells
            }
        )
    )
    for st in stores.values():
        st.replay()  # loading is its own figure
    for c in cells[:4]:  # imports and controller loads are not the replay's time
        evaluate(c["controller"], [stores[(c["model"], c["benchmark"])]], None, EvalProtocol(draws=1),
                 overrides=parse_sets(c["config"].split(";")))
    rows = []
    for c in cells:
        store = stores[(c["model"], c["benchmark"])]
        overrides = parse_sets(c["config"].split(";"))

        def run(batch: bool, c: dict[str, str] = c, store: Any = store,
                overrides: dict[str, Any] = overrides) -> Any:
            return evaluate(c["controller"], [store], None, EvalProtocol(draws=draws),
                            overrides=overrides, workers=workers, batch=batch)

        cpu = time.process_time()
        batch_s, res = _timed(lambda: run(True))
        batch_cpu_s = time.process_time() - cpu
        (row,) = res.rows
        ok = f"{row['accuracy']:.2f}" == f"{float(c['accuracy_pct']):.2f}" and abs(
            row["tokens"] - float(c["tokens_mean"])
        ) <= 0.5
        cell = {"controller": c["controller"], "store": f"{c['model']}/{c['benchmark']}",
                "batch_s": batch_s, "batch_cpu_s": batch_cpu_s, "matched": ok,
                "published_s": PUBLISHED_CELL_S[c["controller"]] * draws / 100}
        if per_episode:
            cpu = time.process_time()
            cell["per_episode_s"], ref = _timed(lambda: run(False))
            cell["per_episode_cpu_s"] = time.process_time() - cpu
            cell["identical"] = ref.rows == res.rows
        rows.append(cell)
    batch_total = sum(r["batch_s"] for r in rows)
    out: dict[str, Any] = {
        "cells": len(cells),
        "matched": sum(r["matched"] for r in rows) if draws == 100 else None,
        "wall_s": batch_total,
        "cpu_s": sum(r["batch_cpu_s"] for r in rows),
        "load_s": load_s,
        "per_controller_s": {k: sum(r["batch_s"] for r in rows if r["controller"] == k)
                             for k in BASELINES},
        "per_cell": rows,
        "published_32_cells_s": PUBLISHED_32_CELLS_S * draws / 100,
        "over_published": PUBLISHED_32_CELLS_S * draws / 100 / batch_total,
        "min_cell_over_published": min(r["published_s"] / r["batch_s"] for r in rows),
        "draws": draws,
        "workers": workers,
    }
    if per_episode:
        pe_total = sum(r["per_episode_s"] for r in rows)
        out["per_episode_s"] = pe_total
        out["per_episode_cpu_s"] = sum(r["per_episode_cpu_s"] for r in rows)
        out["per_episode_per_controller_s"] = {
            k: sum(r["per_episode_s"] for r in rows if r["controller"] == k) for k in BASELINES}
        out["batch_speedup"] = pe_total / batch_total
        out["identical"] = all(r["identical"] for r in rows)
    return out


def bench_cli_start(draws: int, store: str = "Qwen3-8B/aime24",
                    repeats: int = 5) -> list[dict[str, Any]]:
    """`python -m autotts eval` of each baseline (its published configuration) on one store, as a
    subprocess: wall time including process start, store load, the bootstrap intervals eval
    prints and exit (median of `repeats`, and the median CPU time of the process), against the
    published evaluator's (conservative) time for one cell."""
    import os
    import resource
    import statistics
    import subprocess
    import sys

    config = {c["controller"]: c["config"] for c in reference_cells()}
    path = data_dir() / "autotts-replay" / f"{store}.json"
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as installed: with bytecode caches
    out = []
    for name in BASELINES:
        sets = [f"--set={kv}" for kv in config[name].split(";")]
        cmd = [sys.executable, "-m", "autotts", "eval", "--controller", name, "--store",
               str(path), "--draws", str(draws), *sets]
        walls, cpus = [], []
        for _ in range(repeats):
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall, res = _timed(lambda cmd=cmd: subprocess.run(cmd, capture_output=True, text=True,
                                                              env=env))
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if res.returncode != 0:
                raise ConfigError(f"bench: {' '.join(cmd)} failed: {res.stderr.strip()[-300:]}")
            walls.append(wall)
            cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
        wall = statistics.median(walls)
        published = PUBLISHED_CELL_S[name] * draws / 100
        out.append({"controller": name, "store": store, "wall_s": wall,
                    "cpu_s": statistics.median(cpus), "published_s": published,
                    "over_published": published / wall})
    return out


def print_reproduction(console: Console, r: dict[str, Any], cli: list[dict[str, Any]]) -> None:
    t = Table(title=f"32 baseline cells, {r['draws']} draws, {r['workers']} worker(s): seconds "
                    "per cell")
    for col in ("controller", "store", "run_batch", "run (per episode)", "ratio",
                "published (low end)", "published / run_batch", "reproduces"):
        t.add_column(col, justify="left" if col in ("controller", "store") else "right")
    for c in r["per_cell"]:
        pe = c.get("per_episode_s")
        t.add_row(c["controller"], c["store"], f"{c['batch_s']:.3f}",
                  "" if pe is None else f"{pe:.3f}",
                  "" if pe is None else f"{pe / c['batch_s']:.1f}×", f"{c['published_s']:.1f}",
                  f"{c['published_s'] / c['batch_s']:.0f}×",
                  "" if r["matched"] is None else ("yes" if c["matched"] else "[red]NO[/]"))
    console.print(t)
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in r["per_controller_s"].items())
    console.print(f"  run_batch: {r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU for the 32 cells "
                  f"({parts})")
    if "per_episode_s" in r:
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in r["per_episode_per_controller_s"].items())
        console.print(f"  run (per episode), same run: {r['per_episode_s']:.1f} s wall, "
                      f"{r['per_episode_cpu_s']:.1f} s CPU ({parts}); "
                      f"run_batch is {r['batch_speedup']:.1f}× faster; identical rows: "
                      f"{'yes' if r['identical'] else '[red]NO[/]'}")
    match = "" if r["matched"] is None else f"; {r['matched']}/{r['cells']} cells reproduce"
    console.print(f"  published evaluator: about {r['published_32_cells_s']:.0f} s for the 32 "
                  f"cells (the issue's figure) → {r['over_published']:.0f}×; per cell against the "
                  f"low end of its published range (conservative) at least "
                  f"{r['min_cell_over_published']:.0f}×{match}")
    for c in cli:
        console.print(f"  `autotts eval` {c['controller']} on {c['store']} as a subprocess "
                      f"(process start included, median of 5): {c['wall_s']:.2f} s wall, "
                      f"{c['cpu_s']:.2f} s CPU; published (low end) "
                      f"{c['published_s']:.1f} s → {c['over_published']:.1f}×")


def bench_stats(draws: int) -> dict[str, Any]:
    """Question-level intervals (autotts.stats) for 4 stores × 11 β × `draws` draws from recorded
    outcomes: the episode rows of two controllers (SC and ESC on the four AIME 2024 stores) turned
    into curves, then every β's accuracy and token intervals for both, and ΔAUC per store and
    pooled (with both controllers' AUC intervals), 2000 resamples, BCa. The baseline, in the same
    run: evaluating one controller (SC) over the same grid."""
    from autotts import stats
    from autotts.evaluate import EvalProtocol, evaluate
    from autotts.store import open_store

    stores = [open_store(data_dir() / "autotts-replay" / m / "aime24.json") for m in MODELS]
    betas = [round(0.1 * i, 1) for i in range(11)]
    eval_s, ev_a = _timed(lambda: evaluate("sc", stores, betas, EvalProtocol(draws=draws),
                                           episodes=True))
    ev_b = evaluate("esc", stores, betas, EvalProtocol(draws=draws), episodes=True)

    def intervals() -> stats.Comparison:
        ca = stats.curves_from_episodes(ev_a.episodes or [])
        cb = stats.curves_from_episodes(ev_b.episodes or [])
        for c in (*ca.values(), *cb.values()):
            stats.beta_intervals(c)
        return stats.compare(ca, cb)

    intervals()  # caches the resample weights, as any second comparison on these stores finds them
    times = [_timed(intervals)[0] for _ in range(3)]
    stats_s = min(times)
    return {"draws": draws, "stores": len(stores), "betas": len(betas),
            "episodes": len(ev_a.episodes or []) + len(ev_b.episodes or []),
            "stats_s": stats_s, "stats_runs_s": times, "eval_one_controller_s": eval_s,
            "stats_over_eval": stats_s / eval_s}


def bench_executors(console: Console, draws: int, workers: int) -> dict[str, Any] | None:
    """Parallel-Probe (its reference configuration) over the 8 reference stores on local processes
    and on a local Ray runtime with as many CPUs, in the same run, alternating (local, Ray, local,
    Ray) so that a change of machine load hits both; local keeps the better of its two. Ray's
    start-up is timed apart; its first evaluation also ships the stores to the object store, the
    second finds them there. Then the same for the sandboxed path that discovery takes for agent
    code: sandbox processes here vs started by the Ray workers. Skipped (None) when Ray is not
    installed."""
    try:
        import ray  # noqa: F401  (only whether it is installed)
    except ImportError:
        console.print("[bold]executors[/]: skipped, Ray is not installed (pip install 'autotts[ray]')")
        return None
    from autotts.controller import parse_sets
    from autotts.evaluate import EvalProtocol, evaluate
    from autotts.executors import RayExecutor
    from autotts.sandbox import evaluate_sandboxed
    from autotts.store import open_store

    config = next(c["config"] for c in reference_cells() if c["controller"] == "parallel_probe")
    overrides = parse_sets(config.split(";"))
    stores = [open_store(f) for f in reference_files()]

    def run(executor: Any) -> tuple[float, Any]:
        return _timed(lambda: evaluate("parallel_probe", stores, None, EvalProtocol(draws=draws),
                                       overrides=overrides, workers=workers, executor=executor))

    def run_sandboxed(executor: Any) -> tuple[float, Any]:
        return _timed(lambda: evaluate_sandboxed(
            "parallel_probe", stores, None, EvalProtocol(draws=draws), overrides=overrides,
            workers=workers, executor=executor))

    console.print(f"[bold]executors[/]: Parallel-Probe over the 8 stores, {draws} draws, "
                  f"local {workers} workers vs Ray with {workers} CPUs")
    local1_s, local = run("local")
    start_s, ex = _timed(lambda: RayExecutor(num_cpus=workers))
    try:
        first_s, first = run(ex)
        local2_s, _ = run("local")
        again_s, again = run(ex)
        sb_local1_s, sb_local = run_sandboxed(None)
        sb_ray_s, sb_ray = run_sandboxed(ex)
        sb_local2_s, _ = run_sandboxed(None)
    finally:
        ex.close()
    local_s = min(local1_s, local2_s)
    same = local.rows == first.rows == again.rows == sb_local.rows == sb_ray.rows
    sb_local_s = min(sb_local1_s, sb_local2_s)
    r = {"draws": draws, "workers": workers, "local_s": local_s, "local_runs_s": [local1_s, local2_s],
         "ray_start_s": start_s, "ray_first_s": first_s, "ray_again_s": again_s,
         "ray_over_local_first": first_s / local_s, "ray_over_local_again": again_s / local_s,
         "sandboxed_local_s": sb_local_s, "sandboxed_ray_s": sb_ray_s,
         "sandboxed_ray_over_local": sb_ray_s / sb_local_s, "identical": same}
    console.print(
        f"  local {local_s:.2f} s (runs {local1_s:.2f}, {local2_s:.2f})   Ray: start-up "
        f"{start_s:.1f} s, first run {first_s:.2f} s (ships the stores), again {again_s:.2f} s"
    )
    console.print(
        f"  Ray / local = {r['ray_over_local_first']:.2f}× (first), "
        f"{r['ray_over_local_again']:.2f}× (again)"
    )
    console.print(
        f"  sandboxed: local {sb_local_s:.2f} s, on Ray workers {sb_ray_s:.2f} s "
        f"(Ray / local = {r['sandboxed_ray_over_local']:.2f}×); all results identical: "
        f"{'yes' if same else '[red]NO[/]'}"
    )
    return r


def run_bench(console: Console, *, quick: bool = False, workers: int = 2,
              json_out: Path | None = None) -> dict[str, Any]:
    files = reference_files()
    draws = 10 if quick else 100
    figures: dict[str, Any] = {}
    console.print("[bold]store loading[/] (8 reference stores into replay arrays)")
    figures["loading"] = load = bench_loading(files)
    console.print(
        f"  Parquet stores: {load['parquet_s'] * 1000:.0f} ms   published JSON: "
        f"{load['json_s'] * 1000:.0f} ms   (JSON / Parquet = {load['json_s'] / load['parquet_s']:.1f}×)"
    )
    console.print("[bold]process start and store load[/] (fresh interpreter each run, median "
                  "of 5; `autotts eval` with the default β grid and draws)")
    figures["startup"] = up = bench_startup(files)
    floor = up["python -c 'import numpy'"]
    for name, f in up.items():
        console.print(f"  {name}: {f['wall_s']:.2f} s wall, {f['cpu_s']:.2f} s CPU"
                      + (f"   ({f['wall_s'] / floor['wall_s']:.1f}× `import numpy`)"
                         if name.startswith("autotts eval") else ""))
    figures["startup_stages"] = stages = bench_startup_stages(files[-2])
    console.print(f"  stage by stage, {files[-2].parent.name}/{files[-2].stem} (JSON): "
                  + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in stages.items()))
    console.print("[bold]engine steps[/] (Qwen3-8B/aime24)")
    figures["steps"] = steps = bench_steps(files[-2], seconds=1.0 if quick else 3.0)
    console.print(
        f"  episode handle: {steps['handle_actions_per_s']:,.0f} actions/s   Gymnasium env: "
        f"{steps['env_steps_per_s']:,.0f} steps/s   (handle / env = "
        f"{steps['handle_actions_per_s'] / steps['env_steps_per_s']:.1f}×)"
    )
    runs = []
    for w in sorted({1, workers}):
        console.print(f"[bold]reproduction[/] of the 32 baseline cells, {draws} draws, {w} worker(s)")
        r = bench_reproduction(draws, w, per_episode=w == 1)
        runs.append(r)
        if w == 1:
            figures["cli_start"] = cli = bench_cli_start(draws)
            print_reproduction(console, r, cli)
        else:
            console.print(f"  run_batch: {r['wall_s']:.2f} s for the 32 cells")
    figures["reproduction"] = runs
    if len(runs) == 2:
        console.print(
            f"  speed-up from 1 to {workers} workers: {runs[0]['wall_s'] / runs[1]['wall_s']:.2f}×"
        )
    console.print(f"[bold]question-level intervals[/] (4 stores × 11 β × {draws} draws, two "
                  "controllers, 2000 resamples)")
    figures["stats"] = st = bench_stats(draws)
    console.print(
        f"  all intervals from {st['episodes']:,} recorded episodes: {st['stats_s']:.2f} s   "
        f"evaluating one controller: {st['eval_one_controller_s']:.1f} s   (intervals / "
        f"evaluation = {st['stats_over_eval']:.3f}×)"
    )
    figures["executors"] = ex = bench_executors(console, draws, workers)
    console.print(f"[bold]sandbox overhead[/] (Parallel-Probe, 8 reference stores, {draws} draws)")
    from autotts.sandbox import sandbox_overhead

    figures["sandbox"] = sb = sandbox_overhead(files, draws=draws, workers=1)
    console.print(
        f"  in-process run (per episode, what the sandbox runs) {sb['inprocess_s']:.1f} s   "
        f"sandboxed {sb['sandbox_s']:.1f} s   (sandboxed / in-process = {sb['ratio']:.2f}× wall, "
        f"{sb['cpu_ratio']:.2f}× CPU); in-process run_batch {sb['inprocess_batch_s']:.1f} s "
        f"(sandboxed / run_batch = {sb['ratio_vs_batch']:.1f}×); identical rows: "
        f"{sb['identical']}; {sb['actions']:,} actions crossed the boundary, "
        f"{sb['round_trips_per_s']:,.0f} per second"
    )
    t = Table(title="summary")
    t.add_column("figure")
    t.add_column("value", justify="right")
    t.add_row("load 8 stores (Parquet)", f"{load['parquet_s'] * 1000:.0f} ms")
    for name, f in up.items():
        if name.startswith("autotts eval"):
            t.add_row(name.replace("autotts eval sc", "`autotts eval` sc end to end"),
                      f"{f['wall_s']:.2f} s ({floor['wall_s']:.2f} s `import numpy`)")
    t.add_row("handle actions / s", f"{steps['handle_actions_per_s']:,.0f}")
    t.add_row("env steps / s", f"{steps['env_steps_per_s']:,.0f}")
    for r in runs:
        t.add_row(f"32 cells, {r['draws']} draws, {r['workers']} worker(s), run_batch",
                  f"{r['wall_s']:.2f} s")
    r1 = runs[0]
    t.add_row("32 cells, run (per episode) / run_batch", f"{r1['batch_speedup']:.1f}×")
    t.add_row("published evaluator (445 s) / run_batch", f"{r1['over_published']:.0f}×")
    if ex is not None:
        t.add_row(f"Ray / local, Parallel-Probe × 8 stores, {workers} CPUs",
                  f"{ex['ray_over_local_first']:.2f}× ({ex['ray_over_local_again']:.2f}× again)")
        t.add_row("Ray / local, same, sandboxed (discovery's candidates)",
                  f"{ex['sandboxed_ray_over_local']:.2f}×")
        t.add_row("Ray start-up", f"{ex['ray_start_s']:.1f} s")
    t.add_row("sandbox overhead (Parallel-Probe): sandboxed / in-process run",
              f"{sb['ratio']:.2f}× wall, {sb['cpu_ratio']:.2f}× CPU")
    t.add_row("sandboxed / in-process run_batch", f"{sb['ratio_vs_batch']:.1f}×")
    t.add_row("sandbox actions through the judge / s", f"{sb['round_trips_per_s']:,.0f}")
    t.add_row(f"all question-level intervals, 4 stores × 11 β × {st['draws']} draws × 2 "
              "controllers", f"{st['stats_s']:.2f} s ({st['stats_over_eval']:.3f}× one evaluation)")
    console.print(t)
    if json_out is not None:
        json_out.write_text(json.dumps(figures, indent=2) + "\n")
    return figures
