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

from autotts.discover.rundir import RunDir, label
from autotts.errors import ConfigError
from autotts.fsio import read_json, read_jsonl


@dataclass
class RunReport:
    rows: list[dict[str, Any]]
    tables: dict[str, list[dict[str, Any]]]
    title: str
    notes: list[str] = field(default_factory=list)
    token_range: tuple[float, float] | None = None  # the objective's; None: unknown
    # {(store, curve label): stats.Curve} from the per-question tables the run recorded: the
    # Summary's AUC intervals (report.build_report's `curves`).
    curves: dict[tuple[str, str], Any] = field(default_factory=dict)
    candidate_labels: set[str] = field(default_factory=set)  # labels of candidates' curves


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file() and (p / "rounds").is_dir()


def read_run_dir(path: str | Path) -> RunReport:
    """Rows and tables of a discovery run directory (complete or not)."""
    rd = RunDir(path)
    if not is_run_dir(rd.path):
        raise ConfigError(f"{path}: not a discovery run directory (no config.json / rounds/)")
    cfg_file = read_json(rd.config)
    config = cfg_file.get("identity", {})
    token_range = _token_range(cfg_file.get("info") or {})
    rows: list[dict[str, Any]] = []
    curves: dict[tuple[str, str], Any] = {}
    cand_labels: set[str] = set()
    seeds = read_json(rd.seeds).get("seeds", []) if rd.seeds.is_file() else []
    for s in seeds:
        rows += [{**r, "controller": s["name"], "split": "search"} for r in s["rows"]]
        curves.update(_curves(s.get("per_question"), s["name"]))
    records = [rec for n in rd.completed() for rec in rd.load_round(n)]
    search_clusters = _search_clusters(seeds, cfg_file.get("info") or {})
    versus = _versus(records, seeds, search_clusters, token_range)
    rounds_table = []
    for rec in records:
        lab = label(rec["id"], rec.get("name"))
        v = rec["verdict"]
        cost = rec.get("cost") or {}
        part = rec.get("partial")  # stopped early by the race: its first draws only
        curve = lab if not part else f"{lab} (partial: {part['draws']}/{part['of']} draws)"
        rows += [{**r, "controller": curve, "split": "search", "round": rec["round"]}
                 for r in rec.get("rows") or []]
        curves.update(_curves(rec.get("per_question"), curve))
        cand_labels.add(curve)
        rounds_table.append({
            "round": rec["id"], "name": rec.get("name") or "–",
            "verdict": v["kind"] if v["kind"] == "ok" else f"{v['kind']} ({v['stage']})",
            "message": (v.get("message") or "")[:120],
            "objective": rec.get("objective"),
            VERSUS: versus.get(str(rec["id"]), ""),
            "monotone": rec.get("monotone"),
            "eligible": bool(rec.get("eligible")),
            "prompt_tokens": cost.get("prompt_tokens"),
            "completion_tokens": cost.get("completion_tokens"),
            "cost_usd": cost.get("cost_usd"),
        })
    tables: dict[str, list[dict[str, Any]]] = {
        "Seeds (search split)": [{"controller": s["name"], "objective": s["objective"],
                                  OBJECTIVE_CI: _objective_ci(s.get("per_question"),
                                                              list(s.get("store_objective") or {}),
                                                              token_range, search_clusters),
                                  VERSUS: versus.get(f"seed:{s['name']}", "")}
                                 for s in seeds],
        "Rounds": rounds_table,
    }
    n_rounds = len(rd.completed())
    n_cands = sum(1 for r in rounds_table if r["name"] != "–")
    rng = ("" if token_range is None else
           f" ({token_range[0]:g}–{token_range[1]:g} tokens; the Summary's AUC column uses it)")
    notes = [f"Environment {config.get('env')}, model {config.get('model')}, "
             f"{n_rounds} round(s), {n_cands} candidate(s) evaluated. Objective: mean accuracy "
             f"(%) over the log-token range of the environment{rng}, averaged over stores "
             "(docs/discovery.md)."]
    if rd.final_done():
        sel = read_json(rd.final / "selection.json")
        held = read_json(rd.final / "heldout.json")
        for r in held.get("rows", []):
            rows.append({**r, "controller": r.get("label", r["controller"]), "split": "heldout"})
        for lab, pq in (held.get("per_question") or {}).items():  # runs since 2026-12-02
            curves.update(_curves(pq, lab))
        objectives = held.get("objectives", {})
        order = list(dict.fromkeys(r.get("label", r["controller"]) for r in held.get("rows", [])))
        held_pq = held.get("per_question") or {}
        held_clusters = held.get("clusters")
        tables["Held-out split"] = [
            {"controller": lab, "objective": objectives[lab].get("objective"),
             OBJECTIVE_CI: _objective_ci(held_pq.get(lab),
                                         list(objectives[lab].get("store_objective") or {}),
                                         token_range, held_clusters),
             **{f"AUC {s}": v for s, v in (objectives[lab].get("store_objective") or {}).items()}}
            for lab in order if lab in objectives
        ]
        s = sel.get("selected")
        notes.append("Selected on the search split: "
                     + ("none (no eligible candidate)" if not s else
                        f"{s['label']} (search objective {s['objective']:.2f}, held-out "
                        f"{_fmt(sel.get('heldout_objective'))}, {sel['heldout_draws']} draws)"
                        + _heldout_failure(sel)))
        comps = sel.get("comparisons") or {}
        if comps:
            tables["Held-out: selected minus each baseline (ΔAUC, paired 95% interval)"] = [
                {"baseline": name, "role": "seed" if name in (sel.get("seeds") or []) else
                 "baseline (not shown to the agent)",
                 "ΔAUC pooled": _iv(c["pooled"]), "P(improvement)": c["pooled"]["p_improvement"],
                 "significant": ("no interval" if c["pooled"]["low"] is None else
                                 "no (within noise)" if not c["pooled"]["significant"] else
                                 "yes (better)" if c["pooled"]["low"] > 0 else "yes (worse)"),
                 # Over all the baselines at once (runs from before it was recorded: blank).
                 "Holm p (over the baselines)": c["pooled"].get("p_holm"),
                 "significant after Holm": (None if "significant_holm" not in c["pooled"] else
                                            "yes" if c["pooled"]["significant_holm"] else "no"),
                 **{f"Δ {st}": _iv(v) for st, v in c["stores"].items()}}
                for name, c in comps.items()]
        shrink = _shrinkage(sel, objectives)
        if shrink:
            notes.append(shrink)
    else:
        notes.append("The held-out step has not run yet.")
    if versus:
        notes.append(f"{VERSUS} (Seeds and Rounds tables): each controller's search objective "
                     "minus the best seed's, with its paired 95% interval over questions "
                     "(autotts.stats, as the prompt's standings show it); 'within noise' where "
                     "the interval contains 0. Each interval is for its own comparison, not "
                     "adjusted for the many shown, and a candidate's search figure is biased "
                     "upwards by selection: only the held-out comparisons test the selected one.")
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
    return RunReport(rows, tables, f"autotts discovery: {rd.path.name}", notes, token_range,
                     curves, cand_labels)


