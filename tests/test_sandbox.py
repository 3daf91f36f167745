"""The sandbox (issue 5): static admission, the red-team suite of hostile controllers in
tests/redteam/, and sandboxed evaluation giving the same numbers as in-process evaluation."""

from __future__ import annotations

import builtins
import json
import os
import random
import subprocess
import sys
import threading
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from autotts import controller as ctl
from autotts.evaluate import EvalProtocol, evaluate
from autotts.sandbox import (
    SandboxError,
    SandboxLimits,
    evaluate_sandboxed,
    guards,
    monotonicity,
    scrubbed_env,
    spawned_pids,
    wire,
)
from autotts.sandbox.admission import ALLOWED_IMPORTS, ALLOWED_MODULE_VALUES, admit
from autotts.sandbox.lockdown import is_strong
from tests.conftest import branch, make_store, reference_file

REDTEAM = Path(__file__).parent / "redteam"
FAST = SandboxLimits(wall_seconds=40, cpu_seconds=30, episode_seconds=5, memory_mb=512,
                     max_output_bytes=4096)


def synthetic_store(n_questions: int = 4, n_branches: int = 20, seed: int = 0):
    rng = random.Random(seed)
    questions = []
    for _ in range(n_questions):
        gold = "A"
        branches = []
        for _ in range(n_branches):
            depth = rng.randint(0, 6)
            final = rng.choice("AAABC")
            probes = [rng.choice(["A", "B", "C", "ERR"]) for _ in range(depth)]
            branches.append(branch(probes, depth * 10 + rng.randint(0, 15), final))
        questions.append((gold, branches))
    return make_store(questions, benchmark=f"toy{seed}")


@pytest.fixture(scope="module")
def store():
    return synthetic_store()


# ---- parent safety, checked around every sandboxed run ----------------------------------------


def _children_of(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(d))
    return out


@pytest.fixture
def parent(tmp_path, monkeypatch):
    """A canary file, a fake held-out store whose path only the parent's environment holds, and
    an API key in the parent's environment. Afterwards: all untouched, nothing of the sandbox
    left running, nothing leaked into this process."""
    canary = tmp_path / "canary.txt"
    canary.write_text("canary")
    heldout = tmp_path / "heldout" / "aime25.json"
    heldout.parent.mkdir()
    heldout.write_text("[]")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-parent-secret")
    monkeypatch.setenv("AUTOTTS_HELDOUT", str(heldout))
    stamp = canary.stat().st_mtime_ns
    originals = (np.sum, np.count_nonzero, builtins.len, builtins.open, builtins.__import__)
    before = set(spawned_pids())
    yield {"canary": canary, "heldout": heldout}
    assert canary.read_text() == "canary" and canary.stat().st_mtime_ns == stamp
    assert heldout.read_text() == "[]"
    assert sorted(os.listdir(heldout.parent)) == ["aime25.json"]
    assert (np.sum, np.count_nonzero, builtins.len, builtins.open, builtins.__import__) == originals
    assert "candidate" not in sys.modules
    assert os.environ["OPENAI_API_KEY"] == "sk-parent-secret"
    for pid in set(spawned_pids()) - before:
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert _children_of(os.getpid()) == []


# ---- the red-team suite ----------------------------------------------------------------------


