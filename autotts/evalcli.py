"""`autotts eval`'s body, shared by the typer command (autotts/cli.py) and a plain reading of its
arguments that needs no typer (autotts/__main__.py).

Why two readings: typer and click cost ~30 ms of a one-store `python -m autotts eval` (their
import and the command built from its signature), an eighth of it (issue 18). `plain_eval_args`
reads only what is unambiguous (known options, each value converted as click converts it) and
answers None for anything else (help, an unknown or misspelt option, a value click would refuse,
an option given twice): typer then reads the same arguments and prints its own help or error.
tests/test_eval_cli.py holds the two readings to the same keyword arguments.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import gc
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

from autotts.controller import parse_sets
from autotts.errors import AutoTTSError, ConfigError

out = Console()
err = Console(stderr=True)

DEFAULT_BETAS = "0,0.25,0.5,0.75,1"


def parse_betas(text: str) -> list[float]:
    try:
        betas = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--betas expects numbers separated by commas, got {text!r}") from None
    if not betas:
        raise ConfigError("--betas is empty")
    for b in betas:
        if not 0 <= b <= 1:  # also refuses nan
            raise ConfigError(f"--betas: β must be in [0, 1], got {b:g}")
    return betas


@contextlib.contextmanager
def _no_bar(console: Console) -> Iterator[None]:
    """What a transient rich Progress leaves on a file or pipe, without starting one (its live
    thread and imports): nothing while it runs, one empty line when it stops. Only when it
    stops normally: after an error the one-line message is the next line, not an empty one."""
    yield None
    if not console.is_interactive and not console.is_jupyter:  # as Progress.stop() decides
        console.print()


class _SilentBar:
    """The calls of rich's Progress that the commands make, drawing nothing."""

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        pass

    def advance(self, *args: Any, **kwargs: Any) -> None:
        pass


@contextlib.contextmanager
def transient_bar(console: Console, *columns: Any) -> Iterator[Any]:
    """A transient rich Progress on `console` where it is a terminal; elsewhere (a file or pipe,
    where such a bar draws nothing) a stand-in that leaves what the bar would (`_no_bar`)."""
    if console.is_terminal:
        from rich.progress import Progress

        with Progress(*columns, console=console, transient=True) as prog:
            yield prog
        return
    with _no_bar(console):
        yield _SilentBar()


def exit_interrupted(message: str) -> NoReturn:
    """Ctrl-C: `message` as one line on stderr and exit status 130 (128 + SIGINT, as a shell
    reports a command the signal stopped). On a terminal the line starts after the "^C" the
    terminal echoed."""
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(message, file=sys.stderr)
    sys.exit(130)


