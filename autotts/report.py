"""Reports (`autotts report`, `autotts demo`): accuracy–cost plots and tables from result rows.

A result row is what `autotts eval --json` writes (DESIGN §10): {store, controller, config, beta,
accuracy (percent), accuracy_se, tokens (mean per question), tokens_se, draws, questions}. Any list
of such rows gives a report directory:

    accuracy_vs_tokens.png   accuracy vs mean tokens per question (log x), one curve per controller,
                             one panel per store, points labelled with β, the Pareto front marked
    report.md                the plot and the tables (markdown)
    report.html              the same, self-contained (the PNG embedded as base64): one file to open
    summary.json             per (store, controller): AUC, best point, Pareto points; all rows

`build_report` is the one entry point (the discovery loop calls it with its own rows and extra
tables); `load_rows` reads eval JSON files and result directories. The plot is drawn on a
matplotlib Figure with the Agg canvas directly, so it never touches pyplot's global state and runs
headless.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotts import __version__
from autotts.errors import ConfigError
from autotts.fsio import atomic_write_bytes, json_default_or_str
from autotts.metrics import auc_log_tokens, pareto_front

PNG_NAME = "accuracy_vs_tokens.png"
MD_NAME = "report.md"
HTML_NAME = "report.html"
SUMMARY_NAME = "summary.json"
REQUIRED = ("store", "controller", "accuracy", "tokens")


write_file = atomic_write_bytes  # reports are written atomically, like every other file


# ---- reading results --------------------------------------------------------------------------


def _check_rows(rows: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(rows, list):
        raise ConfigError(f"{where}: expected a JSON list of result rows")
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ConfigError(f"{where}: row {i} is not an object")
        missing = [k for k in REQUIRED if k not in r]
        if missing:
            raise ConfigError(f"{where}: row {i} lacks {', '.join(missing)} (not eval --json rows)")
        for k in ("accuracy", "tokens"):
            v = r[k]
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise ConfigError(f"{where}: row {i}: {k} must be a number, got {v!r}")
        beta = r.get("beta")
        if beta is not None and (isinstance(beta, bool) or not isinstance(beta, int | float)):
            raise ConfigError(f"{where}: row {i}: beta must be a number or null, got {beta!r}")
        out.append(dict(r))
    return out


def _is_row_list(data: Any) -> bool:
    return (
        isinstance(data, list) and bool(data) and isinstance(data[0], dict)
        and all(k in data[0] for k in REQUIRED)
    )


def _read_json_rows(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None
    if isinstance(data, dict) and "rows" in data:
        data = data["rows"]
    return _check_rows(data, str(path))


def _read_jsonl_rows(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # a torn last line of an append-only log: ignore it
                continue
            raise ConfigError(f"{path}:{n}: not valid JSON") from None
        rows.extend(item if isinstance(item, list) else [item])
    return _check_rows(rows, str(path))


def load_rows(inputs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Result rows from eval --json files (a JSON list, or an object with "rows"), JSON-lines files,
    and directories: every results.jsonl and every JSON file holding result rows beneath them
    (other JSON files, such as a report's own summary.json, are skipped). Each row gets a
    "source" key naming the file it came from."""
    rows: list[dict[str, Any]] = []
    if not inputs:
        raise ConfigError("report needs at least one input (eval --json output or a run dir)")
    for inp in inputs:
        p = Path(inp)
        if p.is_file():
            found = _read_jsonl_rows(p) if p.suffix == ".jsonl" else _read_json_rows(p)
            for r in found:
                r.setdefault("source", p.name)
            rows += found
        elif p.is_dir():
            found = []
            for f in sorted(p.rglob("*")):
                if not f.is_file() or f.name.startswith("."):
                    continue
                rel = str(f.relative_to(p))
                if f.name == "results.jsonl":
                    part = _read_jsonl_rows(f)
                elif f.suffix == ".json" and f.name != SUMMARY_NAME:
                    try:
                        data = json.loads(f.read_text())
                    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                        continue
                    if isinstance(data, dict) and _is_row_list(data.get("rows")):
                        data = data["rows"]
                    if not _is_row_list(data):
                        continue
                    part = _check_rows(data, str(f))
                else:
                    continue
                for r in part:
                    r.setdefault("source", f"{p.name}/{rel}")
                found += part
            if not found:
                raise ConfigError(f"{p}: no result rows found (no results.jsonl or eval JSON)")
            rows += found
        else:
            raise ConfigError(f"{p}: no such file or directory")
    if not rows:
        raise ConfigError("no result rows in the inputs")
    return rows


