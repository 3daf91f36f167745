"""Sharp edges a newcomer hit on the command line (issue 16): each one is a one-line error with a
non-zero exit, or help that says what it should. Runs `autotts.cli.main` in-process, as the
console script does; no published data needed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import autotts
import autotts.evalcli
from autotts.cli import main
from autotts.controller import builtin_names

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ROOT / "data" / "synthetic"


def cli(args: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["autotts", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main()
    got = capsys.readouterr()
    return int(e.value.code or 0), got.out, got.err


def one_error_line(err: str) -> str:
    """The whole of stderr is one line: no empty line before it (as a progress bar's stand-in
    once left), nothing after."""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and err.endswith("\n"), err
    return lines[0]


def tiny_json(path: Path) -> Path:
    rec = [{"question": "q", "gold_answer": "1", "probe_freq": 10, "final_answers_trace": ["1"],
            "each_branch": [[["1", "2"], 25, "1"], [["2"], 12, "2"]]}]
    path.write_text(json.dumps(rec))
    return path


def test_import_of_a_bare_file_name_stays_inside_out(tmp_path, capsys, monkeypatch):
    work = tmp_path / "downloads"
    work.mkdir()
    tiny_json(work / "renamed.json")
    monkeypatch.chdir(work)
    code, _, err = cli(["import", "renamed.json", "--out", "stores2"], capsys, monkeypatch)
    assert code == 0, err
    assert (work / "stores2" / "downloads" / "renamed" / "manifest.json").is_file()
    assert not Path("/renamed").exists()


def test_a_store_name_never_escapes_out(tmp_path):
    from autotts.errors import StoreError
    from autotts.store import from_autotts_records, import_files, store_name_for

    assert store_name_for(Path("renamed.json"))[0] != ""
    src = tiny_json(tmp_path / "x.json")
    # Names come from paths; force hostile ones through the same check.
    import autotts.store as st

    for model in ("", "..", "/abs"):
        rec = json.loads(src.read_text())
        store = from_autotts_records(rec, model=model, benchmark="b")
        orig = st.read_autotts_json
        try:
            st.read_autotts_json = lambda *a, store=store, **k: store  # type: ignore[assignment]
            with pytest.raises(StoreError, match="outside --out"):
                import_files([src], tmp_path / "out")
        finally:
            st.read_autotts_json = orig
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("betas", ["2.0", "-0.5", "0,1.5", "nan"])
def test_beta_outside_0_1_is_an_error(betas, capsys, monkeypatch):
    code, _, err = cli(["eval", "--controller", "sc", "--store", str(SYNTH), "--betas", betas,
                        "--draws", "1"], capsys, monkeypatch)
    assert code != 0
    assert "β must be in [0, 1]" in one_error_line(err)


def test_sweep_refuses_beta_outside_0_1_too(tmp_path, capsys, monkeypatch):
    code, _, err = cli(["sweep", "--store", str(SYNTH), "--betas", "0,2", "--out",
                        str(tmp_path / "r")], capsys, monkeypatch)
    assert code != 0 and "β must be in [0, 1]" in one_error_line(err)


def test_a_knob_value_the_controller_rejects_is_a_configuration_error(capsys, monkeypatch):
    code, _, err = cli(["eval", "--controller", "sc", "--set", "n=abc", "--store", str(SYNTH),
                        "--draws", "1"], capsys, monkeypatch)
    line = one_error_line(err)
    assert code != 0 and "knob 'n'" in line and "abc" in line
    assert "question 0" not in line and "exception" not in line


def test_a_knob_value_the_constructor_refuses_names_the_knob(tmp_path):
    from autotts.controller import load
    from autotts.errors import ConfigError

    f = tmp_path / "picky.py"
    f.write_text(
        "class Picky:\n    NAME = 'picky'\n\n    @staticmethod\n    def schedule(beta):\n"
        "        return {'mode': 'a'}\n\n    def __init__(self, mode='a'):\n"
        "        if mode not in ('a', 'b'):\n            raise ValueError('mode must be a or b')\n"
        "        self.mode = mode\n\n    def run(self, ep):\n        return None\n"
    )
    spec = load(str(f))
    assert spec.config(0.5, {"mode": "b"}) == {"mode": "b"}
    with pytest.raises(ConfigError, match=r"rejects --set mode='c': ValueError: mode must be a or b"):
        spec.config(0.5, {"mode": "c"})


def test_split_without_env_is_an_error(capsys, monkeypatch):
    code, _, err = cli(["eval", "--controller", "sc", "--store", str(SYNTH), "--split", "heldout"],
                       capsys, monkeypatch)
    assert code != 0 and "--env" in one_error_line(err)


def test_errors_option_is_checked_by_its_own_name(capsys, monkeypatch):
    code, _, err = cli(["eval", "--controller", "sc", "--store", str(SYNTH), "--errors", "ignore"],
                       capsys, monkeypatch)
    line = one_error_line(err)
    assert code != 0 and "--errors must be raise or record" in line and "on_error" not in line


def test_a_missing_file_reads_the_same_in_import_and_eval(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nothere.json"
    _, _, e1 = cli(["import", str(missing), "--out", str(tmp_path / "o")], capsys, monkeypatch)
    _, _, e2 = cli(["eval", "--controller", "sc", "--store", str(missing)], capsys, monkeypatch)
    assert one_error_line(e1) == one_error_line(e2) == f"error: {missing}: no such store or file"


def test_an_error_inside_eval_is_the_only_line_on_stderr(tmp_path, capsys, monkeypatch):
    """The store is read, and the controller run, under the progress bar (or, on a file or pipe,
    its stand-in): an error there is one line with no empty line before it, by either reading
    of the arguments (autotts/__main__.py's plain one and typer's)."""
    from autotts.evalcli import plain_eval_args, run_plain

    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    args = ["eval", "--controller", "sc", "--store", str(bad), "--draws", "1"]
    code, out, err = cli(args, capsys, monkeypatch)
    assert (code, out) == (2, "")
    assert one_error_line(err) == f"error: {bad}: expected a JSON list of questions, got dict"
    kwargs = plain_eval_args(args[1:])
    assert kwargs is not None
    with pytest.raises(SystemExit) as e:
        run_plain(kwargs)
    assert e.value.code == 2 and capsys.readouterr().err == err


def test_an_error_under_another_commands_progress_bar_is_one_line(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nope.toml"
    code, _, err = cli(["train-dynaact", "--out", str(tmp_path / "u.json"), "--env", str(missing)],
                       capsys, monkeypatch)
    assert code == 2 and one_error_line(err) == f"error: {missing}: no such environment file"
    code, _, err = cli(["data", "fetch", "Qwen3-8B/aime24", "--to", str(tmp_path / "d"),
                        "--base-url", (tmp_path / "mirror").as_uri()], capsys, monkeypatch)
    assert code == 2 and "cannot connect" in one_error_line(err)


def test_eval_without_a_terminal_still_ends_stderr_as_rich_does(capsys, monkeypatch):
    """A run that succeeds leaves what a transient rich Progress leaves on a file: one empty
    line (kept byte for byte, ee0b12b)."""
    code, out, err = cli(["eval", "--controller", "sc", "--store", str(SYNTH), "--draws", "1",
                          "--betas", "0"], capsys, monkeypatch)
    assert code == 0 and "bootstrap over questions" in out and err == "\n"


def test_missing_published_data_names_the_fetch_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUTOTTS_DATA", str(tmp_path / "empty"))
    code, _, err = cli(["eval", "--controller", "sc", "--env", "aime-qwen3"], capsys, monkeypatch)
    line = one_error_line(err)
    assert code != 0
    for needle in ("{data}", str(tmp_path / "empty"), "AUTOTTS_DATA", "autotts data fetch"):
        assert needle in line
    f = tmp_path / "empty" / "autotts-replay" / "Qwen3-8B" / "aime24.json"
    _, _, err = cli(["inspect", str(f)], capsys, monkeypatch)
    assert "autotts data fetch autotts-qwen3" in one_error_line(err)


def test_what_a_command_wrote_is_one_line_whatever_the_width(tmp_path, capsys, monkeypatch):
    """A "wrote PATH" line is never wrapped (so the path can be copied), however narrow the
    terminal and long the path."""
    monkeypatch.setattr(autotts.evalcli.out, "_width", 40)
    deep = tmp_path / ("a-rather-long-folder-name-" * 3) / "synth-store"
    code, out, err = cli(["synth", "--out", str(deep), "--questions", "3", "--branches", "4"],
                         capsys, monkeypatch)
    assert code == 0, err
    assert out.startswith(f"wrote {deep} (") and out.count("\n") == 1
    code, out, err = cli(["export", str(deep), "--out", str(deep / "x.json")], capsys,
                         monkeypatch)
    assert (code, out) == (0, f"wrote {deep / 'x.json'}\n"), err


def test_version(capsys, monkeypatch):
    code, out, _ = cli(["--version"], capsys, monkeypatch)
    assert code == 0 and out.strip() == f"autotts {autotts.__version__}"


def test_eval_help_lists_builtins_and_defaults_without_type_noise(capsys, monkeypatch):
    code, out, _ = cli(["eval", "--help"], capsys, monkeypatch)
    assert code == 0
    flat = " ".join(out.split())
    for name in builtin_names():
        assert name in flat
    assert "[default: 100" in flat and "[default: shuffle, or the --env protocol]" in flat
    assert "[default: raise]" in flat and "[default: 0]" in flat  # --seed: None, shown as 0


def test_sweep_help_shows_defaults_and_environment(capsys, monkeypatch):
    code, out, _ = cli(["sweep", "--help"], capsys, monkeypatch)
    assert code == 0
    flat = " ".join(out.split())
    assert "[default: 20, or the --env draws]" in flat
    assert "[default: 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1, or the --env grid]" in flat


def test_discover_help_shows_defaults_and_their_variables(capsys, monkeypatch):
    """Each flag of discover falls back to an AUTOTTS_* variable, then a default: help says so
    (docs/discovery.md has the table)."""
    code, out, _ = cli(["discover", "--help"], capsys, monkeypatch)
    flat = " ".join(out.split())
    assert code == 0
    for said in ("[default: $AUTOTTS_MODEL]", "[default: $AUTOTTS_ROUNDS, else 10]",
                 "[default: $AUTOTTS_BUDGET_USD, else none]", "$OPENAI_API_KEY",
                 "[default: $AUTOTTS_RACE_DRAWS, else 5]", "[default: $AUTOTTS_CANDIDATES, else 1]"):
        assert said in flat, said


@pytest.mark.parametrize(("command", "usage"), [
    (["import"], "import [OPTIONS] SRC..."), (["compare"], "compare [OPTIONS] ENTRIES..."),
    (["report"], "report [OPTIONS] INPUTS..."), (["collect-merge"], "[OPTIONS] WORKDIRS..."),
    (["data", "fetch"], "fetch [OPTIONS] [NAME...]"), (["inspect"], "inspect [OPTIONS] STORE "),
])
def test_usage_marks_arguments_that_take_several_values(command, usage, capsys, monkeypatch):
    code, out, _ = cli([*command, "--help"], capsys, monkeypatch)
    assert code == 0 and usage in out


@pytest.mark.parametrize("command", [[], ["eval"], ["import"], ["data", "fetch"], ["data", "list"],
                                     ["demo"], ["report"], ["collect"], ["discover"],
                                     ["sweep"]])
def test_help_has_no_python_type_labels(command, capsys, monkeypatch):
    code, out, _ = cli([*command, "--help"], capsys, monkeypatch)
    assert code == 0
    for noise in ("<list[", "<bool>", "<str>", "<int>", "<path>", "<float>"):
        assert noise not in out, (command, noise)


# ---- usage errors: one line naming the option or argument (and the value), exit status 2 ------


@pytest.mark.parametrize(("args", "line"), [
    # a missing argument, a missing option
    (["import"], "error: missing argument 'SRC...' (see 'autotts import --help')"),
    (["export", str(SYNTH)], "error: missing option '--out' (see 'autotts export --help')"),
    (["eval", "--store", str(SYNTH)],
     "error: missing option '--controller' (see 'autotts eval --help')"),
    # an unknown option, an unknown command, an extra argument
    (["inspect", str(SYNTH), "--bogus"],
     "error: no such option: --bogus (see 'autotts inspect --help')"),
    (["data", "list", "--verfy"],
     "error: no such option: --verfy (Possible options: --verify) "
     "(see 'autotts data list --help')"),
    (["--nope"], "error: no such option: --nope (see 'autotts --help')"),
    (["evl"], "error: no such command 'evl'. Did you mean 'eval'? (see 'autotts --help')"),
    (["inspect", str(SYNTH), "extra"],
     "error: got unexpected extra argument(s) (extra) (see 'autotts inspect --help')"),
    # a value click cannot convert
    (["eval", "--controller", "sc", "--workers", "abc"],
     "error: invalid value for '--workers': 'abc' is not a valid integer "
     "(see 'autotts eval --help')"),
    (["compare", "sc", "--level", "high"],
     "error: invalid value for '--level': 'high' is not a valid float "
     "(see 'autotts compare --help')"),
    (["sweep", "--out", "x", "--draws", "2.5"],
     "error: invalid value for '--draws': '2.5' is not a valid integer "
     "(see 'autotts sweep --help')"),
    (["bench", "--workers"], "error: option '--workers' requires an argument "
     "(see 'autotts bench --help')"),
])
def test_a_usage_error_is_one_line_with_exit_status_2(args, line, capsys, monkeypatch):
    """Not typer's usage line, hint and boxed message over several lines: one line like the
    project's other errors, naming the option or argument and the value, then where help is."""
    code, out, err = cli(args, capsys, monkeypatch)
    assert (code, out) == (2, "")
    assert one_error_line(err) == line


