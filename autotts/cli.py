"""The `autotts` command line (docs/design.md §10). Every error reaches the user as one line and a
non-zero exit status; tracebacks are for bugs only."""

from __future__ import annotations

import atexit
import copy
import gc
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from autotts.controller import parse_sets
from autotts.errors import AutoTTSError, ConfigError
from autotts.evalcli import (
    DEFAULT_BETAS,
    err,
    exit_interrupted,
    out,
    parse_betas,
    resume_gc,
    run_eval,
    settle_process,
    transient_bar,
)

# Help shows a plain word for what an option takes (PATH, N, ...), not the Python annotation
# (`<list[Path]>`, `<bool>`) that typer prints by default.
_METAVARS = {"path": "PATH", "int": "N", "integer": "N", "float": "X", "str": "TEXT", "text": "TEXT"}


def _metavar(param: Any) -> str:
    if getattr(param, "is_flag", False):
        return ""
    t = getattr(param, "type", None)  # click's parameter type (older typer)
    label = getattr(t, "name", None)
    if label is None and hasattr(param, "bare_type"):  # typer >= 0.2x: from the annotation
        label = param.bare_type()
        if label.startswith("list[") and label.endswith("]"):
            label = label[5:-1]
    return _METAVARS.get(str(label).lower(), "VALUE")


def _tidy_metavars(cmd: Any) -> None:
    # Duck-typed: recent typer versions vendor their own click.
    for param in getattr(cmd, "params", []):
        kind = getattr(param, "param_type_name", "")
        if kind == "option" and param.metavar is None:
            param.metavar = _metavar(param)
        elif kind == "argument":
            if param.metavar is None and param.name:
                param.metavar = param.name.upper()
            # A metavar given replaces click's own, and with it the "..." of an argument that
            # takes several values (`import SRC...`).
            if param.nargs != 1 and param.metavar and not param.metavar.endswith("..."):
                param.metavar += "..."
            if hasattr(param, "display_type_rich"):
                param.display_type_rich = lambda ctx: ""  # the name says it (typer >= 0.2x)
    get_help = getattr(cmd, "get_help_option", None)
    if get_help is not None:  # --help is made on demand, so it is tidied when it is made

        def help_option(ctx: Any, get_help: Any = get_help) -> Any:
            opt = get_help(ctx)
            if opt is not None and getattr(opt, "metavar", "") is None:
                opt.metavar = ""
            return opt

        cmd.get_help_option = help_option
    for sub in getattr(cmd, "commands", {}).values():
        _tidy_metavars(sub)


class Interrupted(BaseException):
    """Ctrl-C during a command; the message says where it stopped (and how to resume, where a
    rerun resumes). A BaseException like KeyboardInterrupt, so no `except Exception` on the way
    keeps it, but not a KeyboardInterrupt: click (typer) would turn that into its own exit
    ("Aborted!" with status 1, or a silent 130) before main() could say anything."""


# click's exception classes, found through typer's public names: recent typer versions vendor
# their own click, whose classes are not those of `import click`.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _usage_line(e: Any) -> str:
    """A click error (a missing argument or option, an unknown option or command, a value click
    cannot convert, an extra argument) as the project's other errors read: one line, `error: `
    and click's message, which names the option or argument and the value; then where help is.
    (Typer would print the usage line, a hint and the message in a box over several lines.)"""
    msg = " ".join(line.strip() for line in e.format_message().splitlines() if line.strip())
    if msg[:1].isupper() and msg[1:2].islower():  # "Missing option", not "PATH ..."
        msg = msg[0].lower() + msg[1:]
    msg = msg.rstrip(".")
    ctx = getattr(e, "ctx", None)
    command = ctx.command_path if ctx is not None else getattr(e, "autotts_command", None)
    if command:
        msg += f" (see '{command} --help')"
    return f"error: {msg}"


def _run_app(args: list[str]) -> int:
    """The app on `args` without click's standalone mode, so that click's errors reach main()
    (which prints them as one line) instead of typer's boxed message; otherwise as standalone:
    the exit status of --help, --version or typer.Exit, 0 after a command (which returns
    nothing), 130 for a Ctrl-C while arguments are read."""
    code = _lean_app(args)(args=args, standalone_mode=False)
    return code if type(code) is int else 0


