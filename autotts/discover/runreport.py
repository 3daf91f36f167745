"""Reading a run directory back for `autotts report RUN_DIR` (and the report the loop writes at
the end of a run): result rows for the plot, and the per-round, held-out and spend tables.

Rows: the seeds' and every evaluated candidate's β curves on the search stores (candidates are
labelled "r<round>:<NAME>", "r<round>.<k>:<NAME>" for a round's k-th file, so two candidates with
the same NAME stay two curves), and the held-out
rows of the selected candidate and the baselines. Search and held-out stores have different names,
so they get separate panels of the plot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotts.discover.fsio import read_json, read_jsonl
from autotts.discover.rundir import RunDir, label
from autotts.errors import ConfigError


@dataclass
class RunReport:
    rows: list[dict[str, Any]]
    tables: dict[str, list[dict[str, Any]]]
    title: str
    notes: list[str] = field(default_factory=list)


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and (p / "rounds").is_dir()


def read_run_dir(path: str | Path) -> RunReport:
    """Rows and tables of a discovery run directory (complete or not)."""
    rd = RunDir(path)
    if not is_run_dir(rd.path):
        raise ConfigError(f"{path}: not a discovery run directory (no config.json / rounds/)")
    config = read_json(rd.config).get("identity", {})
    rows: list[dict[str, Any]] = []
    seeds = read_json(rd.seeds).get("seeds", []) if rd.seeds.is_file() else []
    for s in seeds:
        rows += [{**r, "controller": s["name"], "split": "search"} for r in s["rows"]]
    rounds_table = []
    for rec in (rec for n in rd.completed() for rec in rd.load_round(n)):
        lab = label(rec["id"], rec.get("name"))
        v = rec["verdict"]
        cost = rec.get("cost") or {}
        rows += [{**r, "controller": lab, "split": "search", "round": rec["round"]}
                 for r in rec.get("rows") or []]
        rounds_table.append({
            "round": rec["id"], "name": rec.get("name") or "–",
            "verdict": v["kind"] if v["kind"] == "ok" else f"{v['kind']} ({v['stage']})",
            "message": (v.get("message") or "")[:120],
            "objective": rec.get("objective"),
            "monotone": rec.get("monotone"),
            "eligible": bool(rec.get("eligible")),
            "prompt_tokens": cost.get("prompt_tokens"),
            "completion_tokens": cost.get("completion_tokens"),
            "cost_usd": cost.get("cost_usd"),
        })
    tables: dict[str, list[dict[str, Any]]] = {
        "Seeds (search split)": [{"controller": s["name"], "objective": s["objective"]}
                                 for s in seeds],
        "Rounds": rounds_table,
    }
    notes = [f"Environment {config.get('env')}, model {config.get('model')}, "
             f"{len(rounds_table)} round(s). Objective: mean accuracy (%) over the log-token "
             "range of the environment, averaged over stores (docs/discovery.md)."]
    if rd.final_done():
        sel = read_json(rd.final / "selection.json")
        held = read_json(rd.final / "heldout.json")
        for r in held.get("rows", []):
            rows.append({**r, "controller": r.get("label", r["controller"]), "split": "heldout"})
        objectives = held.get("objectives", {})
        order = list(dict.fromkeys(r.get("label", r["controller"]) for r in held.get("rows", [])))
        tables["Held-out split"] = [
            {"controller": lab, "objective": objectives[lab].get("objective"),
             **{f"AUC {s}": v for s, v in (objectives[lab].get("store_objective") or {}).items()}}
            for lab in order if lab in objectives
        ]
        s = sel.get("selected")
        notes.append("Selected on the search split: "
                     + ("none (no eligible candidate)" if not s else
                        f"{s['label']} (search objective {s['objective']:.2f}, held-out "
                        f"{_fmt(sel.get('heldout_objective'))}, {sel['heldout_draws']} draws)"))
    else:
        notes.append("The held-out step has not run yet.")
    summary = read_json(rd.summary) if rd.summary.is_file() else {}
    reqs = [r for r in read_jsonl(rd.requests) if r.get("http")]
    tables["Spend"] = [{
        "status": summary.get("status"),
        "http_attempts": len(reqs),
        "ok_responses": sum(1 for r in reqs if r.get("status") == "ok"),
        "prompt_tokens": sum(int(r.get("prompt_tokens") or 0) for r in reqs),
        "completion_tokens": sum(int(r.get("completion_tokens") or 0) for r in reqs),
        "spent_usd": round(sum(float(r.get("cost_usd") or 0) for r in reqs), 6),
        "budget_usd": summary.get("budget_usd"),
    }]
    return RunReport(rows, tables, f"autotts discovery: {rd.path.name}", notes)


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def write_run_report(path: str | Path, out_dir: str | Path, title: str | None = None) -> Any:
    """Build the report of a run directory into out_dir (report.build_report)."""
    from autotts.report import build_report

    rep = read_run_dir(path)
    if not rep.rows:
        raise ConfigError(f"{path}: nothing to report yet (no evaluated controller)")
    return build_report(rep.rows, out_dir, title or rep.title, rep.tables, notes=rep.notes)


def report_with_runs(inputs: Sequence[str | Path], out_dir: str | Path,
                     title: str | None = None) -> Any:
    """`autotts report INPUT...` when some inputs are run directories: their rows and tables,
    plus the rows of the other inputs (eval JSON files, result directories). None when no input
    is a run directory (the caller then reports the inputs as plain results)."""
    from autotts.report import build_report, load_rows

    runs = [Path(p) for p in inputs if is_run_dir(p)]
    if not runs:
        return None
    rows: list[dict[str, Any]] = []
    tables: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    reps = [read_run_dir(p) for p in runs]
    for p, rep in zip(runs, reps, strict=True):
        # Candidate labels (r3:NAME) are unique within a run, not across runs.
        tag = "" if len(runs) == 1 else f"{p.name}/"
        rows += [{**r, "controller": f"{tag}{r['controller']}"} if "round" in r else r
                 for r in rep.rows]
        tables.update({f"{k}{f' ({p.name})' if tag else ''}": v for k, v in rep.tables.items()})
        notes += [f"{tag}{n}" for n in rep.notes]
    others = [p for p in inputs if Path(p) not in runs]
    if others:
        rows += load_rows(others)
    if not rows:
        raise ConfigError("nothing to report yet (no evaluated controller)")
    if title is None:
        title = reps[0].title if len(runs) == 1 and not others else "autotts report"
    return build_report(rows, out_dir, title, tables, notes=notes)