def _ci_text(ci: list[float | None], fmt: str) -> str:
    """A question-level interval as eval prints it; none where the store has one question."""
    if ci[0] is None or ci[1] is None:
        return "– (1 question)"
    return f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _write_json(path: Path, payload: Any) -> None:
    from autotts.fsio import atomic_write_bytes, json_default_or_str

    text = json.dumps(payload, indent=2, ensure_ascii=False, default=json_default_or_str) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def run_eval(
    controller: str,
    store: list[Path] | None = None,
    env: Path | None = None,
    split: str | None = None,
    set_: list[str] | None = None,
    betas: str | None = None,
    draws: int | None = None,
    protocol: str | None = None,
    pool: int | None = None,
    seed: int | None = None,
    probe_cost: int | None = None,
    budget: int | None = None,
    json_out: Path | None = None,
    json_episodes: bool = False,
    traces: Path | None = None,
    episodes: Path | None = None,
    sandbox: bool = False,
    allow_weak_sandbox: bool = False,
    workers: int = 1,
    executor: str = "local",
    ray_address: str | None = None,
    errors: str = "raise",
) -> None:
    """Evaluate a controller over stores × β × draws and print the table (`autotts eval`)."""
    from autotts.evaluate import evaluate
    from autotts.settings import EVAL, resolve

    if errors not in ("raise", "record"):
        raise ConfigError(f"--errors must be raise or record, got {errors!r}")
    if split is not None and env is None:
        raise ConfigError("--split chooses a split of --env; give --env FILE.toml too")
    split = split or "search"
    overrides = parse_sets(set_ or [])
    stores: list[Any] = list(store or [])
    e = None
    if env is not None:
        from autotts.envdef import load_env

        e = load_env(env)
        stores += e.split_paths(split)
    # Flags given > the environment file > defaults (autotts/settings.py, shared with sweep and
    # discover).
    settings = resolve(EVAL, e, split, draws=draws, protocol=protocol, pool=pool, seed=seed,
                       probe_cost=probe_cost, budget=budget,
                       betas=parse_betas(betas) if betas is not None else None)
    # --set without --betas evaluates the one configuration the overrides name.
    beta_list = None if overrides and betas is None else settings.betas
    if not stores:
        raise ConfigError("give at least one --store or an --env")
    if json_episodes and json_out is None:
        raise ConfigError("--json-episodes needs --json FILE")
    weak: dict[str, Any] = {}
    if sandbox:  # same call and rows; the controller runs in sandbox processes (docs/sandbox.md)
        from autotts.sandbox import evaluate_sandboxed as evaluate
        from autotts.sandbox.lockdown import describe, is_strong, require_strong

        found = require_strong(allow_weak_sandbox)  # refuses a weak platform, before any work
        if not is_strong(found):
            err.print(f"[bold red]weak sandbox[/]: the controller can reach your files or "
                      f"network (isolation: {describe(found)})")
            weak = {"allow_weak_sandbox": True}  # the default refuses
        resume_gc()  # before the sandbox's processes start
    else:
        weak = {"on_loaded": resume_gc}  # start-up ends with the loads (settle_process)
    proto = settings.proto
    tick: Any = None
    bar: Any = _no_bar(err)
    if err.is_terminal:  # a transient bar draws nothing on a file or pipe: none is started there
        from rich.progress import Progress

        bar = Progress(console=err, transient=True)
    with bar as prog:
        if prog is not None:
            task = prog.add_task("evaluating", total=None)

            def tick(done: int, total: int) -> None:
                prog.update(task, completed=done, total=total)

        # Episode rows (a dict per episode) only where they are written out: the intervals
        # below read the outcome arrays (in-process and sandboxed alike).
        result = evaluate(
            controller, stores, beta_list, proto, overrides=overrides, workers=workers,
            executor=executor, ray_address=ray_address,
            episodes=episodes is not None or json_episodes,
            traces=traces is not None, on_error=errors, progress=tick, **weak,
        )
    from autotts.stats import attach_question_intervals, curves_from_outcomes

    # Two kinds of uncertainty, side by side: ± se over the shuffle draws (the published
    # protocol: how well the replay estimated the figure on these questions) and a 95% interval
    # over questions (how far it could move on other questions from the same source).
    curves = curves_from_outcomes(result.outcomes) if result.outcomes else None
    attach_question_intervals(result.rows, result.episodes or [], curves=curves)
    t = Table(title=f"{result.rows[0]['controller']}  ({settings.describe()})",
              caption="± se: over draws; 95% CI: bootstrap over questions (draws kept)")
    for col in ("store", "β", "accuracy %", "± se draws", "95% CI questions", "tokens",
                "± se draws", "95% CI questions", "errors"):
        t.add_column(col, justify="left" if col == "store" else "right")
    for r in result.rows:
        aq, tq = r["accuracy_ci_questions"], r["tokens_ci_questions"]
        one = r["draws"] < 2  # the rows keep se 0.0; printed, it would pass for an exact figure
        t.add_row(
            r["store"], "-" if r["beta"] is None else f"{r['beta']:g}",
            f"{r['accuracy']:.2f}", "–" if one else f"{r['accuracy_se']:.2f}",
            _ci_text(aq, ".1f"), f"{r['tokens']:.0f}", "–" if one else f"{r['tokens_se']:.0f}",
            _ci_text(tq, ",.0f"), str(r["errors"]),
        )
    out.print(t)
    if any(r["draws"] < 2 for r in result.rows):
        out.print("± se draws '–': one draw, no spread over draws to measure", markup=False,
                  highlight=False)
    if json_out is not None:
        rows = [{k: v for k, v in r.items() if k != "errors"} for r in result.rows]
        if json_episodes:
            from autotts.stats import episodes_payload

            payload = episodes_payload(result.episodes or [])
            for r in rows:
                r["episodes"] = payload[(r["store"], r["controller"], r["beta"])]
        _write_json(json_out, rows)
    for path, items in ((traces, result.traces), (episodes, result.episodes)):
        if path is not None:
            from autotts.fsio import atomic_write_bytes, json_default_or_str

            lines = "".join(json.dumps(x, default=json_default_or_str) + "\n" for x in items or [])
            atomic_write_bytes(path, lines.encode("utf-8"))
    if beta_list is not None and len(beta_list) > 1:
        from autotts.metrics import monotonicity_violations

        bad = monotonicity_violations(result.rows)
        if bad:
            for v in bad:
                err.print(f"[yellow]not monotone:[/] {v.describe()}")
        else:
            out.print("cost is monotone in β on every store (within the standard error)")
    if result.errors:
        err.print(f"[yellow]{len(result.errors)} episode(s) failed and were scored as wrong[/]")