VERSUS = "vs best seed: ΔAUC [95% interval]"


def _curves(tables: dict[str, Any] | None, name: str) -> dict[tuple[str, str], Any]:
    from autotts.discover.significance import curves_of

    return {(store, name): c for store, c in curves_of(tables or {}, name).items()}


OBJECTIVE_CI = "objective 95% CI (questions)"


def _search_clusters(seeds: Sequence[dict[str, Any]], info: dict[str, Any]) -> dict[str, str]:
    """The search stores resampled together, as the loop did (config.json's `search_clusters`;
    runs from before it was recorded: by their MODEL/BENCHMARK names)."""
    from autotts import stats

    clusters = info.get("search_clusters")
    if isinstance(clusters, dict):
        return clusters
    tables = next((s.get("per_question") for s in seeds if s.get("per_question")), None) or {}
    return stats.clusters_by_name(list(tables),
                                  {s: len(t.get("questions") or []) for s, t in tables.items()})


def _objective_ci(tables: dict[str, Any] | None, stores: Sequence[str],
                  token_range: tuple[float, float] | None,
                  clusters: dict[str, str] | None) -> str:
    """An objective's 95% interval over questions (stats.pooled_auc_interval over the stores,
    those sharing questions resampled together), as a cell; in words where there is none."""
    from autotts import stats

    curves = _curves(tables, "x")
    if not stores or token_range is None or any((s, "x") not in curves for s in stores):
        return "none (no per-question outcomes)"
    iv = stats.pooled_auc_interval([curves[(s, "x")] for s in stores], token_range,
                                   clusters=clusters)
    return iv.bracket() if iv.defined else "none (1 question)"


def _versus(records: Sequence[dict[str, Any]], seeds: Sequence[dict[str, Any]],
            clusters: dict[str, str], token_range: tuple[float, float] | None) -> dict[str, str]:
    """The standings' column: each seed's and candidate's objective minus the best seed's, with
    its interval (significance.versus_best_seed, as the prompt computes it), as table cells."""
    from autotts.discover.prompt import best_seed
    from autotts.discover.significance import cell, versus_best_seed

    ref = best_seed(seeds)
    if ref is None or token_range is None:
        return {}
    stores = list(ref.get("store_objective") or {})
    found = versus_best_seed(records, seeds, ref, stores, token_range, clusters)
    out = {"seed:" + str(ref["name"]): "(the best seed)"}
    for s in seeds:
        if s is not ref and s.get("objective") is not None:
            key = f"seed:{s['name']}"
            out[key] = cell(found.get(key), s["objective"] - ref["objective"])
    for r in records:
        if r.get("objective") is not None:
            out[str(r["id"])] = cell(found.get(str(r["id"])), r["objective"] - ref["objective"])
    return out