# ---- series and tables ------------------------------------------------------------------------


@dataclass
class Series:
    store: str
    label: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokens(self) -> np.ndarray:
        return np.array([float(r["tokens"]) for r in self.rows])

    @property
    def accuracy(self) -> np.ndarray:
        return np.array([float(r["accuracy"]) for r in self.rows])


def _beta_key(r: dict[str, Any]) -> tuple[int, float]:
    b = r.get("beta")
    return (1, float(r["tokens"])) if b is None else (0, float(b))


def group_series(rows: Sequence[dict[str, Any]]) -> list[Series]:
    """One series per (store, controller). A controller that appears in several sources with the
    same β on the same store (two runs of it) gets one series per source."""
    seen: dict[tuple[str, str, Any], set[str]] = {}
    for r in rows:
        seen.setdefault((r["store"], r["controller"], r.get("beta")), set()).add(
            str(r.get("source", ""))
        )
    clash = {(s, c) for (s, c, _), src in seen.items() if len(src) > 1}
    series: dict[tuple[str, str], Series] = {}
    for r in rows:
        label = str(r["controller"])
        if (r["store"], r["controller"]) in clash:
            label = f"{label} ({r.get('source', '')})"
        key = (str(r["store"]), label)
        series.setdefault(key, Series(str(r["store"]), label)).rows.append(r)
    for s in series.values():
        s.rows.sort(key=_beta_key)
    return list(series.values())


def _stores(series: Sequence[Series]) -> list[str]:
    return list(dict.fromkeys(s.store for s in series))


def _auc_range(group: Sequence[Series]) -> tuple[float, float]:
    """The log-token range the store's AUCs are taken over: where all curves overlap, else the
    range they span together."""
    los = [float(s.tokens.min()) for s in group]
    his = [float(s.tokens.max()) for s in group]
    lo, hi = max(los), min(his)
    if lo < hi:
        return lo, hi
    return min(los), max(his)


def _fmt_beta(b: Any) -> str:
    return "–" if b is None else f"{float(b):g}"


def analyse(rows: Sequence[dict[str, Any]], auc_range: tuple[float, float] | None = None
            ) -> tuple[list[Series], list[dict[str, Any]]]:
    """Series, with each row marked `pareto` (optimal across all controllers of its store), and
    one summary entry per (store, series). `auc_range`: the token range of every AUC (a
    discovery run's objective range), instead of each store's overlap of the curves."""
    series = group_series(rows)
    summary: list[dict[str, Any]] = []
    for store in _stores(series):
        group = [s for s in series if s.store == store]
        pts = [r for s in group for r in s.rows]
        mask = pareto_front([(r["tokens"], r["accuracy"]) for r in pts])
        for r, m in zip(pts, mask, strict=True):
            r["pareto"] = bool(m)
        lo, hi = auc_range or _auc_range(group)
        for s in group:
            best = max(s.rows, key=lambda r: (r["accuracy"], -r["tokens"]))
            summary.append(
                {
                    "store": store,
                    "controller": s.label,
                    "points": len(s.rows),
                    "best_accuracy": float(best["accuracy"]),
                    "best_beta": best.get("beta"),
                    "tokens_at_best": float(best["tokens"]),
                    "min_tokens": float(s.tokens.min()),
                    "max_tokens": float(s.tokens.max()),
                    "auc": auc_log_tokens(s.tokens, s.accuracy, lo, hi),
                    "auc_range": [lo, hi],
                    "pareto_points": sum(bool(r["pareto"]) for r in s.rows),
                }
            )
    return series, summary