# ---- the process -------------------------------------------------------------------------------


def _keep_freed_memory() -> None:
    """Let glibc's malloc keep what the process frees for its next allocation. By default it hands
    a freed block of over ~128 kB (later: of the largest size freed so far) back to the kernel,
    and the next allocation of that size faults every page in anew: an evaluation allocates and
    frees arrays of megabytes per work unit, and those page faults were ~15% of the CPU time of
    a one-store `eval`. Set thresholds turn glibc's own adjustment of them off; the process's
    memory stays at its peak, as it would with any allocator that caches. `eval` only (the
    command measured); elsewhere than glibc: nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # numpy imports it anyway

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest: blocks below it come from the heap
    mallopt(m_trim_threshold, 256 << 20)  # the heap's free top is given back past this


# Any of these set by the user decides how many threads OpenBLAS starts.
_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")


def _one_blas_thread() -> None:
    """Ask numpy's OpenBLAS for one thread, unless the user chose a number. At import it starts a
    thread per core, each spinning for a while: ~50 ms of CPU of a one-store eval, and more wall
    time on a busy machine. Evaluation makes no BLAS call big enough to share out (the built-ins
    step small arrays, the statistics use einsum, the sandbox's children run on one thread
    already), so the results are the same; a controller of your own that multiplies large
    matrices can set OPENBLAS_NUM_THREADS."""
    if "numpy" not in sys.modules and not any(v in os.environ for v in _BLAS_THREAD_VARS):
        os.environ["OPENBLAS_NUM_THREADS"] = "1"  # read once, when numpy loads OpenBLAS


_GC_PAUSED = [False]  # whether collection is paused until the evaluation starts


def pause_gc(enabled: bool | None = None) -> None:
    """Collect no garbage while `eval` starts: imports (modules, functions, classes), the
    controller's load and the stores' (a JSON store is ~10,000 lists) allocate objects that live
    until exit, and the ~80 collections that walked them again and again were ~5% of a one-store
    eval's CPU time. `resume_gc` turns collection back on before the first episode runs.
    `enabled`: whether collection was on before the caller turned it off (autotts/__main__.py
    does, before it imports this module); by default, whether it is on now."""
    if enabled is None:
        enabled = gc.isenabled()
    if enabled:
        gc.disable()
        _GC_PAUSED[0] = True


def resume_gc() -> None:
    """After `pause_gc`: freeze what start-up allocated (later collections skip it; it would
    survive them all anyway) and collect as usual from here on."""
    if _GC_PAUSED[0]:
        _GC_PAUSED[0] = False
        gc.freeze()
        gc.enable()


def settle_process(args: list[str]) -> None:
    """Process-wide settings for `eval`, made before numpy loads (issue 18: a one-store eval in
    well under 0.5 s). Other commands keep the defaults."""
    if args[:1] == ["eval"]:
        pause_gc()
        _keep_freed_memory()
        _one_blas_thread()


# ---- the plain reading ------------------------------------------------------------------------


def _path(value: str) -> Path | None:
    """A path as typer's click.Path (readable=True, exists=False) passes it on, or None where
    click would refuse it: an existing path this process may not read."""
    try:
        os.stat(value)
    except OSError:
        return Path(value)
    except ValueError:  # an embedded NUL: typer's own error
        return None
    return Path(value) if os.access(value, os.R_OK) else None


def _int(value: str) -> int | None:
    try:
        return int(value)  # click's INT converts with int() too
    except ValueError:
        return None


# option -> (keyword, conversion, repeatable), as typer makes them from run_eval's command in
# autotts/cli.py; flags (a bool each) apart.
_VALUED: dict[str, tuple[str, Callable[[str], Any], bool]] = {
    "--controller": ("controller", str, False),
    "--store": ("store", _path, True),
    "--env": ("env", _path, False),
    "--split": ("split", str, False),
    "--set": ("set_", str, True),
    "--betas": ("betas", str, False),
    "--draws": ("draws", _int, False),
    "--protocol": ("protocol", str, False),
    "--pool": ("pool", _int, False),
    "--seed": ("seed", _int, False),
    "--probe-cost": ("probe_cost", _int, False),
    "--budget": ("budget", _int, False),
    "--json": ("json_out", _path, False),
    "--traces": ("traces", _path, False),
    "--episodes": ("episodes", _path, False),
    "--workers": ("workers", _int, False),
    "--executor": ("executor", str, False),
    "--ray-address": ("ray_address", str, False),
    "--errors": ("errors", str, False),
}
_FLAGS: dict[str, tuple[str, bool]] = {
    f"--{prefix}{name}": (name.replace("-", "_"), not prefix)
    for name in ("json-episodes", "sandbox", "allow-weak-sandbox") for prefix in ("", "no-")
}


def plain_eval_args(args: list[str]) -> dict[str, Any] | None:
    """run_eval's keyword arguments from the words after `eval`, as typer reads them, or None
    where typer should read them (anything but known options with values click accepts, each
    scalar option at most once; --controller given)."""
    kwargs: dict[str, Any] = {}
    seen: set[str] = set()
    i = 0
    while i < len(args):
        word = args[i]
        name, eq, value = word.partition("=")
        if name in _FLAGS and not eq:
            key, flag = _FLAGS[name]
            if key in seen:
                return None
            seen.add(key)
            kwargs[key] = flag
            i += 1
            continue
        if name not in _VALUED:
            return None  # --help, an unknown option, a positional word, "--": typer's to say
        key, convert, repeatable = _VALUED[name]
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("-"):
                return None  # no value, or one click might read differently
            value = args[i + 1]
            i += 1
        i += 1
        got = convert(value)
        if got is None or (key in seen and not repeatable):
            return None
        seen.add(key)
        if repeatable:
            kwargs.setdefault(key, []).append(got)
        else:
            kwargs[key] = got
    return kwargs if "controller" in kwargs else None


def run_plain(kwargs: dict[str, Any]) -> None:
    """run_eval(**kwargs) in this process as `autotts eval` runs it through typer: the same
    process settings and exit (autotts/cli.py main), and what click's standalone mode does
    around a command: a closed output pipe exits 1 without a traceback; an AutoTTSError is one
    line and exit 2; an interrupt (Ctrl-C) one line and exit 130."""
    settle_process(["eval"])
    atexit.unregister(gc.freeze)  # as autotts/cli.py main: see there
    atexit.register(gc.freeze)
    try:
        run_eval(**kwargs)
    except AutoTTSError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        exit_interrupted("interrupted")
    except EOFError:
        print(file=sys.stderr)
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        if e.errno != errno.EPIPE:
            raise
        # Whatever is still buffered for the closed pipe goes nowhere (click's PacifyFlushWrapper).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    finally:
        resume_gc()  # where the evaluation never started