def _heldout_failure(sel: dict[str, Any]) -> str:
    """What went wrong in the selected candidate's held-out evaluation, if anything: a candidate
    that fails there on purpose (a crash, a timeout) must not pass for one whose held-out figure
    is merely missing."""
    v = sel.get("heldout_verdict") or {}
    if not sel.get("selected") or v.get("kind") in (None, "ok"):
        return ""
    msg = " ".join(str(v.get("message") or "").split())[:200]
    return f"; its held-out evaluation failed: {v['kind']}" + (f" ({msg})" if msg else "")


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _iv(c: dict[str, Any]) -> str:
    from autotts.discover.significance import bracket

    return bracket(c)


def _token_range(info: dict[str, Any]) -> tuple[float, float] | None:
    """The objective's token range: recorded in config.json by the loop, else read from the
    environment file the run was started with (runs made before it was recorded)."""
    tr = info.get("token_range")
    if isinstance(tr, list) and len(tr) == 2:
        return float(tr[0]), float(tr[1])
    path = info.get("env_path")
    if path and Path(path).is_file():
        try:
            from autotts.envdef import load_env

            lo, hi = load_env(path).token_range
            return float(lo), float(hi)
        except Exception:  # an env file edited since: the report still renders, overlap AUCs
            return None
    return None


def _shrinkage(sel: dict[str, Any], objectives: dict[str, Any]) -> str:
    """Winner's curse: the selected candidate is the maximum of many noisy search objectives, so
    its search objective is inflated. The seeds were not selected: their search → held-out change
    is the benchmark's own shift, and the selected candidate's excess drop estimates the
    selection bias."""
    s = sel.get("selected")
    held = sel.get("heldout_objective")
    if not s or held is None:
        return ""
    shifts = [objectives[n]["objective"] - v for n, v in (sel.get("search_objectives") or {}).items()
              if v is not None and (objectives.get(n) or {}).get("objective") is not None]
    mine = held - s["objective"]
    if not shifts:
        return f"Search → held-out change of the selected candidate: {mine:+.2f}."
    base = sum(shifts) / len(shifts)
    # What the figure is, plainly: one realisation, no interval. A bootstrap over the search
    # questions would hold the selected candidate fixed, yet the bias is from choosing it on
    # those very questions, so an interval of this difference would not cover what it names.
    # The yardstick is the held-out split's own noise, which the figure carries at least once.
    seeds = set(sel.get("seeds") or [])
    halves = sorted((c["pooled"]["high"] - c["pooled"]["low"]) / 2
                    for n, c in (sel.get("comparisons") or {}).items()
                    if n in seeds and c["pooled"].get("low") is not None
                    and c["pooled"].get("high") is not None)
    noise = ("" if not halves else
             " On the held-out split alone the selected candidate's ΔAUC against each seed has "
             f"a 95% interval of ±{halves[0]:.1f}" + ("" if halves[-1] - halves[0] < 0.05 else
                                                      f" to ±{halves[-1]:.1f}")
             + " points (above), and this difference carries the search split's noise as well: "
             "read a figure no larger than those as noise, not as a measured inflation.")
    return (f"Winner's curse: search → held-out change {mine:+.2f} for the selected candidate, "
            f"{base:+.2f} on average for the seeds (not selected); the difference, "
            f"{mine - base:+.2f}, is the part selecting the best of many noisy search objectives "
            "would explain. It is one figure with no interval: one selection on one search set, "
            "judged on one held-out set; besides the selection bias it holds the candidate's own "
            "change between the two splits and the question noise of both." + noise)


def write_run_report(path: str | Path, out_dir: str | Path, title: str | None = None) -> Any:
    """Build the report of a run directory into out_dir (report.build_report)."""
    from autotts.report import build_report

    rep = read_run_dir(path)
    if not rep.rows:
        raise ConfigError(f"{path}: nothing to report yet (no evaluated controller)")
    return build_report(rep.rows, out_dir, title or rep.title, rep.tables, notes=rep.notes,
                        auc_range=rep.token_range, curves=rep.curves)


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
    curves: dict[tuple[str, str], Any] = {}
    reps = [read_run_dir(p) for p in runs]
    for p, rep in zip(runs, reps, strict=True):
        # Candidate labels (r3:NAME) are unique within a run, not across runs.
        tag = "" if len(runs) == 1 else f"{p.name}/"
        rows += [{**r, "controller": f"{tag}{r['controller']}"} if "round" in r else r
                 for r in rep.rows]
        curves.update({(st, f"{tag}{lab}" if lab in rep.candidate_labels else lab): c
                       for (st, lab), c in rep.curves.items()})
        tables.update({f"{k}{f' ({p.name})' if tag else ''}": v for k, v in rep.tables.items()})
        notes += [f"{tag}{n}" for n in rep.notes]
    others = [p for p in inputs if Path(p) not in runs]
    if others:
        rows += load_rows(others)
    if not rows:
        raise ConfigError("nothing to report yet (no evaluated controller)")
    if title is None:
        title = reps[0].title if len(runs) == 1 and not others else "autotts report"
    ranges = {rep.token_range for rep in reps}
    return build_report(rows, out_dir, title, tables, notes=notes,
                        auc_range=ranges.pop() if len(ranges) == 1 else None, curves=curves)