# ---- the plot ---------------------------------------------------------------------------------


def make_figure(rows: Sequence[dict[str, Any]], title: str = "") -> tuple[Any, int]:
    """The accuracy-vs-tokens figure (matplotlib Figure on an Agg canvas) and its number of
    controller curves. Curve lines carry gid "curve:<store>:<label>", the Pareto front
    "pareto:<store>"."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    except ImportError:
        raise ConfigError(
            "plots need matplotlib: pip install 'autotts[plots]' (or the dev extra)"
        ) from None
    series, _ = analyse([dict(r) for r in rows])
    stores = _stores(series)
    ncols = 1 if len(stores) == 1 else 2
    nrows = math.ceil(len(stores) / ncols)
    fig = Figure(figsize=(9.0 if ncols == 1 else 14.0, 6.0 * nrows if ncols == 1 else 5.2 * nrows),
                 dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    labels = list(dict.fromkeys(s.label for s in series))
    palette = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
        "#7f7f7f", "#bcbd22", "#17becf",
    ]
    markers = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]
    style = {lab: (palette[i % 10], markers[(i // 10 + i) % 10]) for i, lab in enumerate(labels)}
    n_curves = 0
    labels_todo: list[tuple[Any, float, float, str, str]] = []
    for ax, store in zip(axes, stores, strict=False):
        group = [s for s in series if s.store == store]
        for s in group:
            color, marker = style[s.label]
            t, a = s.tokens, s.accuracy
            t_se = np.array([float(r.get("tokens_se") or 0.0) for r in s.rows])
            a_se = np.array([float(r.get("accuracy_se") or 0.0) for r in s.rows])
            if np.any(a_se > 0) or np.any(t_se > 0):
                ax.errorbar(t, a, yerr=a_se, xerr=t_se, fmt="none", ecolor=color, alpha=0.35,
                            elinewidth=1, capsize=0, zorder=2)
            band = _band(s.rows)
            if band is not None:  # the question-level 95% interval of accuracy at each point
                bt, blo, bhi = band
                poly = ax.fill_between(bt, blo, bhi, color=color, alpha=0.12, lw=0, zorder=1)
                poly.set_gid(f"band:{store}:{s.label}")
            (line,) = ax.plot(t, a, marker=marker, color=color, label=s.label, lw=1.8, ms=6,
                              zorder=3)
            line.set_gid(f"curve:{store}:{s.label}")
            n_curves += 1
            labels_todo.extend(
                (ax, float(r["tokens"]), float(r["accuracy"]), f"β={_fmt_beta(r['beta'])}", color)
                for r in s.rows if r.get("beta") is not None
            )
        front = sorted(
            ((r["tokens"], r["accuracy"]) for s in group for r in s.rows if r.get("pareto")),
        )
        if front:
            ft, fa = zip(*front, strict=True)
            (pl,) = ax.plot(ft, fa, ls="--", color="black", lw=1.0, alpha=0.7, zorder=4,
                            drawstyle="steps-post", marker="o", ms=12, mfc="none", mec="black",
                            mew=1.5)
            pl.set_gid(f"pareto:{store}")
        ax.set_xscale("log")
        all_t = np.concatenate([s.tokens for s in group])
        narrow = math.log10(all_t.max() / all_t.min()) < 1.2 if all_t.min() > 0 else False
        subs = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0) if narrow else (1.0, 2.0, 5.0)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(_fmt_tokens))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("mean tokens per question (log scale)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(store, fontsize=11)
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
        handles, _ = ax.get_legend_handles_labels()
        handles.append(Line2D([], [], ls="--", color="black", marker="o", ms=10, mfc="none",
                              mec="black", mew=1.5, label="Pareto front"))
        ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.9,
                  title="controller (points: β)", title_fontsize=8)
    for ax in axes[len(stores):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=13)
    _place_labels(fig, labels_todo)
    return fig, n_curves


def _is_interval(ci: Any) -> bool:
    """[low, high] of two numbers (a row's question-level interval; [null, null] where its store
    has one question and there is none)."""
    return (isinstance(ci, list | tuple) and len(ci) == 2
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in ci))


def _band(rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(tokens, low, high) of the rows' question-level accuracy intervals, sorted by tokens; None
    unless every row of the series has one."""
    cis = [r.get("accuracy_ci_questions") for r in rows]
    if len(rows) < 2 or not all(_is_interval(c) for c in cis):
        return None
    order = np.argsort([float(r["tokens"]) for r in rows], kind="stable")
    t = np.array([float(rows[i]["tokens"]) for i in order])
    lo = np.array([float(cis[i][0]) for i in order])  # type: ignore[index]
    hi = np.array([float(cis[i][1]) for i in order])  # type: ignore[index]
    return t, lo, hi