def _header(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if not line.startswith("# "):
            break
        key, sep, value = line[2:].partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _limits(spec: str | None) -> SandboxLimits:
    kw = dict(FAST.__dict__)
    for item in (spec or "").split(","):
        if item.strip():
            k, v = item.split("=")
            kw[k.strip()] = type(kw[k.strip()])(float(v))
    return SandboxLimits(**kw)


REDTEAM_FILES = sorted(REDTEAM.glob("*.py"))


def _run_candidate(path: Path, parent: dict[str, Path], *, admit_first: bool):
    text = path.read_text()
    head = _header(text)
    source = text.replace("__CANARY__", str(parent["canary"])).replace(
        "__HELDOUT__", str(parent["heldout"]))
    options = head.get("options", "")
    betas = [0.0, 0.5, 1.0] if "check_monotone" in options else [0.5]
    return evaluate_sandboxed(
        source, [synthetic_store()], betas, EvalProtocol(draws=6), limits=_limits(head.get("limits")),
        filename=path.name, check_monotone="check_monotone" in options, _admit=admit_first,
    )


def test_redteam_suite_is_large_enough():
    assert len(REDTEAM_FILES) >= 25
    kinds = {_header(p.read_text())["expect"] for p in REDTEAM_FILES}
    assert {"forbidden", "timeout", "memory", "exception", "invalid_action", "non_answer",
            "interface", "non_monotone", "ok"} <= kinds


@pytest.mark.parametrize("path", REDTEAM_FILES, ids=lambda p: p.stem)
def test_redteam(path, parent):
    expect = _header(path.read_text())["expect"]
    if expect == "ok":
        ev = _run_candidate(path, parent, admit_first=True)
        assert ev.rows and ev.rows[0]["errors"] == 0
        assert len(ev.stdout) <= FAST.max_output_bytes + 100
        assert len(ev.stderr) <= 2 * FAST.max_output_bytes
        return
    with pytest.raises(SandboxError) as info:
        _run_candidate(path, parent, admit_first=True)
    v = info.value.verdict
    assert v.kind == expect, str(v)
    assert v.message and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["non_answer_huge_int", "non_answer_vast_negative_int"])
def test_out_of_range_answers_are_non_answers_in_process_too(name):
    """The in-process evaluator reports them as the sandbox does, even an int too long for
    Python's decimal repr."""
    ev = evaluate(str(REDTEAM / f"{name}.py"), [synthetic_store()], [0.5], EvalProtocol(draws=2),
                  on_error="record")
    assert {e["kind"] for e in ev.errors} == {"non_answer"}
    assert "outside the int32 range" in ev.errors[0]["message"]


RUNTIME_FILES = [p for p in REDTEAM_FILES if "runtime" in _header(p.read_text())]


@pytest.mark.parametrize("path", RUNTIME_FILES, ids=lambda p: p.stem)
def test_redteam_without_static_admission(path, parent):
    """Defence in depth: with admission skipped, the run-time guards and rlimits still stop it."""
    expect = _header(path.read_text())["runtime"].split(",")
    with pytest.raises(SandboxError) as info:
        _run_candidate(path, parent, admit_first=False)
    assert info.value.verdict.kind in expect, str(info.value.verdict)


def test_exception_verdict_has_episode_context_and_own_lines(parent):
    source = '''
class Buggy:
    NAME = "buggy"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        a = ep.read_new()
        if ep.pool_size > 0:
            return helper(a)


def helper(a):
    return a // 0
'''
    with pytest.raises(SandboxError) as info:
        evaluate_sandboxed(source, [synthetic_store()], [0.25], EvalProtocol(draws=2), limits=FAST,
                           filename="buggy.py")
    v = info.value.verdict
    assert v.kind == "exception" and "ZeroDivisionError" in v.message
    assert v.context["question"] == 0 and v.context["draw"] == 0 and v.context["beta"] == 0.25
    assert v.context["store"] == "tiny/toy0"
    assert "line 12, in run: return helper(a)" in v.traceback
    assert "line 16, in helper: return a // 0" in v.traceback
    assert "sandbox_child" not in v.traceback and "engine" not in v.traceback


