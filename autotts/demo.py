"""`autotts demo`: the first-run experience. With no arguments and no network it evaluates every
built-in controller over a β grid on the shipped synthetic store (data/synthetic), writes a report
directory (plot, markdown, self-contained HTML, summary.json, the raw rows) and says what to run
next. When the shipped store is not there (an installed wheel), it generates the same store with
the same seed into the report directory first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autotts.errors import AutoTTSError
from autotts.paths import data_dir, envs_dir, project_data_dir
from autotts.report import ReportPaths, build_report, write_file
from autotts.store import Store, open_store
from autotts.synth import SynthParams, write_synthetic

DEFAULT_OUT = Path("autotts-demo")
DEFAULT_BETAS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)
DEFAULT_DRAWS = 10
# The shipped store: data/synthetic, written by `autotts synth --out data/synthetic --seed 0
# --questions 50 --branches 64 --skill -1` (data/README.md). The fallback regenerates exactly it.
SHIPPED = SynthParams(questions=50, branches=64, seed=0, skill=-1.0)


@dataclass
class DemoResult:
    report: ReportPaths
    rows: list[dict[str, Any]]
    results: Path
    store: str
    store_path: str
    seconds: float
    skipped: list[str]
    generated_store: Path | None = None  # the shipped store, regenerated into the report dir


def shipped_store_path() -> Path:
    return project_data_dir() / "synthetic"


def _open_demo_store(store: str | Path | None, out_dir: Path,
                     console: Console) -> tuple[Store, Path | None]:
    """The store to run on, and the directory it was generated into (None: it already existed)."""
    if store is not None:
        return open_store(store), None
    shipped = shipped_store_path()
    if (shipped / "manifest.json").is_file():
        return open_store(shipped), None
    target = out_dir / "synthetic-store"
    console.print(f"[dim]no shipped store at {shipped}; generating it (seed {SHIPPED.seed}) "
                  f"into {target}[/]")
    write_synthetic(SHIPPED, target)
    return open_store(target), target


def _rel(p: Path, up: bool = False) -> str:
    """A path as the user would type it: relative to the current directory when it lies below it
    (or, with up=True, anywhere), else absolute."""
    try:
        rel = os.path.relpath(p)
    except ValueError:  # another drive (Windows)
        return str(p)
    return rel if up or not rel.startswith("..") else str(Path(p).resolve())


def run_demo(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    store: str | Path | None = None,
    controllers: Sequence[str] | None = None,
    betas: Sequence[float] = DEFAULT_BETAS,
    draws: int = DEFAULT_DRAWS,
    workers: int | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> DemoResult:
    """Evaluate the built-in controllers (or `controllers`) on the shipped store (or `store`) and
    write the report to `out_dir`."""
    from autotts.controller import builtin_names
    from autotts.controller import load as load_controller
    from autotts.evaluate import EvalProtocol, evaluate

    console = console or Console(stderr=True)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st, generated = _open_demo_store(store, out, console)
    names = list(controllers) if controllers else builtin_names()
    if workers is None:
        workers = max(1, min(2, os.cpu_count() or 1))
    proto = EvalProtocol(draws=draws)

    specs, skipped = [], []
    for name in names:
        try:
            specs.append(load_controller(name))
        except AutoTTSError as e:
            if controllers:  # asked for by name: the user wants to know
                raise
            skipped.append(f"{name}: {e}")
    rows: list[dict[str, Any]] = []
    outcomes: list[Any] = []  # every episode's (correct, tokens), for the intervals over questions
    scale = 1000
    with Progress(
        TextColumn("[bold]{task.description:<28}"), BarColumn(),
        TextColumn("{task.fields[step]} controllers"), TimeElapsedColumn(),
        console=console, transient=False, disable=not progress,
    ) as prog:
        task = prog.add_task("evaluating", total=len(specs) * scale, step=f"0/{len(specs)}")
        for i, spec in enumerate(specs):
            prog.update(task, description=f"evaluating {spec.name}", completed=i * scale,
                        step=f"{i + 1}/{len(specs)}")

            def tick(done: int, total: int, i: int = i) -> None:
                prog.update(task, completed=i * scale + scale * done // max(1, total))

            try:
                ev = evaluate(spec, [st], list(betas), proto, workers=workers,
                              on_error="record", progress=tick)
            except AutoTTSError as e:
                skipped.append(f"{spec.name}: {e}")
                continue
            rows += ev.rows
            outcomes += ev.outcomes
        prog.update(task, description="done", completed=len(specs) * scale)
    if not rows:
        raise AutoTTSError("demo: no controller could be evaluated ("
                           + "; ".join(skipped) + ")")

    import json

    from autotts.stats import attach_question_intervals, curves_from_outcomes

    # As `autotts eval` prints them: beside the ± se over draws, each figure's 95% interval over
    # questions, and the Summary's AUCs theirs (the report says what the bands and columns are).
    curves = curves_from_outcomes(outcomes) if outcomes else None
    attach_question_intervals(rows, curves=curves)
    results = out / "results.json"
    payload = [{k: v for k, v in r.items() if k != "errors"} for r in rows]
    write_file(results, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
    notes = [
        f"Store: {st.name} ({st.num_questions} questions, "
        f"{st.branches.num_rows // max(1, st.num_questions)} branches each, Δ={st.delta}). "
        f"Protocol: shuffle, {draws} draws, β ∈ {{{', '.join(f'{b:g}' for b in betas)}}}.",
    ]
    if (st.manifest.get("source") or {}).get("kind") == "synthetic":
        notes.append("The store is synthetic (autotts synth, docs/synthetic.md): the curves show "
                     "how the controllers trade tokens for accuracy, not how a real model scores.")
    errs = sum(int(r.get("errors", 0)) for r in rows)
    if errs:
        notes.append(f"{errs} episode(s) failed and were scored as wrong.")
    report = build_report(rows, out, title=f"autotts demo: built-in controllers on {st.name}",
                          notes=notes, curves=curves)
    return DemoResult(report, rows, results, st.name, st.path, time.perf_counter() - t0, skipped,
                      generated)


def _arg(p: Path) -> str:
    """A path for a command line: relative when short, else with ~ for the home folder."""
    rel = _rel(p, up=True)
    if not rel.startswith("../.."):
        return rel
    home = str(Path.home())
    ab = str(Path(p).resolve())
    return "~" + ab[len(home):] if ab.startswith(home + os.sep) else ab


DISCOVER_MODEL = "gpt-4.1-mini"  # the model the README's discover example uses


def next_steps(result: DemoResult | None = None) -> list[tuple[str, str]]:
    """(what, command) pairs printed after the demo; the first uses the store the demo ran on."""
    from autotts.datasets import CATALOG, DEFAULT_DATASET, FETCH_COMMAND, status

    ran_on = _arg(Path(result.store_path)) if result is not None else "data/synthetic"
    ds = CATALOG[DEFAULT_DATASET]
    root = data_dir()
    ref_file = root / "autotts-replay" / "Qwen3-8B" / "aime24.json"
    ref_arg = _arg(ref_file)
    envs = sorted(envs_dir().glob("*.toml")) if envs_dir().is_dir() else []
    env_arg = _arg(envs[0]) if envs else "aime-qwen3"  # as the store paths: no ../../.. chains
    steps = [
        ("One controller on the store this demo used, all 100 draws of the published protocol",
         f"autotts eval --controller cmc --store {ran_on} --betas 0,0.5,1"),
    ]
    if any(status(f, root) != "cached" for f in ds.files):
        steps.append((f"Get the published AutoTTS replays ({len(ds.files)} files, "
                      f"{ds.size / 1e6:.0f} MB, into {_arg(root)})", FETCH_COMMAND))
    steps += [
        ("Evaluate a controller on a published replay and plot it",
         f"autotts eval --controller parallel_probe --store {ref_arg} --json runs/pp.json\n"
         "autotts report runs/pp.json --out runs/pp-report"),
        ("Run this demo on a published replay (as a Parquet store: faster to load)",
         f"autotts import {ref_arg} --out data/stores\n"
         "autotts demo --store data/stores/Qwen3-8B/aime24 --out autotts-demo-8b"),
        ("Make another synthetic store (a weaker model, like Qwen3-0.6B; docs/synthetic.md)",
         "autotts synth --out data/synth-weak --seed 1 --skill -3.5"),
        ("Let an LLM agent discover a controller (needs OPENAI_API_KEY; --base-url for any "
         "OpenAI-compatible server)",
         f"autotts discover --env {env_arg} --run-dir runs/first --model {DISCOVER_MODEL}"),
    ]
    return steps


def written_files(result: DemoResult) -> list[tuple[Path, str]]:
    """Everything the demo wrote into its report directory, with what it is."""
    rp = result.report
    files = [(rp.html, "open this: plot and tables in one file")]
    if rp.png is not None:
        files.append((rp.png, "accuracy vs tokens, β on each point"))
    files += [(rp.markdown, "the same as markdown"),
              (rp.summary, "best point, AUC and Pareto points per controller (JSON)"),
              (result.results, "raw rows (as autotts eval --json writes them)")]
    if result.generated_store is not None:
        files.append((result.generated_store, "the synthetic store it ran on (generated)"))
    return files


def print_demo(result: DemoResult, console: Console) -> None:
    """Where the report is, the headline numbers, and what to run next."""
    from autotts.report import analyse

    _, summary = analyse(result.rows)
    t = Table(title=f"{result.store}: best point and AUC per controller", title_justify="left")
    for col in ("controller", "best acc %", "at β", "tokens", "AUC", "Pareto pts"):
        t.add_column(col, justify="left" if col == "controller" else "right")
    for e in summary:
        t.add_row(e["controller"], f"{e['best_accuracy']:.1f}",
                  "-" if e["best_beta"] is None else f"{e['best_beta']:g}",
                  f"{e['tokens_at_best']:,.0f}", f"{e['auc']:.1f}", str(e["pareto_points"]))
    console.print(t)
    for s in result.skipped:
        console.print(f"[yellow]skipped {s}[/]")
    rp = result.report
    console.print(f"\n[bold green]Report written to {_rel(rp.out_dir)}/[/] "
                  f"({result.seconds:.1f} s)")
    for path, what in written_files(result):
        console.print(f"  {_rel(path):<36} {what}", markup=False, highlight=False,
                      soft_wrap=True)
    console.print("\n[bold]Next:[/]")
    for what, cmd in next_steps(result):
        console.print(f"  [dim]# {what}[/]", soft_wrap=True)
        for line in cmd.splitlines():
            console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