# Offsets (points) and alignments tried, in order, for a β label next to its point.
_LABEL_SPOTS = [
    (4, -4, "left", "top"), (4, 4, "left", "bottom"), (-4, 4, "right", "bottom"),
    (-4, -4, "right", "top"), (0, -7, "center", "top"), (0, 7, "center", "bottom"),
    (10, -12, "left", "top"), (-10, 12, "right", "bottom"), (10, 12, "left", "bottom"),
    (-10, -12, "right", "top"), (14, 0, "left", "center"), (-14, 0, "right", "center"),
    (0, -16, "center", "top"), (0, 16, "center", "bottom"), (18, -20, "left", "top"),
    (-18, 20, "right", "bottom"),
]


def _label_box(ox: float, oy: float, w: float, h: float, spot: tuple[int, int, str, str],
               px: float) -> tuple[float, float, float, float]:
    """Display box (x0, y0, x1, y1) of a w × h text annotating display point (ox, oy) at `spot`
    (offset in points, horizontal and vertical alignment); `px`: pixels per point."""
    dx, dy, ha, va = spot
    x0 = ox + dx * px - {"left": 0.0, "center": w / 2, "right": w}[ha]
    y0 = oy + dy * px - {"bottom": 0.0, "center": h / 2, "top": h}[va]
    return x0, y0, x0 + w, y0 + h