def test_timeout_names_the_episode(parent, monkeypatch):
    from autotts.sandbox import judge

    # The second episode started is question 1 (the judge's order is otherwise secret).
    monkeypatch.setattr(judge, "secret_order", lambda n: list(range(n)))
    source = '''
class Slow:
    NAME = "slow"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        if ep.pool_size and Slow.seen >= 1:
            while True:
                pass
        Slow.seen += 1
        return ep.read_new()

    seen = 0
'''
    t0 = time.monotonic()
    with pytest.raises(SandboxError) as info:
        evaluate_sandboxed(source, [synthetic_store()], [0.5], EvalProtocol(draws=3),
                           limits=_limits("episode_seconds=1"))
    v = info.value.verdict
    assert v.kind == "timeout"
    assert (v.context["draw"], v.context["question"]) == (0, 1)  # the second episode
    assert time.monotonic() - t0 < 30


def test_guard_violation_counts_even_when_caught(parent):
    source = '''
import numpy as np


class Sneaky:
    NAME = "sneaky"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        try:
            np.sum.x = 1
        except Exception:
            pass
        return ep.read_new()
'''
    with pytest.raises(SandboxError) as info:
        evaluate_sandboxed(source, [synthetic_store()], [0.5], EvalProtocol(draws=2), limits=FAST)
    assert info.value.verdict.kind == "forbidden"
    assert info.value.verdict.context["line"] == 14


def test_child_environment_is_scrubbed_and_isolated(parent, store):
    """While a candidate runs: no API key and no held-out path in its environment, an empty
    working directory, and (as root) another user and network namespace."""
    source = (REDTEAM / "infinite_loop.py").read_text()
    before = set(spawned_pids())
    seen: dict[str, object] = {}

    def run():
        with pytest.raises(SandboxError):
            evaluate_sandboxed(source, [store], [0.5], EvalProtocol(draws=2),
                               limits=_limits("episode_seconds=4"))

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "env" not in seen:
        # The spawned process waits for the locked-down one (PID namespace) and forks batches:
        # look at every process below it.
        pids = set(spawned_pids()) - before
        for _ in range(3):
            pids |= {c for p in pids for c in _children_of(p)}
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                if "Uid:" in status and os.geteuid() == 0 and "\t65534\t" not in status:
                    continue  # not locked down yet
                seen["env"] = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                seen["status"] = status
                seen["net"] = os.readlink(f"/proc/{pid}/ns/net")
                seen["mnt"] = os.readlink(f"/proc/{pid}/ns/mnt")
            except OSError:
                pass
        time.sleep(0.05)
    t.join()
    env = dict(e.decode().split("=", 1) for e in seen["env"] if b"=" in e)
    assert "OPENAI_API_KEY" not in env and "AUTOTTS_HELDOUT" not in env
    assert not any("KEY" in k or "TOKEN" in k or "SECRET" in k for k in env)
    assert all(str(parent["heldout"]) not in v for v in env.values())
    if os.geteuid() == 0:
        assert seen["net"] != os.readlink("/proc/self/ns/net")
        assert seen["mnt"] != os.readlink("/proc/self/ns/mnt")  # its own, empty, root
        assert "\t65534\t" in str(seen["status"])


