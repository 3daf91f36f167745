"""`autotts sweep`: every built-in (or chosen) controller over a β grid on several stores, into one
report whose tables mark the Pareto-optimal points (the controller library's yardstick)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from autotts.controller import builtin_names
from autotts.evaluate import EvalProtocol, evaluate
from autotts.metrics import monotonicity_violations
from autotts.report import ReportPaths, build_report, write_file
from autotts.settings import SWEEP, describe_protocol, resolve
from autotts.store import open_store


def run_sweep(
    stores: Sequence[str | Path],
    out_dir: str | Path,
    *,
    controllers: Sequence[str] | None = None,
    betas: Sequence[float] = SWEEP.betas,
    proto: EvalProtocol | None = None,
    workers: int = 1,
    title: str = "controller library",
    console: Console | None = None,
) -> tuple[ReportPaths, list[dict[str, Any]], float]:
    """Evaluate every controller (default: the built-ins) on `stores` under `proto` (default: the
    sweep's defaults, autotts.settings.SWEEP) and write the report into `out_dir`."""
    console = console or Console(stderr=True)
    proto = proto or resolve(SWEEP).proto
    loaded = [open_store(s) for s in stores]
    names = list(controllers) if controllers else builtin_names()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]{task.description:<28}"), BarColumn(), TimeElapsedColumn(),
                  console=console) as prog:
        task = prog.add_task("sweep", total=len(names))
        for i, name in enumerate(names):
            prog.update(task, description=f"evaluating {name}", completed=i)
            rows += evaluate(name, loaded, list(betas), proto, workers=workers).rows
        prog.update(task, description="done", completed=len(names))
    seconds = time.perf_counter() - t0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = [{k: v for k, v in r.items() if k != "errors"} for r in rows]
    write_file(out / "results.json", (json.dumps(payload, indent=2) + "\n").encode())
    bad = monotonicity_violations(rows)
    notes = [
        f"Protocol: {describe_protocol(proto)}, β ∈ {{{', '.join(f'{b:g}' for b in betas)}}}; "
        f"{len(names)} controllers × {len(loaded)} stores, evaluated in {seconds:.0f} s "
        f"with {workers} worker(s).",
        "Cost is monotone in β for every controller on every store (within one standard error)."
        if not bad else "Not monotone: " + "; ".join(v.describe() for v in bad),
    ]
    paths = build_report(rows, out, title=title, notes=notes)
    return paths, rows, seconds