def _place_labels(fig: Any, labels: Sequence[tuple[Any, float, float, str, str]]) -> None:
    """Put each β label at the first nearby spot that overlaps no label placed before it and no
    marker (else the spot with the least marker overlap). A label that cannot be placed without
    covering another label is left out: the tables carry every β, and overlapping labels are
    unreadable. Measured in display space after layout.

    A label's box at each spot is its text's extent (measured once per distinct text: the β
    strings repeat across curves) moved to the spot's offset and alignment, which is how
    matplotlib lays out unrotated text: the same boxes as annotating every spot and asking for
    its extent, for a fraction of the cost (tests/test_report.py holds the two to equality)."""
    if not labels:
        return
    fig.draw_without_rendering()  # runs the layout so that display coordinates are final
    renderer = fig.canvas.get_renderer()
    placed: dict[Any, list[tuple[float, float, float, float]]] = {}
    markers: dict[Any, np.ndarray] = {}
    for ax, x, y, *_ in labels:
        markers.setdefault(ax, []).append(ax.transData.transform((x, y)))  # type: ignore[union-attr]
    r = 5.0  # marker radius in pixels, about
    boxes = {ax: (m[:, 0] - r, m[:, 1] - r, m[:, 0] + r, m[:, 1] + r)
             for ax, m in ((ax, np.array(v)) for ax, v in markers.items())}
    extents: dict[str, tuple[float, float]] = {}
    px = fig.dpi / 72.0

    def overlap(ax: Any, x0: float, y0: float, x1: float, y1: float) -> tuple[float, float]:
        on_labels = 0.0
        for o in placed.get(ax, ()):
            w = min(o[2], x1) - max(o[0], x0)
            h = min(o[3], y1) - max(o[1], y0)
            if w > 0 and h > 0:
                on_labels += w * h
        mx0, my0, mx1, my1 = boxes[ax]
        w = np.minimum(mx1, x1) - np.maximum(mx0, x0)
        h = np.minimum(my1, y1) - np.maximum(my0, y0)
        # Summed in marker order, as one float at a time: ties between spots break as before.
        on_markers = sum(np.where((w > 0) & (h > 0), w * h, 0.0).tolist())
        return on_labels, on_markers

    for ax, x, y, text, color in labels:
        if text not in extents:
            # Never clipped: matplotlib gives a clipped annotation (a point outside the axes) a
            # 1 × 1 extent, which is no text's size.
            probe = ax.annotate(text, (x, y), xytext=(0, 0), textcoords="offset points",
                                ha="left", va="bottom", fontsize=7, annotation_clip=False)
            bb = probe.get_window_extent(renderer)
            extents[text] = (bb.width, bb.height)
            probe.remove()
        w, h = extents[text]
        ox, oy = ax.transData.transform((x, y))
        best = None
        for spot in _LABEL_SPOTS:
            box = _label_box(ox, oy, w, h, spot, px)
            cost = overlap(ax, *box)
            if best is None or cost < best[0]:
                best = (cost, spot, box)
            if cost == (0.0, 0.0):
                break
        assert best is not None
        if best[0][0] > 0:
            continue
        dx, dy, ha, va = best[1]
        ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points",
                    ha=ha, va=va, fontsize=7, color=color, zorder=5)
        placed.setdefault(ax, []).append(best[2])