def test_a_usage_error_reads_the_same_from_the_console_command(tmp_path):
    """Through `python -m autotts` (the console script's module): eval's plain reading leaves a
    value it cannot take to typer, whose error is main()'s one line."""
    res = subprocess.run([sys.executable, "-m", "autotts", "eval", "--controller", "sc",
                          "--workers", "many"], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "80"},
                         timeout=120)
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == ("error: invalid value for '--workers': 'many' is not a valid integer "
                          "(see 'python -m autotts eval --help')\n")


@pytest.mark.parametrize("args", [[], ["data"]])
def test_a_group_without_a_command_still_shows_its_help(args, capsys, monkeypatch):
    code, out, err = cli(args, capsys, monkeypatch)
    assert (code, err) == (2, "") and "Usage:" in out and "Commands" in out


def test_gitignore_covers_what_the_readme_creates(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["data/stores/Qwen3-8B/aime24/manifest.json", "runs/first/summary.json",
             "autotts-demo/report.html", "autotts-demo-8b/report.html", "runs/pp.json", "runs/report/report.html",
             "data/synth-weak/manifest.json", "data/Qwen3-8B/aime24/manifest.json"]
    res = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT,
                         capture_output=True, text=True)
    assert sorted(res.stdout.split()) == sorted(paths)
    # ...and never the shipped store
    res = subprocess.run(["git", "check-ignore", "--no-index", "data/synthetic/manifest.json"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.stdout == ""


# ---- start-up (issue 18): a run builds only its own command; eval's process settings ---------


@pytest.mark.parametrize("args", [
    ["eval", "--help"], ["eval", "--bogus"], ["eval"], ["data", "list", "--help"],
    ["inspect", str(SYNTH), "--json"], ["--version"], ["evl"], [],
])
def test_a_run_reads_as_with_every_command_built(args, capsys, monkeypatch):
    """main() builds the click command of the one command it runs (typer would build all of
    them): help, errors and output are those of main() with the whole app."""
    import autotts.cli

    got = cli(args, capsys, monkeypatch)
    monkeypatch.setattr(autotts.cli, "_lean_app", lambda args: autotts.cli.app)
    assert got == cli(args, capsys, monkeypatch)


def _blas_threads_setting(args: list[str], env: dict[str, str]) -> str:
    code = ("import atexit, os, sys\n"
            f"sys.argv = ['autotts', *{args!r}]\n"
            "atexit.register(lambda: print('OPENBLAS', os.environ.get('OPENBLAS_NUM_THREADS'),"
            " file=sys.stderr))\n"
            "from autotts.cli import main\nmain()\n")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**clean, "PYTHONPATH": str(ROOT), **env}, timeout=120)
    assert res.returncode == 0, res.stderr
    return [ln for ln in res.stderr.splitlines() if ln.startswith("OPENBLAS")][-1]


def test_eval_starts_openblas_on_one_thread_unless_the_user_chose():
    run = ["eval", "--controller", "sc", "--store", str(SYNTH), "--draws", "1", "--betas", "0"]
    assert _blas_threads_setting(run, {}) == "OPENBLAS 1"
    assert _blas_threads_setting(run, {"OMP_NUM_THREADS": "3"}) == "OPENBLAS None"
    assert _blas_threads_setting(run, {"OPENBLAS_NUM_THREADS": "2"}) == "OPENBLAS 2"
    assert _blas_threads_setting(["inspect", str(SYNTH)], {}) == "OPENBLAS None"