class _Group(typer.core.TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _tidy_metavars(self)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # a command with more to say raises Interrupted itself
            raise Interrupted("interrupted") from None
        except _CLICK_ERROR as e:
            # click raises some errors of a command's arguments without the command's context
            # (an option without its value): name the command, for the hint of main()'s line.
            # The innermost group names it first (`data` is one of these groups too).
            named = hasattr(e, "autotts_command")
            if getattr(e, "ctx", None) is None and ctx.invoked_subcommand and not named:
                e.autotts_command = f"{ctx.command_path} {ctx.invoked_subcommand}"
            raise


app = typer.Typer(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Discover test-time-scaling controllers offline by replaying recorded reasoning branches.",
)


def _version(value: bool) -> None:
    if value:
        from autotts import __version__

        print(f"autotts {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Discover test-time-scaling controllers offline by replaying recorded reasoning branches."""


def _say(text: str) -> None:
    """A line with paths or commands in it: never wrapped, so it can be copied."""
    out.print(text, soft_wrap=True, highlight=False, markup=False)


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
        _say(f"wrote {p}")


@app.command("export")
def export_cmd(
    store: Annotated[Path, typer.Argument(help="store directory or AutoTTS JSON file")],
    out_file: Annotated[Path, typer.Option("--out", help="JSON file to write")],
) -> None:
    """Export a store back to the published AutoTTS JSON layout."""
    from autotts.store import export_json, open_store

    _say(f"wrote {export_json(open_store(store), out_file)}")


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


# ---- published data ---------------------------------------------------------------------------

data_app = typer.Typer(
    cls=_Group,
    no_args_is_help=True,
    help="The published replay data: fetch it into the data folder ($AUTOTTS_DATA, else the user "
    "cache folder) and list what is there.",
)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch_cmd(
    names: Annotated[list[str] | None, typer.Argument(
        metavar="NAME", show_default=False,
        help="a data set (autotts-qwen3) or one file of it (Qwen3-8B/aime24) \\[default: all]")] = None,
    to: Annotated[Path | None, typer.Option("--to", help="data folder to fill \\[default: $AUTOTTS_DATA, else the user cache folder]")] = None,
    base_url: Annotated[str | None, typer.Option(help="mirror with the same layout (http(s) or file://) \\[default: $AUTOTTS_DATA_URL, else the AutoTTS repository at the pinned commit]")] = None,
    parquet: Annotated[bool, typer.Option("--parquet", help="also import each file as a Parquet store, <data folder>/stores/<model>/<bench>")] = False,
) -> None:
    """Download published replay files: checked by size and sha256, resumable, atomic."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TransferSpeedColumn,
    )

    from autotts.datasets import fetch, select
    from autotts.paths import data_dir

    files = select(names or [])
    root = (to.expanduser().resolve() if to is not None else data_dir())
    total = sum(f.size for f in files)
    try:
        with transient_bar(err, TextColumn("[bold]fetching"), BarColumn(), DownloadColumn(),
                           TransferSpeedColumn()) as prog:
            task = prog.add_task("fetch", total=total)
            results = fetch(files, root, base_url=base_url,
                            progress=lambda n: prog.advance(task, n))
    except KeyboardInterrupt:
        raise Interrupted("interrupted: a partly downloaded file is kept (.part); rerun the "
                          "same command to resume") from None
    got = [r for r in results if r.action == "downloaded"]
    _say(f"{len(got)} file(s) downloaded, {len(results) - len(got)} already there and "
         f"verified, in {root}/autotts-replay")
    if parquet:
        from autotts.store import import_files, open_store

        for r in results:
            target = root / "stores" / r.file.key
            try:
                current = open_store(target).manifest.get("source", {}).get("sha256")
            except AutoTTSError:
                current = None
            if current == r.file.sha256:
                continue
            for p in import_files([r.path], root / "stores"):
                _say(f"wrote {p}")
    if root != data_dir():
        _say(f"to use this folder: export AUTOTTS_DATA={root}")


@data_app.command("path")
def data_path_cmd() -> None:
    """Print the data folder, for scripts: DATA=$(autotts data path)."""
    from autotts.paths import data_dir

    print(data_dir())


@data_app.command("list")
def data_list_cmd(
    folder: Annotated[Path | None, typer.Option("--dir", help="data folder \\[default: $AUTOTTS_DATA, else the user cache folder]")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="also check each cached file's sha256")] = False,
) -> None:
    """What the catalog knows and what is in the data folder."""
    from autotts.datasets import CATALOG, data_source, status
    from autotts.paths import data_dir

    root = folder.expanduser().resolve() if folder is not None else data_dir()
    where = "given by --dir" if folder is not None else data_source()
    _say(f"data folder: {root} ({where})")
    t = Table()
    for col in ("data set", "file", "MB", "status"):
        t.add_column(col, justify="right" if col == "MB" else "left")
    known = set()
    for d in CATALOG.values():
        for f in d.files:
            known.add(f.local)
            st = status(f, root, verify=verify)
            style = "green" if st == "cached" else "yellow" if st in ("missing", "partial") else "red"
            t.add_row(d.name, f.key, f"{f.size / 1e6:.1f}", f"[{style}]{st}[/]")
    for p in sorted((root / "autotts-replay").glob("*/*.json")):
        rel = p.relative_to(root).as_posix()
        if rel not in known:
            t.add_row("(not in the catalog)", p.relative_to(root / "autotts-replay").as_posix()
                      .removesuffix(".json"), f"{p.stat().st_size / 1e6:.1f}", "cached")
    for m in sorted((root / "stores").glob("*/*/manifest.json")):
        t.add_row("(Parquet store)", m.parent.relative_to(root / "stores").as_posix(), "", "cached")
    out.print(t)
    for d in CATALOG.values():
        _say(f"{d.name}: {d.description}; from {d.origin}")
    # A folder given by --dir is filled with --to: a plain fetch would fill the data folder.
    to = f" --to {root}" if root != data_dir() else ""
    _say(f"get what is missing with: autotts data fetch{to}")


# ---- evaluation -------------------------------------------------------------------------------


def _controller_help() -> str:
    from autotts.controller import builtin_names

    try:
        names = ", ".join(builtin_names())
    except OSError:
        names = "sc, asc, esc, parallel_probe, cmc, ..."
    return f"a built-in ({names}) or the path to a controller file"


@app.command("eval")
def eval_cmd(
    controller: Annotated[str, typer.Option(help=_controller_help())],
    store: Annotated[list[Path] | None, typer.Option(help="store dir or AutoTTS JSON (repeatable)")] = None,
    env: Annotated[Path | None, typer.Option(help="environment definition (TOML): stores, β grid, protocol")] = None,
    split: Annotated[str | None, typer.Option(help="split of --env: search, heldout (every held-out group) or heldout:NAME \\[default: search]")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a knob: KEY=VALUE (repeatable)")] = None,
    betas: Annotated[str | None, typer.Option(help=f"β grid, comma-separated, each in \\[0, 1] \\[default: {DEFAULT_BETAS}, or the --env grid]")] = None,
    draws: Annotated[int | None, typer.Option(help="draws per question \\[default: 100, or the --env draws]")] = None,
    protocol: Annotated[str | None, typer.Option(help="shuffle or subsample \\[default: shuffle, or the --env protocol]")] = None,
    pool: Annotated[int | None, typer.Option(help="branches available per draw \\[default: all, or the --env branch_cap]")] = None,
    seed: Annotated[int | None, typer.Option(help="first draw seed \\[default: 0]")] = None,
    probe_cost: Annotated[int | None, typer.Option(help="κ: tokens charged per probe \\[default: 0, or the --env probe_cost]")] = None,
    budget: Annotated[int | None, typer.Option(help="token budget per question \\[default: none, or the --env budget]")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write results as JSON")] = None,
    json_episodes: Annotated[bool, typer.Option(help="with --json: each row also carries its episodes (correct, tokens per draw × question), for `autotts compare`")] = False,
    traces: Annotated[Path | None, typer.Option(help="write per-episode traces (JSONL)")] = None,
    episodes: Annotated[Path | None, typer.Option(help="write per-episode rows (JSONL)")] = None,
    sandbox: Annotated[bool, typer.Option(help="run the controller in the sandbox")] = False,
    allow_weak_sandbox: Annotated[bool, typer.Option(
        help="with --sandbox: run even where the OS cannot keep the controller from your files "
             "and network")] = False,
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
    executor: Annotated[str, typer.Option(help="local or ray")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (else a local runtime)")] = None,
    errors: Annotated[str, typer.Option(help="on a failing episode: raise (stop) or record (score it wrong and go on)")] = "raise",
) -> None:
    """Evaluate a controller over stores × β × draws."""
    run_eval(
        controller, store=store, env=env, split=split, set_=set_, betas=betas, draws=draws,
        protocol=protocol, pool=pool, seed=seed, probe_cost=probe_cost, budget=budget,
        json_out=json_out, json_episodes=json_episodes, traces=traces, episodes=episodes,
        sandbox=sandbox, allow_weak_sandbox=allow_weak_sandbox, workers=workers,
        executor=executor, ray_address=ray_address, errors=errors,
    )


@app.command("compare")
def compare_cmd(
    entries: Annotated[list[str], typer.Argument(help="controllers (built-in name or file) or result files with episodes (eval --json --json-episodes, or eval --episodes JSONL); the first is compared with each other one")],
    store: Annotated[list[Path] | None, typer.Option(help="store dir or AutoTTS JSON")] = None,
    env: Annotated[Path | None, typer.Option(help="environment definition (TOML)")] = None,
    split: Annotated[str, typer.Option(help="split of --env: search, heldout (each held-out group), heldout:NAME or all")] = "search",
    betas: Annotated[str | None, typer.Option(help="β grid (default: the environment's, else 0,0.1,...,1)")] = None,
    draws: Annotated[int | None, typer.Option(help="draws per question (default: the environment's, else 100)")] = None,
    seed: Annotated[int, typer.Option(help="first draw seed, and the resampling seed")] = 0,
    resamples: Annotated[int, typer.Option(help="bootstrap resamples of the questions")] = 2000,
    level: Annotated[float, typer.Option(help="confidence level of the intervals")] = 0.95,
    method: Annotated[str, typer.Option(help="interval method: bca or percentile")] = "bca",
    token_range: Annotated[str | None, typer.Option(help="LOW,HIGH tokens of the AUC (default: the environment's, else 50000,1500000)")] = None,
    top: Annotated[int, typer.Option(help="questions listed per store in the win/loss table")] = 3,
    workers: Annotated[int, typer.Option(help="worker processes")] = 1,
    json_out: Annotated[Path | None, typer.Option("--json", help="write every figure as JSON")] = None,
) -> None:
    """Paired ΔAUC with 95% intervals over questions, per store and pooled, with p-values adjusted
    (Holm) over every comparison shown (docs/comparisons.md)."""
    from autotts.compare import run_compare, write_json

    e = None
    if env is not None:
        from autotts.envdef import load_env

        e = load_env(env)
    tr = None
    if token_range is not None:
        try:
            lo, hi = (float(x) for x in token_range.split(","))
        except ValueError:
            raise ConfigError(f"--token-range expects LOW,HIGH, got {token_range!r}") from None
        tr = (lo, hi)
    report = run_compare(
        entries, store_paths=[str(s) for s in store or []], env=e, split=split,
        betas=parse_betas(betas) if betas is not None else None, draws=draws, seed=seed,
        workers=workers, resamples=resamples, level=level, method=method, token_range=tr,
        top=top, console=out, progress=err,
    )
    if json_out is not None:
        write_json(json_out, report)
        _say(f"wrote {json_out}")


@app.command("sweep")
def sweep_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="report directory")],
    env: Annotated[Path | None, typer.Option(help="environment: both splits' stores, under its protocol (search draws)")] = None,
    store: Annotated[list[Path] | None, typer.Option(help="store dir or AutoTTS JSON")] = None,
    controller: Annotated[list[str] | None, typer.Option(help="controllers (default: all built-ins)")] = None,
    betas: Annotated[str | None, typer.Option(help="β grid \\[default: 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1, or the --env grid]")] = None,
    draws: Annotated[int | None, typer.Option(help="draws per question \\[default: 20, or the --env draws]")] = None,
    protocol: Annotated[str | None, typer.Option(help="shuffle or subsample \\[default: shuffle, or the --env protocol]")] = None,
    pool: Annotated[int | None, typer.Option(help="branches available per draw \\[default: all, or the --env branch_cap]")] = None,
    seed: Annotated[int | None, typer.Option(help="first draw seed \\[default: 0]")] = None,
    probe_cost: Annotated[int | None, typer.Option(help="κ: tokens charged per probe \\[default: 0, or the --env probe_cost]")] = None,
    budget: Annotated[int | None, typer.Option(help="token budget per question \\[default: none, or the --env budget]")] = None,
    workers: Annotated[int, typer.Option(help="worker processes")] = 2,
) -> None:
    """Every built-in controller over the β grid on several stores: one report, Pareto points marked."""
    from autotts.settings import SWEEP, resolve
    from autotts.sweep import run_sweep

    stores: list[Any] = list(store or [])
    e = None
    if env is not None:
        from autotts.envdef import load_env

        e = load_env(env)
        stores += e.split_paths("search") + e.split_paths("heldout")
    if not stores:
        raise ConfigError("give at least one --store or an --env")
    # Flags given > the environment file > defaults, as for eval (autotts/settings.py).
    settings = resolve(SWEEP, e, "search", draws=draws, protocol=protocol, pool=pool, seed=seed,
                       probe_cost=probe_cost, budget=budget,
                       betas=parse_betas(betas) if betas is not None else None)
    paths, _, seconds = run_sweep(
        stores, out_dir, controllers=controller, betas=settings.betas,
        proto=settings.proto, workers=workers, console=err,
    )
    _say(f"wrote {paths.markdown} ({seconds:.0f} s)")


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
    model: Annotated[str | None, typer.Option(help="chat model name \\[default: $AUTOTTS_MODEL]")] = None,
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL (its API key: $AUTOTTS_API_KEY, else $OPENAI_API_KEY) \\[default: $AUTOTTS_BASE_URL, else $OPENAI_BASE_URL, else OpenAI's]")] = None,
    rounds: Annotated[int | None, typer.Option(help="rounds of propose/evaluate \\[default: $AUTOTTS_ROUNDS, else 10]")] = None,
    budget_usd: Annotated[float | None, typer.Option(help="spend cap in US dollars \\[default: $AUTOTTS_BUDGET_USD, else none]")] = None,
    candidates: Annotated[int | None, typer.Option(help="controller files asked for per round, evaluated side by side \\[default: $AUTOTTS_CANDIDATES, else 1]")] = None,
    workers: Annotated[int | None, typer.Option(help="local worker processes \\[default: $AUTOTTS_WORKERS, else CPUs, at most 8]")] = None,
    executor: Annotated[str | None, typer.Option(help="local or ray \\[default: $AUTOTTS_EXECUTOR, else local]")] = None,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address \\[default: $AUTOTTS_RAY_ADDRESS, else a local runtime]")] = None,
    race_draws: Annotated[int | None, typer.Option(help="race candidates over their first N draws, stopping clearly weak ones (0: off) \\[default: $AUTOTTS_RACE_DRAWS, else 5]")] = None,
    dry_run: Annotated[bool, typer.Option(help="print the first prompt and stop")] = False,
    allow_weak_sandbox: Annotated[bool, typer.Option(
        help="evaluate candidates even where the OS cannot keep them from your files and "
             "network")] = False,
) -> None:
    """Let an LLM agent write, test and revise controllers against an environment. Other
    settings are AUTOTTS_* variables (docs/discovery.md)."""
    from autotts.discover.command import discover_command, where_discovery_stopped

    try:
        discover_command(env=env, run_dir=run_dir, dry_run=dry_run, console=err, model=model,
                         base_url=base_url, rounds=rounds, budget_usd=budget_usd,
                         candidates=candidates, workers=workers, executor=executor,
                         ray_address=ray_address, race_draws=race_draws,
                         allow_weak_sandbox=allow_weak_sandbox or None)
    except KeyboardInterrupt:
        if dry_run:
            raise
        raise Interrupted(f"interrupted: {where_discovery_stopped(run_dir)}; rerun the same "
                          "command to resume") from None


@app.command("collect")
def collect_cmd(
    model: Annotated[str, typer.Option(help="model id or local path")],
    questions: Annotated[str, typer.Option(help="question file (JSONL) or benchmark name")],
    out_dir: Annotated[Path, typer.Option("--out", help="store directory to write")],
    n: Annotated[int, typer.Option(help="branches per question")] = 128,
    delta: Annotated[int, typer.Option(help="tokens per interval (Δ)")] = 500,
    backend: Annotated[str, typer.Option(help="vllm or openai")] = "vllm",
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible server URL")] = None,
    shard: Annotated[str | None, typer.Option(help="I/N: this worker's share (0-based)")] = None,
    answers: Annotated[str, typer.Option(help="answer classes: math or exact")] = "math",
    seed: Annotated[int, typer.Option(help="base seed of the branches")] = 0,
    temperature: Annotated[float, typer.Option(help="branch sampling temperature")] = 0.7,
    top_p: Annotated[float, typer.Option(help="branch nucleus sampling")] = 1.0,
    top_k: Annotated[int, typer.Option(help="branch top-k (0: off)")] = 0,
    probe_suffix: Annotated[str | None, typer.Option(help="text appended for a probe")] = None,
    probe_max_tokens: Annotated[int, typer.Option(help="tokens per probe")] = 32,
    max_thinking_tokens: Annotated[int, typer.Option(help="thinking cap per branch")] = 30000,
    max_answer_tokens: Annotated[int, typer.Option(help="tokens after </think>")] = 2048,
    think_close: Annotated[str | None, typer.Option(help="text that closes a capped think block")] = None,
    prompt_template: Annotated[str | None, typer.Option(help="user message; {question} is replaced")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="system message")] = None,
    template_kwarg: Annotated[list[str] | None, typer.Option(help="chat template KEY=VALUE (default enable_thinking=true)")] = None,
    signals: Annotated[str, typer.Option(help="per-interval signals: tokens,logprobs,confidence")] = "",
    revision: Annotated[str | None, typer.Option(help="model revision (vllm backend)")] = None,
    engine_arg: Annotated[list[str] | None, typer.Option(help="vllm.LLM KEY=VALUE (e.g. tensor_parallel_size=2); openai: concurrency=N")] = None,
    sampler: Annotated[str, typer.Option(help="auto, autotts, native or reseed")] = "auto",
    inflight: Annotated[int | None, typer.Option(help="questions in flight at once")] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N questions")] = None,
) -> None:
    """Sample branches and probes from a model into a replay store (GPU). Reruns resume."""
    from autotts.collect.engines import Sampling
    from autotts.collect.protocol import DEFAULT_PROBE_SUFFIX, DEFAULT_THINK_CLOSE, ProtocolConfig
    from autotts.collect.runner import DEFAULT_PROMPT_TEMPLATE, CollectConfig, RichProgress, collect
    from autotts.collect.writer import parse_shard

    proto = ProtocolConfig(
        n=n, delta=delta, seed=seed,
        sampling=Sampling(temperature=temperature, top_p=top_p, top_k=top_k),
        probe_suffix=DEFAULT_PROBE_SUFFIX if probe_suffix is None else probe_suffix,
        probe_max_tokens=probe_max_tokens, max_thinking_tokens=max_thinking_tokens,
        max_answer_tokens=max_answer_tokens,
        think_close=DEFAULT_THINK_CLOSE if think_close is None else think_close,
        signals=tuple(s.strip() for s in signals.split(",") if s.strip()),
    )
    cfg = CollectConfig(
        model=model, questions=questions, out=out_dir, protocol=proto, backend=backend,
        base_url=base_url, shard=parse_shard(shard), answers=answers,
        prompt_template=prompt_template or DEFAULT_PROMPT_TEMPLATE, system_prompt=system_prompt,
        template_kwargs={"enable_thinking": True, **parse_sets(template_kwarg or [])},
        revision=revision, engine_args=parse_sets(engine_arg or []), sampler=sampler,
        inflight=inflight, limit=limit,
    )
    try:
        res = collect(cfg, progress=RichProgress(err),
                      log=lambda m: err.print(f"[yellow]{m}[/]"))
    except KeyboardInterrupt:
        from autotts.collect.writer import WorkDir

        wd = WorkDir.for_store(out_dir)
        raise Interrupted(f"interrupted: {len(wd.finished())} question(s) finished in "
                          f"{wd.root}; rerun the same command to resume") from None
    tok = res.stats.generated + res.stats.probe_generated
    rate = f", {tok / res.seconds:,.0f} tokens/s" if res.seconds > 0 and tok else ""
    out.print(f"{res.done_now} question(s) collected now, {res.finished}/{res.total} finished"
              f" ({tok:,} tokens{rate})")
    if res.store is not None:
        _say(f"wrote {res.store}")
    else:
        out.print("the store is written once every shard has finished (or: autotts collect-merge)")


@app.command("collect-merge")
def collect_merge_cmd(
    workdirs: Annotated[list[Path], typer.Argument(help="work directories (OUT.collect) of the shards")],
    out_dir: Annotated[Path, typer.Option("--out", help="store directory to write")],
) -> None:
    """Join the work directories of sharded `collect` runs into one store."""
    from autotts.collect.runner import merge

    _say(f"wrote {merge(list(workdirs), out_dir)}")


@app.command("report")
def report_cmd(
    inputs: Annotated[list[Path], typer.Argument(help="eval --json outputs (files, or directories holding them), or discovery run dirs")],
    out_dir: Annotated[Path, typer.Option("--out", help="report directory")],
    title: Annotated[str | None, typer.Option(help="report title")] = None,
) -> None:
    """Plots and tables (PNG, markdown, self-contained HTML) from results."""
    from autotts.discover.runreport import report_with_runs
    from autotts.report import report_from_inputs

    # Discovery run dirs get their round, held-out and spend tables; eval JSON files the plain report.
    rp = report_with_runs(inputs, out_dir, title) or report_from_inputs(inputs, out_dir, title)
    files = [f"{rp.html} (self-contained)", str(rp.markdown), str(rp.png or ""), str(rp.summary)]
    _say("wrote " + ", ".join(f for f in files if f))


@app.command("demo")
def demo_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="report directory")] = Path("autotts-demo"),
    store: Annotated[Path | None, typer.Option(help="store to use instead of the shipped one")] = None,
    draws: Annotated[int, typer.Option(help="draws per question")] = 10,
    workers: Annotated[int | None, typer.Option(help="worker processes (default: up to 2)")] = None,
) -> None:
    """The first-run experience: evaluate the built-ins on the shipped store and write a report."""
    from autotts.demo import print_demo, run_demo

    print_demo(run_demo(out_dir, store=store, draws=draws, workers=workers, console=err), out)


@app.command("synth")
def synth_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="store directory to write")],
    seed: Annotated[int, typer.Option(help="random seed (same seed, same store)")] = 0,
    questions: Annotated[int, typer.Option(help="number of questions")] = 50,
    branches: Annotated[int, typer.Option(help="branches per question")] = 64,
    skill: Annotated[float, typer.Option(help="model skill (logit); 0 gives pass@1 ≈ 50%")] = 0.0,
    delta: Annotated[int, typer.Option(help="tokens per interval (Δ)")] = 500,
    model: Annotated[str, typer.Option(help="model name in the manifest")] = "synthetic",
    benchmark: Annotated[str | None, typer.Option(help="benchmark name (default seed<S>)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="other generator knob: KEY=VALUE")] = None,
) -> None:
    """Generate a synthetic replay store from a seeded model of reasoning branches."""
    from autotts.synth import SynthParams, calibration_stats, with_overrides, write_synthetic

    params = SynthParams(questions=questions, branches=branches, seed=seed, skill=skill,
                         delta=delta, model=model, benchmark=benchmark or "")
    params = with_overrides(params, parse_sets(set_ or []))
    s = calibration_stats(write_synthetic(params, out_dir))
    _say(
        f"wrote {out_dir} ({s['store']}: {s['questions']} questions × "
        f"{s['branches_per_question']:.0f} branches; pass@1 {s['pass_at_1']:.1f}%, majority "
        f"{s['majority_accuracy']:.1f}%, {s['probes_per_branch_mean']:.1f} probes/branch)"
    )


@app.command("train-dynaact")
def train_dynaact_cmd(
    out_file: Annotated[Path, typer.Option("--out", help="utility file (JSON) to write")],
    env: Annotated[Path | None, typer.Option(help="environment; trains on its search split only")] = None,
    controller: Annotated[Path | None, typer.Option(help="also embed the utility in this controller file (e.g. controllers/dynaact.py)")] = None,
    load: Annotated[Path | None, typer.Option(help="embed an existing utility file instead of training")] = None,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same utility)")] = 0,
    draws: Annotated[int, typer.Option(help="replayed episodes per question and collection")] = 12,
    collections: Annotated[int, typer.Option(help="behaviour-policy rounds (the first is untrained)")] = 2,
    token_cost: Annotated[float, typer.Option(help="c in reward = correct − c·tokens")] = 2e-7,
) -> None:
    """Learn the DynaAct controller's utility by fitted Q-iteration on replayed search episodes."""
    from autotts.dynaact_train import (
        TrainConfig,
        embed_in_controller,
        load_utility,
        save_utility,
        train,
    )

    if load is not None:
        utility = load_utility(load)
        if out_file.resolve() != load.resolve():
            save_utility(utility, out_file)
    else:
        if env is None:
            raise ConfigError("give --env (to train) or --load FILE (to embed a trained utility)")
        from autotts.envdef import load_env

        cfg = TrainConfig(seed=seed, draws=draws, collections=collections, token_cost=token_cost)
        with transient_bar(err) as prog:
            task = prog.add_task("replaying", total=None)

            def tick(label: str, done: int, total: int) -> None:
                prog.update(task, description=label, completed=done, total=total)

            utility = train(load_env(env), cfg, log=err.print, progress=tick)
        save_utility(utility, out_file)
    _say(f"wrote {out_file} (fingerprint {utility.fingerprint()})")
    if controller is not None:
        embed_in_controller(utility, controller, source=out_file.name)
        _say(f"embedded the utility in {controller}")


def _lean_app(args: list[str]) -> typer.Typer:
    """`app` with only the command that `args` name. Typer turns every registered command's
    signature into a click command on each start (~50 ms for all of them, a tenth of a one-store
    `eval`); a run needs only its own. Anything else (no command, an option first, an unknown
    name, shell completion) gets the whole app, so help and errors read the same."""
    name = args[0] if args else ""
    cmds = [c for c in app.registered_commands if c.name == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not (cmds or groups) or any(k.endswith("_COMPLETE") for k in os.environ):
        return app
    lean = copy.copy(app)
    lean.registered_commands, lean.registered_groups = cmds, groups
    return lean


def main() -> None:
    settle_process(sys.argv[1:])
    # At exit CPython's last garbage collection walks every object still alive (numpy's,
    # pyarrow's, typer's, rich's): 50-70 ms of a one-store `eval`, for memory the OS takes back
    # anyway. Frozen objects are skipped; atexit handlers (Ray's, multiprocessing's) still run.
    atexit.unregister(gc.freeze)  # once, however often main() runs in one process (tests)
    atexit.register(gc.freeze)
    try:
        code = _run_app(sys.argv[1:])
    except AutoTTSError as e:
        # Plain print: rich would wrap a long message over several lines.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except _CLICK_ERROR as e:  # a usage error: exit status 2 (click's own, kept)
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare `autotts` or `autotts data`
            text = e.format_message()  # typer printed the help already; plain click returns it
            if text:
                print(text)
        else:
            print(_usage_line(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:  # click's for an end of input (EOFError): status 1, as standalone
        print("error: aborted (end of input)", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:
        exit_interrupted(str(e))
    except KeyboardInterrupt:  # outside any command: while arguments were read
        exit_interrupted("interrupted")
    except BrokenPipeError:
        sys.exit(1)
    finally:
        resume_gc()  # where settle_process paused collection and the evaluation never started
    sys.exit(code)