def _fmt_tokens(x: float, _pos: Any = None) -> str:
    """Tick labels for token counts: 500, 2k, 50k, 1.5M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:g}{suffix}"
    return f"{x:g}"


def render_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


# ---- markdown and HTML ------------------------------------------------------------------------


def _num(v: Any, fmt: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def _ci(r: dict[str, Any], key: str, fmt: str) -> str:
    ci = r.get(key)
    if not _is_interval(ci):  # none, or none to give (a store of one question: [null, null])
        return "–"
    return f"[{_num(ci[0], fmt)}, {_num(ci[1], fmt)}]"


def _results_table(series: Sequence[Series]) -> tuple[list[str], list[list[str]], list[bool]]:
    # Question-level intervals only where some row has them (eval output of this version, or rows
    # that carry their episodes); the draw-level standard errors are always shown.
    with_ci = any(r.get("accuracy_ci_questions") is not None for s in series for r in s.rows)
    head = ["store", "controller", "β", "accuracy %", "± se (draws)"]
    head += ["95% CI (questions)"] if with_ci else []
    head += ["tokens", "± se (draws)"]
    head += ["95% CI (questions)"] if with_ci else []
    head += ["draws", "questions", "Pareto"]
    body, marks = [], []
    for s in series:
        for r in s.rows:
            # One draw has no spread over draws: its se of 0 would pass for an exact figure.
            one = isinstance(r.get("draws"), int) and r["draws"] < 2
            row = [s.store, s.label, _fmt_beta(r.get("beta")), _num(r["accuracy"], ".2f"),
                   "–" if one else _num(r.get("accuracy_se"), ".2f")]
            row += [_ci(r, "accuracy_ci_questions", ".1f")] if with_ci else []
            row += [_num(r["tokens"], ",.0f"), "–" if one else _num(r.get("tokens_se"), ",.0f")]
            row += [_ci(r, "tokens_ci_questions", ",.0f")] if with_ci else []
            row += [str(r.get("draws", "–")), str(r.get("questions", "–")),
                    "★" if r.get("pareto") else ""]
            body.append(row)
            marks.append(bool(r.get("pareto")))
    return head, body, marks


def _summary_table(summary: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    # The AUC's interval over questions where some curve has its per-question outcomes; a curve
    # without them says why it has none, in words (never a bare point beside intervals).
    with_ci = _has_auc_ci(summary)
    head = ["store", "controller", "points", "best accuracy %", "at β", "tokens at best",
            "AUC (mean acc. over log-tokens)"]
    head += ["AUC 95% CI (questions)"] if with_ci else []
    head += ["AUC range (tokens)", "Pareto points"]
    body = []
    for e in summary:
        row = [e["store"], e["controller"], str(e["points"]), _num(e["best_accuracy"], ".2f"),
               _fmt_beta(e["best_beta"]), _num(e["tokens_at_best"], ",.0f"),
               _num(e["auc"], ".2f")]
        if with_ci:
            ci = e.get("auc_ci_questions")
            row.append(f"[{_num(ci[0], '.2f')}, {_num(ci[1], '.2f')}]" if _is_interval(ci)
                       else f"none ({e.get('auc_ci_note') or NO_OUTCOMES})")
        row += [f"{e['auc_range'][0]:,.0f}–{e['auc_range'][1]:,.0f}", str(e["pareto_points"])]
        body.append(row)
    return head, body


NO_OUTCOMES = "no per-question outcomes"


def _has_auc_ci(summary: Sequence[dict[str, Any]]) -> bool:
    """Some curve's per-question outcomes were known (an interval, or a reason other than their
    absence, such as a store of one question): the Summary gets its AUC interval column."""
    return any(e.get("auc_ci_questions") is not None
               or e.get("auc_ci_note") not in (None, NO_OUTCOMES) for e in summary)


def _auc_intervals(series: Sequence[Series], summary: Sequence[dict[str, Any]],
                   curves: Mapping[tuple[str, str], Any],
                   embedded: Mapping[tuple[str, str, str], Any]) -> None:
    """Give each summary entry its AUC's 95% interval over questions, in place
    ("auc_ci_questions": [low, high], over the entry's own AUC range; None with "auc_ci_note"
    saying why where there is none). The curve is `curves[(store, label)]` (a caller's, e.g. a
    discovery run's per-question tables), else the one its rows embed (eval --json-episodes).
    The store's questions are resampled alone (as `eval`'s per-β intervals are)."""
    from autotts.stats import auc_interval, check_range

    by_key = {(s.store, s.label): s for s in series}
    for e in summary:
        s = by_key[(e["store"], e["controller"])]
        c = curves.get((s.store, s.label))
        if c is None and s.rows:
            r0 = s.rows[0]
            c = embedded.get((str(r0.get("source", "")), s.store, str(r0["controller"])))
        e["auc_ci_questions"] = None
        if c is None:
            e["auc_ci_note"] = NO_OUTCOMES
            continue
        lo, hi = e["auc_range"]
        if not lo < hi:
            e["auc_ci_note"] = "one token level, no AUC range"
            continue
        iv = auc_interval(c, check_range((lo, hi)))
        if not iv.defined:
            e["auc_ci_note"] = "1 question"
            continue
        e["auc_ci_questions"] = [iv.low, iv.high]


def _generic_table(items: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = list(dict.fromkeys(k for it in items for k in it))

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return _num(v, ".4g")
        if isinstance(v, dict | list):
            return json.dumps(v, ensure_ascii=False)
        return "" if v is None else str(v)

    return head, [[cell(it.get(k)) for k in head] for it in items]


def _md_table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    def esc(x: str) -> str:
        return x.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def _html_table(head: Sequence[str], body: Sequence[Sequence[str]],
                marks: Sequence[bool] | None = None) -> str:
    out = ["<table>", "<thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
           + "</tr></thead>", "<tbody>"]
    for i, row in enumerate(body):
        cls = ' class="pareto"' if marks and marks[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, td:nth-child(2) { text-align: left; }
tr.pareto td { background: #fff6d5; font-weight: 600; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #666; font-size: 0.85em; }
"""


