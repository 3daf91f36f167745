"""The `autotts` command line (DESIGN §10). Every error reaches the user as one line and a
non-zero exit status; tracebacks are for bugs only."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from autotts.errors import AutoTTSError, ConfigError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Discover test-time-scaling controllers offline by replaying recorded reasoning branches.",
)
out = Console()
err = Console(stderr=True)


def _write_json(path: Path, payload: Any) -> None:
    from autotts.store import atomic_write_bytes

    text = json.dumps(payload, indent=2, ensure_ascii=False, default=_json_default) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# ---- store commands ---------------------------------------------------------------------------


@app.command("import")
def import_cmd(
    src: Annotated[list[Path], typer.Argument(help="AutoTTS JSON file(s)")],
    out_dir: Annotated[Path, typer.Option("--out", help="directory; stores go to OUT/<model>/<bench>")],
    answers: Annotated[str, typer.Option(help="answer classes: exact or math")] = "exact",
) -> None:
    """Import published AutoTTS JSON replay files into Parquet stores."""
    from autotts.store import import_files

    for p in import_files(list(src), out_dir, answers=answers):
        out.print(f"wrote {p}")


@app.command("export")
def export_cmd(
    store: Annotated[Path, typer.Argument(help="store directory or AutoTTS JSON file")],
    out_file: Annotated[Path, typer.Option("--out", help="JSON file to write")],
) -> None:
    """Export a store back to the published AutoTTS JSON layout."""
    from autotts.store import export_json, open_store

    out.print(f"wrote {export_json(open_store(store), out_file)}")


@app.command("inspect")
def inspect_cmd(
    store: Annotated[Path, typer.Argument(help="store directory or AutoTTS JSON file")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Summary statistics of a store."""
    from autotts.store import open_store
    from autotts.summary import summarize

    s = summarize(open_store(store))
    if as_json:
        print(json.dumps(s, indent=2))
        return
    t = Table(title=f"{s['store']}  ({s['answer_mode']} answers, Δ={s['delta']})")
    t.add_column("figure")
    t.add_column("value", justify="right")
    bpq, tok, ppb = s["branches_per_question"], s["tokens"], s["probes_per_branch"]
    rows = [
        ("questions", f"{s['questions']}"),
        ("branches", f"{s['branches']}"),
        ("branches / question (min/mean/max)", f"{bpq['min']} / {bpq['mean']:.1f} / {bpq['max']}"),
        ("tokens / branch (mean/median/max)",
         f"{tok['mean']:.0f} / {tok['median']:.0f} / {tok['max']}"),
        ("probes / branch (mean/median/max)",
         f"{ppb['mean']:.1f} / {ppb['median']:.0f} / {ppb['max']}"),
        ("'ERR' share of probes", f"{s['err_share_probes']:.2f}%"),
        ("'ERR' share of finals", f"{s['err_share_finals']:.2f}%"),
        ("branches with probes·Δ > tokens", f"{s['probes_beyond_tokens_share']:.1f}%"),
        ("pass@1", f"{s['pass_at_1']:.2f}%"),
        ("majority-of-all accuracy", f"{s['majority_accuracy']:.2f}%"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    out.print(t)


# ---- evaluation -------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        result[key.strip()] = _parse_value(value.strip())
    return result


def parse_betas(text: str) -> list[float]:
    try:
        betas = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--betas expects numbers separated by commas, got {text!r}") from None
    if not betas:
        raise ConfigError("--betas is empty")
    return betas


DEFAULT_BETAS = "0,0.25,0.5,0.75,1"


@app.command("eval")
def eval_cmd(
    controller: Annotated[str, typer.Option(help="built-in name or path to a controller file")],
    store: Annotated[list[Path] | None, typer.Option(help="store dir or AutoTTS JSON")] = None,
    env: Annotated[Path | None, typer.Option(help="environment definition (TOML)")] = None,
    split: Annotated[str, typer.Option(help="split of --env: search or heldout")] = "search",
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a knob: KEY=VALUE")] = None,
    betas: Annotated[str | None, typer.Option(help=f"β grid (default {DEFAULT_BETAS})")] = None,
    draws: Annotated[int | None, typer.Option(help="draws per question [default: 100]")] = None,
    protocol: Annotated[str | None, typer.Option(help="shuffle or subsample [default: shuffle]")] = None,
    pool: Annotated[int | None, typer.Option(help="branches available per draw")] = None,
    seed: Annotated[int, typer.Option(help="first draw seed")] = 0,
    probe_cost: Annotated[int, typer.Option(help="κ: tokens charged per probe")] = 0,
    budget: Annotated[int | None, typer.Option(help="token budget per question")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results as JSON")] = None,
    traces: Annotated[Path | None, typer.Option(help="write per-episode traces (JSONL)")] = None,
    episodes: Annotated[Path | None, typer.Option(help="write per-episode rows (JSONL)")] = None,
    sandbox: Annotated[bool, typer.Option(help="run the controller in the sandbox")] = False,
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
    executor: Annotated[str, typer.Option(help="local or ray")] = "local",
    errors: Annotated[str, typer.Option(help="on a failing episode: raise or record")] = "raise",
) -> None:
    """Evaluate a controller over stores × β × draws."""
    from autotts.evaluate import Protocol, evaluate

    overrides = parse_sets(set_ or [])
    default_betas = parse_betas(DEFAULT_BETAS)
    stores: list[Any] = list(store or [])
    if env is not None:
        # The environment supplies the protocol; explicit options still win.
        from autotts.envdef import load_env

        e = load_env(env)
        stores += e.split_paths(split)
        probe_cost = probe_cost or e.probe_cost
        pool = pool if pool is not None else e.branch_cap
        budget = budget if budget is not None else e.budget
        draws = draws if draws is not None else e.draws
        protocol = protocol or e.protocol
        default_betas = e.betas
    if betas is not None:
        beta_list: list[float] | None = parse_betas(betas)
    elif overrides:
        beta_list = None
    else:
        beta_list = default_betas
    draws = 100 if draws is None else draws
    protocol = protocol or "shuffle"
    if not stores:
        raise ConfigError("give at least one --store or an --env")
    if executor != "local":
        raise ConfigError(f"executor {executor!r} is not available (only 'local' for now)")
    if sandbox:
        raise ConfigError("--sandbox is not available yet")
    proto = Protocol(draws=draws, protocol=protocol, pool=pool, seed=seed,
                     probe_cost=probe_cost, budget=budget)
    from rich.progress import Progress

    with Progress(console=err, transient=True) as prog:
        task = prog.add_task("evaluating", total=None)

        def tick(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        result = evaluate(
            controller, stores, beta_list, proto, overrides=overrides, workers=workers,
            episodes=episodes is not None, traces=traces is not None, on_error=errors,
            progress=tick,
        )
    t = Table(title=f"{result.rows[0]['controller']}  ({proto.protocol}, {draws} draws)")
    for col in ("store", "β", "accuracy %", "± se", "tokens", "± se", "errors"):
        t.add_column(col, justify="left" if col == "store" else "right")
    for r in result.rows:
        t.add_row(
            r["store"], "-" if r["beta"] is None else f"{r['beta']:g}",
            f"{r['accuracy']:.2f}", f"{r['accuracy_se']:.2f}", f"{r['tokens']:.0f}",
            f"{r['tokens_se']:.0f}", str(r["errors"]),
        )
    out.print(t)
    if json_out is not None:
        _write_json(json_out, [{k: v for k, v in r.items() if k != "errors"} for r in result.rows])
    for path, items in ((traces, result.traces), (episodes, result.episodes)):
        if path is not None:
            from autotts.store import atomic_write_bytes

            lines = "".join(json.dumps(x, default=_json_default) + "\n" for x in items or [])
            atomic_write_bytes(path, lines.encode("utf-8"))
    if result.errors:
        err.print(f"[yellow]{len(result.errors)} episode(s) failed and were scored as wrong[/]")


@app.command("bench")
def bench_cmd(
    quick: Annotated[bool, typer.Option(help="fewer draws, for a smoke run")] = False,
    workers: Annotated[int, typer.Option(help="worker processes for the reproduction")] = 2,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the figures as JSON")] = None,
) -> None:
    """Throughput figures: store loading, engine steps/s, wall time to reproduce the baselines."""
    from autotts.bench import run_bench

    run_bench(out, quick=quick, workers=workers, json_out=json_out)


# ---- discovery, collection, reports (each command's body lives in its own module) --------------


@app.command("discover")
def discover_cmd(
    env: Annotated[Path, typer.Option(help="environment definition (TOML)")],
    run_dir: Annotated[Path, typer.Option(help="run directory; rerunning the same one resumes")],
    model: Annotated[str | None, typer.Option(help="chat model name")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL")] = None,
    rounds: Annotated[int | None, typer.Option(help="rounds of propose/evaluate")] = None,
    budget_usd: Annotated[float | None, typer.Option(help="spend cap in US dollars")] = None,
    dry_run: Annotated[bool, typer.Option(help="print the first prompt and stop")] = False,
) -> None:
    """Let an LLM agent write, test and revise controllers against an environment."""
    raise ConfigError("discover is not available yet")


@app.command("collect")
def collect_cmd(
    model: Annotated[str, typer.Option(help="model id or local path")],
    questions: Annotated[str, typer.Option(help="question file (JSONL) or benchmark name")],
    out_dir: Annotated[Path, typer.Option("--out", help="store directory to write")],
    n: Annotated[int, typer.Option(help="branches per question")] = 128,
    delta: Annotated[int, typer.Option(help="tokens per interval (Δ)")] = 500,
    backend: Annotated[str, typer.Option(help="vllm or openai")] = "vllm",
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL")] = None,
    shard: Annotated[str | None, typer.Option(help="I/N: this worker's share")] = None,
) -> None:
    """Sample branches and probes from a model into a replay store (GPU)."""
    raise ConfigError("collect is not available yet")


@app.command("report")
def report_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="eval --json outputs or discovery run dirs")],
    out_dir: Annotated[Path, typer.Option("--out", help="report directory")],
) -> None:
    """Plots and tables (PNG, markdown, self-contained HTML) from results."""
    raise ConfigError("report is not available yet")


@app.command("demo")
def demo_cmd() -> None:
    """The first-run experience: evaluate the built-ins on the shipped store and write a report."""
    raise ConfigError("demo is not available yet")


def main() -> None:
    try:
        app()
    except AutoTTSError as e:
        # Plain print: rich would wrap a long message over several lines.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