def test_scrubbed_env_is_built_from_nothing(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy")
    env = scrubbed_env("/tmp/x")
    assert env["HOME"] == "/tmp/x"
    assert not any(k.upper().endswith(("KEY", "TOKEN", "SECRET", "PROXY")) for k in env)


def test_record_mode_matches_in_process(tmp_path, store, parent):
    """A buggy (trusted) controller: the same rows and error records either way."""
    path = tmp_path / "flaky.py"
    path.write_text('''
class Flaky:
    NAME = "flaky"

    @staticmethod
    def schedule(beta):
        return {"n": 2 + int(4 * beta)}

    def __init__(self, n=3):
        self.n = n

    def run(self, ep):
        answers = ep.read_new_many(self.n).tolist()
        if answers[0] == answers[1]:
            raise ValueError("same")
        if answers[0] < 0:
            return "none"
        if len(answers) > 4:
            ep.advance(40)
        return answers[-1]
''')
    kw = dict(overrides=None, on_error="record")
    a = evaluate(str(path), [store], [0.0, 1.0], EvalProtocol(draws=5), **kw)
    b = evaluate_sandboxed(str(path), [store], [0.0, 1.0], EvalProtocol(draws=5), limits=FAST, **kw)
    assert a.rows == b.rows
    assert a.errors == b.errors and {e["kind"] for e in a.errors} >= {"exception"}


# ---- same numbers as in-process evaluation ---------------------------------------------------


def _normalized(items):
    return json.loads(json.dumps(items, default=wire.frame_json_default))


@pytest.mark.parametrize("name", ctl.builtin_names())
def test_builtin_controllers_identical_sandboxed(name, parent):
    stores = [synthetic_store(5, 24, seed=1), synthetic_store(3, 9, seed=2)]
    proto = EvalProtocol(draws=4)
    a = evaluate(name, stores, [0.0, 0.5, 1.0], proto, episodes=True, traces=True)
    b = evaluate_sandboxed(name, stores, [0.0, 0.5, 1.0], proto, episodes=True, traces=True,
                           limits=FAST)
    assert a.rows == b.rows
    assert a.episodes == b.episodes
    assert _normalized(a.traces) == _normalized(b.traces)
    assert a.errors == b.errors == []
    assert monotonicity(b.rows) is None
    if os.geteuid() == 0:
        assert is_strong(b.isolation), b.isolation


def test_workers_and_overrides_give_the_same_rows(store, parent):
    kw = dict(overrides={"num_chains": 8, "T": 3})
    a = evaluate("parallel_probe", [store], None, EvalProtocol(draws=8, protocol="subsample", pool=12),
                 **kw)
    b = evaluate_sandboxed("parallel_probe", [store], None,
                           EvalProtocol(draws=8, protocol="subsample", pool=12), workers=2,
                           limits=FAST, **kw)
    assert a.rows == b.rows and b.rows[0]["beta"] is None


def test_local_workers_leave_the_applications_gc_freeze_alone(store, parent):
    # The workers are forked with the collector's objects frozen; gc.unfreeze() would also thaw
    # what the application froze itself before the evaluation.
    import gc

    def frozen(obj: object) -> bool:  # the collector's generations leave out frozen objects
        return all(o is not obj for o in gc.get_objects())

    mine = [[i] for i in range(1000)]
    gc.freeze()
    try:
        assert frozen(mine)
        evaluate_sandboxed("parallel_probe", [store], None, EvalProtocol(draws=4), workers=2,
                           limits=FAST, overrides={"num_chains": 4, "T": 2})
        assert frozen(mine)
    finally:
        gc.unfreeze()
    evaluate_sandboxed("parallel_probe", [store], None, EvalProtocol(draws=4), workers=2,
                       limits=FAST, overrides={"num_chains": 4, "T": 2})
    assert gc.get_freeze_count() == 0  # and an evaluation's own freeze ends with it


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize("name", ctl.builtin_names())
def test_builtin_controllers_identical_on_reference_data(name, parent):
    path = reference_file("Qwen3-8B/aime24.json")
    a = evaluate(name, [path], [0.0, 0.5, 1.0], EvalProtocol(draws=5))
    b = evaluate_sandboxed(name, [path], [0.0, 0.5, 1.0], EvalProtocol(draws=5))
    assert a.rows == b.rows


def test_cli_eval_sandbox_matches_in_process(tmp_path, parent):
    store = tmp_path / "toy.json"
    from autotts.store import to_autotts_json

    store.write_text(json.dumps(to_autotts_json(synthetic_store(3, 10))))
    outs = []
    for extra in ([], ["--sandbox"]):
        out = tmp_path / f"out{len(outs)}.json"
        proc = subprocess.run(
            [sys.executable, "-c", "from autotts.cli import main; main()", "eval",
             "--controller", "esc", "--store", str(store), "--draws", "3", "--betas", "0,1",
             "--json", str(out), *extra],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        outs.append(json.loads(out.read_text()))
    assert outs[0] == outs[1]
    bad = tmp_path / "bad.py"
    bad.write_text((REDTEAM / "read_environ.py").read_text())
    proc = subprocess.run(
        [sys.executable, "-c", "from autotts.cli import main; main()", "eval", "--controller",
         str(bad), "--store", str(store), "--draws", "2", "--sandbox"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: sandbox: forbidden")
    assert len(proc.stderr.strip().splitlines()) == 1


# ---- static admission ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ctl.builtin_names())
def test_builtins_are_admitted(name):
    path = ctl.resolve(name)
    assert admit(path.read_text(), str(path)) is None


GOOD = '''
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class Stats:
    n: int = 0


class Base:
    def votes(self, ep):
        return ep.read_new_many(self.n).tolist()


class Good(Base):
    NAME = "good"

    @staticmethod
    def schedule(beta: float) -> dict:
        return {"n": 1 + int(round(7 * beta))}

    def __init__(self, n: int = 4):
        self.n = n
        self.stats = Stats()

    def run(self, ep):
        counts: Counter = Counter()
        arr = np.zeros(3)
        arr[0] += 1
        self.stats.n += 1
        for a, b in zip(range(2), range(2)):
            counts[a] += b
        for x in super().votes(ep):
            counts[x] += 1
        p = stats.norm.cdf(0.0) + math.sqrt(4)
        label = "{} {}".format(p, len(counts))
        return max(counts, key=counts.get) if label else -1
'''


def test_admission_accepts_ordinary_controller_code(store, parent):
    assert admit(GOOD, "good.py") is None
    ev = evaluate_sandboxed(GOOD, [store], [0.0, 1.0], EvalProtocol(draws=2), limits=FAST)
    assert [r["config"] for r in ev.rows] == [{"n": 1}, {"n": 8}]


@pytest.mark.parametrize(
    ("snippet", "kind"),
    [
        ("def f(:\n", "syntax"),
        ("import os\n", "forbidden"),
        ("import scipy\n", "forbidden"),
        ("from scipy import optimize\n", "forbidden"),
        ("from numpy import load\n", "forbidden"),
        ("from numpy import *\n", "forbidden"),
        ("from . import x\n", "forbidden"),
        ("x = eval('1')\n", "forbidden"),
        ("x = compile('1', 'f', 'eval')\n", "forbidden"),
        ("x = vars()\n", "forbidden"),
        ("g = getattr\n", "forbidden"),
        ("x = getattr(1, 'real' + '')\n", "forbidden"),
        ("x = type(1)\n", "forbidden"),
        ("_x = 1\n", "forbidden"),
        ("x = (1).__class__\n", "forbidden"),
        ("import numpy as np\nx = np.ctypeslib\n", "forbidden"),
        ("import numpy as np\nx = np.zeros(2).ctypes\n", "forbidden"),
        ("x = 1\n", "interface"),
    ],
)
def test_admission_verdicts(snippet, kind):
    v = admit(snippet, "c.py")
    assert v is not None and v.kind == kind, v


def test_interface_checks():
    base = GOOD.replace("@staticmethod\n    ", "")
    assert admit(base, "c.py").kind == "interface"
    assert admit(GOOD.replace('NAME = "good"', "NAME = 3"), "c.py").kind == "interface"
    assert admit(GOOD + GOOD.replace("class Good", "class Other"), "c.py").kind == "interface"


def test_allowed_modules_reach_nothing_dangerous():
    """Crawl attributes and container items from every allowed module through the run-time
    guards: no other module, no builtin such as open or eval, no function of os / sys / io /
    subprocess / ctypes / importlib, no module namespace comes out."""
    for m in ALLOWED_IMPORTS:
        __import__(m)
    guards.deny_objects()
    bad_roots = {"os", "sys", "subprocess", "socket", "ctypes", "_ctypes", "importlib", "io",
                 "_io", "posix", "pickle", "shutil", "pathlib", "threading", "_thread", "gc",
                 "inspect", "signal", "mmap", "tempfile", "marshal", "runpy", "linecache"}
    roots = [sys.modules[m] for m in ALLOWED_IMPORTS]
    roots += [np.random.default_rng(0), np.zeros(3), np.float64(1.0),
              sys.modules["scipy.stats"].norm(0, 1)]
    seen: set[int] = set()
    frontier = [(r, getattr(r, "__name__", type(r).__name__)) for r in roots]
    problems = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # typing.io / typing.re are deprecated aliases
        for _ in range(3):
            nxt = []
            for obj, path in frontier:
                items = []
                for n in dir(obj):
                    if not n.startswith("_"):
                        items.append(("." + n, lambda o=obj, n=n: guards._guarded_getattr(o, n)))
                if isinstance(obj, dict):
                    for k in list(obj)[:200]:
                        items.append((f"[{k!r}]", lambda o=obj, k=k: guards._guarded_getitem(o, k)))
                elif isinstance(obj, list | tuple):
                    for i in range(min(len(obj), 200)):
                        items.append((f"[{i}]", lambda o=obj, i=i: guards._guarded_getitem(o, i)))
                for suffix, get in items:
                    try:
                        v = get()
                    except BaseException:
                        continue
                    finally:
                        guards.STATE.violation = None
                    if id(v) in seen:
                        continue
                    seen.add(id(v))
                    p = path + suffix
                    if isinstance(v, types.ModuleType):
                        if v.__name__ not in ALLOWED_MODULE_VALUES:
                            problems.append(p)
                        nxt.append((v, p))
                        continue
                    mod = getattr(v, "__module__", None)
                    if isinstance(v, types.BuiltinFunctionType | types.FunctionType) and (
                        isinstance(mod, str) and mod.split(".")[0] in bad_roots | {"builtins"}
                    ):
                        problems.append(p)
                    if isinstance(v, type) and issubclass(v, type):  # a metaclass: a class factory
                        problems.append(p)
                    if isinstance(v, dict) and any(v is vars(m) for m in list(sys.modules.values())
                                                   if hasattr(m, "__dict__")):
                        problems.append(p)
                    if isinstance(v, type | dict | list | tuple) or callable(v):
                        nxt.append((v, p))
            frontier = nxt[:20000]
    guards.STATE.violation = None
    assert problems == []
    assert len(seen) > 5000


# ---- measured monotonicity -------------------------------------------------------------------


def _row(store, beta, tokens, se):
    return {"store": store, "beta": beta, "tokens": tokens, "tokens_se": se}


def test_monotonicity_rule():
    ok = [_row("s", 0.0, 100, 5), _row("s", 0.5, 95, 5), _row("s", 1.0, 300, 5)]
    assert monotonicity(ok) is None  # a dip within 2 combined SE is noise
    slow = [_row("s", b / 4, 100 - 10 * b, 3) for b in range(5)]
    v = monotonicity(slow)  # each step is within noise, the whole decline is not
    assert v is not None and v.kind == "non_monotone" and v.context["store"] == "s"
    assert (v.context["beta_from"], v.context["beta"]) == (0.0, 1.0)
    bad = [_row("s", 1.0, 50, 0.0), _row("s", 0.0, 60, 0.0), _row("t", 0.0, 1, 0)]
    assert monotonicity(bad).context["beta"] == 1.0
    assert monotonicity([_row("s", None, 1, 0), _row("s", None, 5, 0)]) is None


# ---- plumbing --------------------------------------------------------------------------------


def test_wall_clock_limit_kills_the_group(parent, store):
    source = (REDTEAM / "infinite_loop.py").read_text()
    t0 = time.monotonic()
    with pytest.raises(SandboxError) as info:
        evaluate_sandboxed(source, [store], [0.5], EvalProtocol(draws=2),
                           limits=_limits("episode_seconds=60,wall_seconds=3"))
    assert info.value.verdict.kind == "timeout" and "wall-clock" in info.value.verdict.message
    assert time.monotonic() - t0 < 20


def test_bad_overrides_are_config_errors(store, parent):
    from autotts.errors import ConfigError

    with pytest.raises(ConfigError, match="no knob 'bogus'"):
        evaluate_sandboxed("sc", [store], None, EvalProtocol(draws=2), overrides={"bogus": 1},
                           limits=FAST)
    with pytest.raises(ConfigError):
        evaluate_sandboxed("sc", [store], None, EvalProtocol(draws=2), overrides={"n": object()},
                           limits=FAST)


def test_frame_reader_rejects_malformed_and_oversized_output():
    frame = wire.pack_frame({"type": "unit"}, [np.arange(6, dtype="<i4").reshape(2, 3)])
    reader = wire.FrameReader(1 << 20)
    got = []
    for i in range(len(frame)):  # byte by byte: frames are reassembled
        got += reader.feed(frame[i : i + 1])
    assert len(got) == 1 and got[0][1][0].tolist() == [[0, 1, 2], [3, 4, 5]]
    for junk in (b"\xff" * 16, wire._LEN.pack(5) + b"[1,2]",
                 wire._LEN.pack(40) + b'{"arrays": [["|O", [1]]], "type": "x"}    '):
        with pytest.raises(wire.FrameError):
            wire.FrameReader(1 << 20).feed(junk)
    with pytest.raises(wire.FrameError):
        wire.FrameReader(100).feed(frame + frame)


_SEAL_CHECK = r"""
import ctypes, errno, json, os, threading
from autotts.sandbox import lockdown
lockdown.prepare_seal({"isolation_disable": ["seccomp"]})  # stands for no libseccomp
skipped = lockdown._SEALED is None
lockdown.prepare_seal({})
prepared = lockdown._SEALED is not None
ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS, as lockdown() sets it
lockdown.seal()
got = {"prepared": prepared, "skipped": skipped}
def attempt(name, f):
    try:
        f()
        got[name] = "done"
    except OSError as e:
        got[name] = errno.errorcode.get(e.errno, str(e.errno))
    except RuntimeError:
        got[name] = "refused"
def fork():
    if os.fork() == 0:
        os._exit(0)
attempt("fork", fork)
attempt("thread", lambda: threading.Thread(target=lambda: None).start())
libc = ctypes.CDLL(None, use_errno=True)
def clone3():
    if libc.syscall(435, None, 0) == -1:
        raise OSError(ctypes.get_errno(), "clone3")
attempt("clone3", clone3)
print(json.dumps(got))
"""


def test_prepared_seal_refuses_new_processes():
    """seal() with the filter the zygote compiled once (prepare_seal) refuses what the filter
    libseccomp builds and loads in each batch refused: fork, threads, clone3. With seccomp
    turned off (a platform without libseccomp) nothing is prepared: seal() does as before."""
    from ctypes.util import find_library

    if find_library("seccomp") is None:
        pytest.skip("no libseccomp here: seal() is RLIMIT_NPROC alone")
    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", _SEAL_CHECK], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": root}, timeout=60)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got == {"prepared": True, "skipped": True, "fork": "EPERM", "thread": "refused",
                   "clone3": "EPERM"}


def test_every_metaclass_is_denied_after_a_gc_freeze():
    """deny_objects() finds metaclasses from `type` itself: gc.get_objects() misses what
    gc.freeze() moved to the permanent generation (eval's start-up freezes its objects), and a
    frozen ABCMeta was then reachable from typing (a class factory for candidate code)."""
    import abc
    import gc
    import typing

    from autotts.sandbox import guards

    gc.freeze()
    try:
        guards.deny_objects()
    finally:
        gc.unfreeze()
    for meta in (abc.ABCMeta, typing.NamedTupleMeta, type(typing.Protocol)):
        assert id(meta) in guards._DENIED_IDS, meta