@dataclass
class ReportPaths:
    out_dir: Path
    png: Path | None
    markdown: Path
    html: Path
    summary: Path
    curves: int
    stores: list[str]


def build_report(
    rows: Sequence[dict[str, Any]],
    out_dir: str | Path,
    title: str = "autotts report",
    extra_tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    *,
    notes: Sequence[str] = (),
    auc_range: tuple[float, float] | None = None,
    curves: Mapping[tuple[str, str], Any] | None = None,
) -> ReportPaths:
    """Write the report directory for `rows` (eval --json rows; extra keys are kept) and return
    where everything is. `extra_tables` maps a heading to a list of row dicts, rendered as further
    tables (the discovery loop's per-round table, for instance); `notes` are paragraphs printed
    under the title. `curves` ({(store, controller label): stats.Curve}) give the Summary's AUCs
    their intervals over questions where the rows do not embed their episodes."""
    if not rows:
        raise ConfigError("nothing to report: no result rows")
    rows = _check_rows([dict(r) for r in rows], "rows")
    embedded = _embedded_curves(rows)
    rows = _question_intervals(rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    series, summary = analyse(rows, auc_range)
    _auc_intervals(series, summary, curves or {}, embedded)
    stores = _stores(series)

    png_path: Path | None = out / PNG_NAME
    png_b64 = ""
    fig, n_curves = None, len(series)
    try:
        fig, n_curves = make_figure(rows, title)
    except ConfigError as e:
        png_path, notes = None, [*notes, f"Plot skipped: {e}"]
    if fig is not None and png_path is not None:
        data = render_png(fig)
        write_file(png_path, data)
        png_b64 = base64.b64encode(data).decode("ascii")

    r_head, r_body, r_marks = _results_table(series)
    s_head, s_body = _summary_table(summary)
    extra = [(name, *_generic_table(items)) for name, items in (extra_tables or {}).items()]
    legend = ("★ / highlighted: Pareto-optimal (no other point of the same store is cheaper and at "
              "least as accurate). AUC: mean accuracy over "
              + ("the log-token range where all of a store's curves overlap" if auc_range is None
                 else f"the log-token range {auc_range[0]:g}–{auc_range[1]:g} tokens")
              + " (curves held flat beyond their ends). ± se (draws): standard "
              "error over the shuffle draws (the published protocol; the replay's own noise on "
              "these questions). 95% CI (questions): paired bootstrap over the store's questions, "
              "draws kept (how far the figure could move on other questions; autotts.stats); "
              "drawn as bands in the plot. Bands are per controller: overlapping bands do not "
              "make a difference noise, as both controllers face the same questions; `autotts "
              "compare` gives the paired interval of a difference. "
              + ("AUC 95% CI (questions): the same bootstrap for each curve's AUC over its "
                 "store's questions (BCa); a level, not a difference: two curves' AUCs are "
                 "compared by `autotts compare`."
                 if _has_auc_ci(summary) else
                 "The Summary's AUCs have no interval over questions: the rows carry no "
                 "per-question outcomes (`autotts eval --json FILE --json-episodes` writes "
                 "them)."))

    md = [f"# {title}\n"]
    md += [f"{n}\n" for n in notes]
    if png_path is not None:
        md.append(f"![accuracy vs tokens]({PNG_NAME})\n")
    md += ["## Summary\n", _md_table(s_head, s_body), "## Results\n", _md_table(r_head, r_body),
           legend + "\n"]
    for name, head, body in extra:
        md += [f"## {name}\n", _md_table(head, body)]
    md_path = out / MD_NAME
    write_file(md_path, "\n".join(md).encode("utf-8"))

    h = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style></head><body>",
         f"<h1>{html.escape(title)}</h1>"]
    h += [f"<p>{html.escape(n)}</p>" for n in notes]
    if png_b64:
        h.append(f'<img alt="accuracy vs tokens" src="data:image/png;base64,{png_b64}">')
    h += ["<h2>Summary</h2>", _html_table(s_head, s_body), "<h2>Results</h2>",
          _html_table(r_head, r_body, r_marks), f'<p class="note">{html.escape(legend)}</p>']
    for name, head, body in extra:
        h += [f"<h2>{html.escape(name)}</h2>", _html_table(head, body)]
    h.append(f'<p class="note">autotts {html.escape(__version__)}</p></body></html>')
    html_path = out / HTML_NAME
    write_file(html_path, ("\n".join(h) + "\n").encode("utf-8"))

    payload = {
        "title": title,
        "autotts_version": __version__,
        "stores": stores,
        "curves": n_curves,
        "files": {"png": PNG_NAME if png_path else None, "markdown": MD_NAME, "html": HTML_NAME},
        "summary": summary,
        "rows": [r for s in series for r in s.rows],
        "extra_tables": {k: list(v) for k, v in (extra_tables or {}).items()},
    }
    summary_path = out / SUMMARY_NAME
    text = json.dumps(payload, indent=2, ensure_ascii=False, default=json_default_or_str) + "\n"
    write_file(summary_path, text.encode("utf-8"))
    return ReportPaths(out, png_path, md_path, html_path, summary_path, n_curves, stores)


