"""`autotts discover`: the command's body (cli.py only forwards its flags here)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from autotts.discover.config import DiscoverConfig
from autotts.discover.loop import first_prompt, run_discovery


def discover_command(*, env: Path, run_dir: Path, dry_run: bool, console: Console,
                     **flags: Any) -> dict[str, Any] | None:
    """Flags left None fall back to AUTOTTS_* variables, then to the defaults."""
    cfg = DiscoverConfig.from_env(env, run_dir, **flags)
    t0 = time.monotonic()

    def progress(msg: str) -> None:
        # The message may hold a candidate's NAME: never read as rich markup.
        console.print(f"[dim]{time.monotonic() - t0:7.1f}s[/] {escape(msg)}", highlight=False,
                      markup=True, soft_wrap=True)

    if dry_run:
        # Plain stdout, so the prompt can be piped or diffed verbatim.
        sys.stdout.write(first_prompt(cfg, progress=progress))
        sys.stdout.flush()
        return None
    from autotts.sandbox.lockdown import describe, is_strong, require_strong

    found = require_strong(cfg.allow_weak_sandbox)  # before any model is asked
    if not is_strong(found):
        console.print(f"[bold red]weak sandbox[/]: candidates can reach your files or network "
                      f"(isolation: {describe(found)})", highlight=False)
    summary = run_discovery(cfg, progress=progress)
    console.print(final_line(summary, cfg.run_dir), highlight=False, soft_wrap=True, markup=True)
    return summary


def final_line(summary: dict[str, Any], run_dir: Path) -> str:
    """The last console line: the selected candidate's objectives, and the held-out objectives
    of the baselines beside its own (best first), so that the outcome reads without the
    report."""
    best = summary.get("best")
    sel = summary.get("selection") or {}
    held = sel.get("heldout_objective")
    chosen = (sel.get("selected") or {}).get("label")
    others = sorted(((k, v) for k, v in (sel.get("heldout_objectives") or {}).items()
                     if k != chosen and v is not None), key=lambda kv: -kv[1])
    n_cand = summary.get("candidates_evaluated")
    line = (f"[bold]{summary['status']}[/]: {summary['rounds_completed']} round(s)"
            + ("" if n_cand is None else f", {n_cand} candidate(s)")
            + f", spent ${summary['spent_usd'] or 0:.4f}; best "
            + ("none" if not best else f"round {best['id']} {escape(str(best['name']))} "
               f"(search objective {best['objective']:.2f}"
               + ("" if held is None else f", held-out {held:.2f}") + ")"))
    if others:
        line += "; held-out baselines: " + ", ".join(f"{escape(k)} {v:.2f}" for k, v in others)
    return line + f"; run dir {escape(str(run_dir))}"


def where_discovery_stopped(run_dir: Path) -> str:
    """Where an interrupted run stands, from its run dir (the directory is the truth: a round
    counts once its directory is complete, DESIGN §8)."""
    from autotts.discover.rundir import RunDir

    rd = RunDir(run_dir)
    done = len(rd.completed())
    final = "; its held-out step is done" if rd.final_done() else ""
    return f"{done} round(s) complete in {run_dir}{final}"