def _embedded_curves(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, str], Any]:
    """{(source, store, controller): stats.Curve} of the rows that embed their episodes (eval
    --json --json-episodes), one source at a time (two runs of a controller are two curves)."""
    by_source: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if isinstance(r.get("episodes"), dict):
            by_source.setdefault(str(r.get("source", "")), []).append(r)
    if not by_source:
        return {}
    from autotts.stats import curves_from_rows

    return {(src, store, ctl): c for src, part in by_source.items()
            for (store, ctl), c in curves_from_rows(part).items()}


def _question_intervals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that carry their episodes (eval --json --json-episodes) get question-level intervals
    where they lack them; the episodes themselves stay out of the report (summary.json would grow
    by every episode)."""
    need = [r for r in rows if isinstance(r.get("episodes"), dict)
            and r.get("accuracy_ci_questions") is None]
    if need:
        from autotts.stats import attach_question_intervals

        # One source at a time: two runs of a controller on a store are two curves.
        by_source: dict[str, list[dict[str, Any]]] = {}
        for r in need:
            by_source.setdefault(str(r.get("source", "")), []).append(r)
        for part in by_source.values():
            attach_question_intervals(part)
    return [{k: v for k, v in r.items() if k != "episodes"} for r in rows]


def report_from_inputs(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    title: str | None = None,
    readers: Sequence[Callable[[Path], Any]] = (),
) -> ReportPaths:
    """`autotts report`: rows from eval JSON files and result directories, and a report of them.

    `readers` let higher layers claim inputs they understand (the discovery loop's run
    directories): each is called with the path and returns None, or an object with `rows`,
    `tables` (heading -> row dicts), `title` and `notes`, whose tables and notes join the report."""
    rows: list[dict[str, Any]] = []
    tables: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []
    titles: list[str] = []
    for inp in inputs:
        p = Path(inp)
        claimed = next((r for r in (reader(p) for reader in readers) if r is not None), None)
        if claimed is None:
            rows += load_rows([p])
            continue
        rows += [dict(r, source=r.get("source", p.name)) for r in claimed.rows]
        for name, items in (claimed.tables or {}).items():
            tables[name if len(inputs) == 1 else f"{name} ({p.name})"] = list(items)
        notes += list(claimed.notes or [])
        titles.append(str(claimed.title))
    if not rows:
        raise ConfigError("nothing to report: the inputs hold no result rows yet")
    if title is None:
        if len(inputs) == 1 and titles:
            title = titles[0]
        else:
            names = ", ".join(Path(p).name for p in inputs)
            title = f"autotts report: {names}" if len(names) < 80 else "autotts report"
    return build_report(rows, out_dir, title, tables or None, notes=notes)
