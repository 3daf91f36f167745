"""Red team, session 8: the speed changes of this session, attacked as a candidate (mostly with
code execution in its own batch process, `_unrestricted=True`): the wire's nesting bound by
bracket passes and the child's one-read frames, the supervisor's immediate reply writes, the
seal's seccomp filter precompiled to BPF by the zygote, the engine's fast paths (which the
judge runs on every untrusted action), and a merged held-out evaluation (reverted).

Found and fixed:
- The nesting bound checked before a child's header is parsed counted brackets inside JSON
  strings too, a "]" there as a closing one, so lists that each hold the string "]" counted 1
  or 2 however deep they went (old array pass and new bracket passes alike), and json.loads
  also took UTF-16/32 bytes, where a bound read from bytes means nothing. An admitted candidate
  (no code execution: `ep.trace` with such a list) got a 700-deep trace event past the bound,
  and the judge's recursive copy of it raised RecursionError out of the trusted side (a
  traceback, no verdict). The bound now follows the parser: brackets outside strings, UTF-8.
- The judge refused a scalar argument past int64 as a protocol error ('crash' for the whole
  run) where in-process the engine refuses it with an InvalidAction the candidate may catch.
- An empty numpy mask travelled as a JSON [] (no branches: accepted, counted as an action)
  where the engine refuses a mask that is not one entry per opened branch.
- A batch whose precompiled seal failed to load went on to run candidate code unsealed (as
  seal() with libseccomp did); where the zygote's filter is loaded it now ends the batch.

- Discovery's held-out step evaluated the selected candidate over all held-out stores at once
  (a change of this session, reverted): one batch then held the same question of every
  held-out store, and a store's figures could depend on the other stores' episodes.

Held: the engine's fast paths against main's engine (refusal messages, counters, journal,
history; thousands of hostile calls, no difference), the precompiled program against the filter
libseccomp builds, replies queued in order behind a full pipe, and (the lead's last attack) a
sealed batch with code execution trying a child process, a thread and a seccomp() call of its own."""

from __future__ import annotations

import json
import random

import pytest

from autotts.sandbox import SandboxError, evaluate_sandboxed
from autotts.sandbox.wire import MAX_DEPTH, FrameError, _nesting, loads_strict
from autotts.units import EvalProtocol
from tests.test_sandbox import FAST, parent, synthetic_store  # noqa: F401 (fixture)

# ---- the nesting bound: brackets inside strings, escapes, encodings -------------------------


def _depth(o: object) -> int:
    """The nesting depth of a parsed JSON value (what the C parser recursed)."""
    if isinstance(o, list):
        return 1 + max((_depth(x) for x in o), default=0)
    if isinstance(o, dict):
        return 1 + max((_depth(x) for x in o.values()), default=0)
    return 0


def _disguised(depth: int, inner: str = "]") -> bytes:
    """Lists `depth` deep, each holding a string whose brackets cancel its own count."""
    return ('{"a":' + f'["{inner}",' * depth + "0" + ',"["]' * depth + "}").encode()


_NASTY = ["]", "[", "}", "{", "]]]]", '"', '\\"]', "\\", "\\\\", "\\\\]", "a]b", '"]"', "\u5d5d",
          "]\u00e9", ""]


def _random_json(rng: random.Random, depth: int) -> object:
    if depth == 0 or rng.random() < 0.15:
        return rng.choice([0, -1, 2.5, True, None, rng.choice(_NASTY) * rng.randint(0, 4)])
    if rng.random() < 0.5:
        return [_random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(_NASTY) + str(k): _random_json(rng, depth - 1)
            for k in range(rng.randint(0, 3))}


def test_brackets_inside_strings_do_not_lower_the_nesting_bound():
    """The bound is the parser's depth exactly, whatever strings hold (brackets, escaped quotes,
    backslashes, non-ASCII), in compact and spaced JSON, with and without ensure_ascii."""
    rng = random.Random(8)
    for n in range(3000):
        obj = _random_json(rng, rng.randint(0, 12))
        raw = json.dumps(obj, ensure_ascii=n % 2 == 0,
                         separators=(",", ":") if n % 3 else None).encode()
        assert _nesting(raw) == _depth(obj), raw[:200]


@pytest.mark.parametrize("inner", ["]", "}", "]]", '\\"]', "\\\\]"])
def test_a_header_disguised_as_shallow_is_refused(inner):
    for depth in (MAX_DEPTH + 1, 300, 20000):
        raw = _disguised(depth, inner)
        if depth < 400:
            assert _depth(json.loads(raw)) == depth + 1
        with pytest.raises(FrameError, match="nested too deeply"):
            loads_strict(raw)
    loads_strict(_disguised(MAX_DEPTH - 1, inner))  # within the bound: parsed


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-16", "utf-32-le", "utf-32"])
def test_a_header_in_another_encoding_is_refused(encoding):
    """json.loads takes UTF-16 and UTF-32 bytes, where a "]" byte is half a character and a
    string of U+5D5D cancels any depth: only UTF-8 is read."""
    deep = '{"a":"' + "\u5d5d" * 400 + '","b":' + "[" * 300 + "]" * 300 + "}"
    assert json.loads(deep.encode(encoding))  # what json.loads alone would do
    for text in (deep, '{"t":"round"}'):
        with pytest.raises(FrameError):
            loads_strict(text.encode(encoding))


@pytest.mark.usefixtures("parent")
def test_an_admitted_candidate_cannot_raise_out_of_the_judge_with_a_deep_trace():
    """No code execution needed: a trace event 700 lists deep, each list holding "]" and "[",
    passed the old bound, and the judge's recursive copy of the event raised RecursionError in
    the trusted process. Now the frame is refused before parsing: a crash verdict."""
    source = '''
class Deep:
    NAME = "deep"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        x = 0
        for _ in range(700):
            x = ["]", x, "["]
        ep.trace("deep", x=x)
        ep.read_new()
        return ep.latest_answer(0)
'''
    with pytest.raises(SandboxError) as e:
        evaluate_sandboxed(source, [synthetic_store()], [0.5], EvalProtocol(draws=2), traces=True,
                           limits=FAST, filename="deep.py")
    assert e.value.verdict.kind == "crash" and "nested too deeply" in e.value.verdict.message


# ---- huge integers: refused as in-process, never a protocol error ---------------------------

_HUGE = '''
class Huge:
    NAME = "huge"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        ep.branch()
        refused = 0
        for call in (lambda: ep.advance(2**64), lambda: ep.extend(-2**63 - 1),
                     lambda: ep.probe(10**30), lambda: ep.prune(2**63),
                     lambda: ep.read(-(10**40)), lambda: ep.branch_many(2**64),
                     lambda: ep.read_new_many(2**70), lambda: ep.advance_many([2**64]),
                     lambda: ep.prune_many([0, 2**63])):
            try:
                call()
            except Exception:
                refused += 1
        if refused != 9:
            return None
        return ep.read_new()
'''


@pytest.mark.usefixtures("parent")
def test_an_index_past_int64_is_the_engines_refusal_as_in_process(tmp_path):
    """The judge took a scalar past int64 for a forged frame and ended the run ('crash'), where
    in-process the engine refuses it (InvalidAction, which the candidate may catch): an admitted
    candidate's score depended on where it ran."""
    from autotts.evaluate import evaluate

    path = tmp_path / "huge.py"
    path.write_text(_HUGE)
    store, proto = synthetic_store(), EvalProtocol(draws=2)
    want = evaluate(str(path), [store], [0.5], proto, on_error="record")
    got = evaluate_sandboxed(_HUGE, [store], [0.5], proto, on_error="record", limits=FAST,
                             filename="huge.py")
    assert want.rows[0]["accuracy"] > 0  # every call was refused, and caught
    keys = ("accuracy", "tokens", "errors")
    assert [r[k] for r in got.rows for k in keys] == [r[k] for r in want.rows for k in keys]


# ---- the merged held-out evaluation: one batch holds every held-out store -------------------

# A candidate that remembers, in its class, the episodes its process has played: within one
# batch that is every held-out store's draw of the questions (docs/sandbox.md: episodes of one
# batch can share state). Here it stops answering past one store's worth of episodes; a
# candidate after a gain would carry what the first stores' episodes of question q showed (how
# hard the pools found it, where the finals came) into the next store's episode of q: the
# published held-out stores (aime25 of four model sizes) are the same 30 questions.
_REMEMBERS = '''
class Remembers:
    NAME = "remembers"
    seen = 0

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        Remembers.seen += 1
        if Remembers.seen > 5:  # more episodes in this process than one store has questions
            return None
        return ep.read_new()
'''


def test_heldout_figures_of_a_store_do_not_depend_on_the_other_stores(tmp_path, monkeypatch):
    """The held-out step evaluates the selected candidate one store at a time (a batch then never
    holds the same question twice), so each store's rows are those of its own evaluation."""
    from discover_helpers import config, make_env

    from autotts.discover.loop import Discovery

    monkeypatch.setenv("AUTOTTS_CACHE_HOME", str(tmp_path / "cache"))
    env_file = make_env(tmp_path / "env")
    d = Discovery(config(env_file, tmp_path / "run", None, workers=1))
    path = tmp_path / "remembers.py"
    path.write_text(_REMEMBERS)
    calls = []
    evaluate = d.backend.evaluate

    def spy(source, stores, *args, **kw):
        ev = evaluate(source, stores, *args, **kw)
        if kw.get("stage") == "heldout" and source == str(path):
            calls.append(([st.name for st in stores], ev.rows))
        return ev

    monkeypatch.setattr(d.backend, "evaluate", spy)
    d.history = [{"eligible": True, "objective": 1.0, "id": "1", "name": "remembers",
                  "path": str(path), "round": 1, "slot": 1}]
    d.final_step([])
    assert [names for names, _ in calls] == [["synth/heldout3"], ["synth/heldout4"]]
    held = json.loads((tmp_path / "run" / "final" / "heldout.json").read_text())
    mine = [r for r in held["rows"] if r["label"] == "r1:remembers"]
    assert [r["accuracy"] for r in mine] == [r["accuracy"] for _, rows in calls for r in rows]
    assert all(r["accuracy"] > 0 for r in mine)  # 5 questions each: it never stopped answering


# ---- the seal's filter, precompiled to BPF by the zygote --------------------------------------

_SEAL_PROBE = r"""
import ctypes, errno, json, os, sys, threading
from autotts.sandbox import lockdown
libc = ctypes.CDLL(None, use_errno=True)
mode = sys.argv[1]
if mode != "built":
    lockdown.prepare_seal({})
    assert lockdown._SEALED is not None
if mode == "failing":  # a program the kernel refuses, after the zygote's own filter loaded
    lockdown._SEALED[2].len = 0
    lockdown._ZYGOTE_FILTERED = True
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS, as lockdown() sets it
try:
    lockdown.seal()
except OSError as e:
    print(json.dumps({"seal": errno.errorcode.get(e.errno, str(e.errno))}))
    sys.exit(0)
got = {"seal": "loaded"}

def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if type(a) is int else a for a in args])
    if r == 0 and nr in (56, 57, 58):
        os._exit(0)  # the child of a fork that went through
    return "done" if r != -1 else errno.errorcode.get(ctypes.get_errno(), "?")

class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

allow = (ctypes.c_uint64 * 1)(0x7FFF000000000006)  # BPF_RET|BPF_K SECCOMP_RET_ALLOW
prog = Prog(1, ctypes.addressof(allow))
got.update(fork=call(57), vfork=call(58), clone=call(56, 17, 0, 0, 0, 0), clone3=call(435, 0, 0),
           seccomp=call(317, 1, 0, ctypes.byref(prog)), getpid=call(39))
try:
    threading.Thread(target=lambda: None).start()
    got["thread"] = "done"
except RuntimeError:
    got["thread"] = "refused"
print(json.dumps(got))
"""


def _seal_probe(mode: str) -> dict:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run([sys.executable, "-c", _SEAL_PROBE, mode], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": root}, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_the_precompiled_seal_is_the_filter_libseccomp_builds_and_fails_closed():
    """The program the zygote compiled once refuses what the filter libseccomp builds in the
    batch refuses (vfork, clone with fork's flags, another seccomp filter: beyond what
    tests/test_sandbox.py checks), and nothing more. A seccomp() call that fails where the
    zygote's own filter is loaded (which lets a process fork) ends the batch instead of letting
    candidate code run unsealed (it used to go on, as seal() with libseccomp did)."""
    from ctypes.util import find_library

    if find_library("seccomp") is None:
        pytest.skip("no libseccomp here")
    built, prepared = _seal_probe("built"), _seal_probe("prepared")
    assert prepared == built == {"seal": "loaded", "fork": "EPERM", "vfork": "EPERM",
                                 "clone": "EPERM", "clone3": "EPERM", "seccomp": "EPERM",
                                 "getpid": "done", "thread": "refused"}
    assert _seal_probe("failing") == {"seal": "EINVAL"}


# ---- replies written at once: a child that does not read its stdin ---------------------------


def test_replies_to_a_child_that_never_reads_queue_in_order_and_end_at_the_cap():
    """_send writes a reply to the child's stdin at once and registers with the selector only
    when the pipe is full. A child that never reads: the judge never blocks, what does not fit
    waits in order behind what was written, the selector learns of it once, and past
    MAX_PENDING unread bytes the run ends with a protocol error. Once the child reads, the rest
    follows in order (frames split at whatever point the pipe filled)."""
    import io
    import os
    import selectors
    from types import SimpleNamespace

    from autotts.sandbox import supervisor as sup
    from autotts.sandbox.judge import ProtocolError
    from autotts.sandbox.wire import read_frame

    r, w = os.pipe()
    os.set_blocking(w, False)
    stdin = os.fdopen(w, "wb", buffering=0)
    c = SimpleNamespace(proc=SimpleNamespace(stdin=stdin), outbuf=bytearray(),
                        waiting_to_write=False, last_frame=0)
    sel = selectors.DefaultSelector()
    sent = 0
    try:
        with pytest.raises(ProtocolError, match="left unread"):
            for k in range(100_000):
                sup._send(c, sel, {"t": "reply", "k": k, "pad": "x" * 3001})
                sent = k + 1
                if c.outbuf:  # the pipe is full: registered, once
                    assert c.waiting_to_write and len(sel.get_map()) == 1
        assert sent > 10 and len(c.outbuf) > sup.MAX_PENDING - 4000
        # The child reads after all: what was written, then what waited, frame by frame.
        got = []
        reader = io.BufferedReader(io.FileIO(r, closefd=False))
        while len(got) < sent:
            while c.outbuf and sel.select(timeout=0):
                sup._write_stdin(c, sel)
            got.append(read_frame(reader)[0]["k"])
        assert got == list(range(sent))
        assert not c.outbuf and not c.waiting_to_write and not sel.get_map()
    finally:
        sel.close()
        stdin.close()
        os.close(r)



# ---- hostile arguments through the whole pipeline: refusals, counters and reveals as in-process --

_FUZZ = '''
import random
import numpy as np


def _pick(rng, ep):
    n = ep.num_opened
    ints = [0, 1, -1, n, n - 1, ep.pool_size, 2**31, 2**63, -2**63 - 1, 2**64, 10**30]
    live = [i for i in range(n) if ep.running[i]] if n else []
    op = rng.choice(["branch", "branch_many", "extend", "probe", "advance", "advance_many",
                     "read", "read_new", "read_new_many", "prune", "prune_many"])
    if op == "branch":
        return op, [rng.choice([False, True])]
    if op == "branch_many":
        return op, [rng.choice([0, 1, 3, -1, 2**64, np.int64(2), np.uint64(2**63)]), rng.choice([False, True])]
    if op in ("extend", "probe", "advance", "read", "prune"):
        i = rng.choice(live) if live and rng.random() < 0.7 else rng.choice(ints)
        if rng.random() < 0.1:
            i = rng.choice([np.int32(0), np.uint64(2**64 - 1), np.int64(-1), np.array(0)])
        return op, [i]
    if op == "read_new":
        return op, []
    if op == "read_new_many":
        return op, [rng.choice([0, 1, 2, -1, 2**64, ep.pool_size - n, ep.pool_size - n + 1])]
    k = rng.randrange(8)
    if k == 0:
        which = live
    elif k == 1:
        which = np.array(live, dtype=rng.choice([np.int32, np.int64, np.uint64, np.uint8, np.int8]))
    elif k == 2:
        which = np.array([i in live for i in range(rng.choice([n, n, n + 1, max(0, n - 1), 0]))], dtype=bool)
    elif k == 3:
        which = [i in live for i in range(rng.choice([n, n + 1, max(0, n - 1)]))]
    elif k == 4:
        which = live + live[:1]
    elif k == 5:
        which = [rng.choice(ints) for _ in range(rng.randint(1, 3))]
    elif k == 6:
        which = rng.choice([[], np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), [1.0], [[0]], np.array([[0]])])
    else:
        which = rng.choice(live) if live else 0
    if op == "prune_many":
        return op, [which]
    return op, [which, rng.choice([1, 1, 2, 5, 100, 2**64, 0, -1, True, 1.0, 2.5, np.int64(3)])]


class Fuzz:
    NAME = "fuzz"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        rng = random.Random(ep.pool_size)
        fixed = [("branch_many", [3, False]), ("advance_many", [np.zeros(0, dtype=bool)]),
                 ("prune_many", [np.zeros(0, dtype=bool)]), ("advance_many", [np.ones(2, bool)])]
        for step in range(84):
            op, args = fixed[step] if step < len(fixed) else _pick(rng, ep)
            try:
                r = getattr(ep, op)(*args)
                out = ["ok", np.asarray(r).tolist() if r is not None else None]
            except Exception as e:
                out = ["refused", type(e).__name__, str(e)]
            ep.trace("step", op=op, out=out, tokens=ep.tokens, gen=ep.generated_tokens,
                     probes=ep.num_probes, actions=ep.num_actions, opened=ep.num_opened,
                     latest=ep.latest.tolist(), depths=ep.depths.tolist(),
                     finished=ep.finished.tolist(), pruned=ep.pruned.tolist(),
                     running=ep.running.tolist(), final=ep.final_answers.tolist(),
                     hist=[[ep.history(i).tolist(), ep.history_depths(i).tolist()] for i in range(ep.num_opened)])
        fa = [a for a in ep.final_answers.tolist() if a >= 0]
        return max(set(fa), key=fa.count) if fa else None
'''


@pytest.mark.usefixtures("parent")
def test_hostile_arguments_are_refused_and_counted_as_in_process(tmp_path):
    """Through the client handle, the wire and the judge to the engine's fast paths: huge,
    negative and numpy-typed indices, duplicates, masks and bool lists of odd length (empty too),
    unsigned and narrow index arrays, odd `times`. Every step's outcome (the refusal message),
    counters, mirror state and history, as the candidate sees them, match in-process. Found: an
    empty numpy mask travelled as a JSON [] (no branches: accepted and counted as an action)
    where the engine refuses a mask with one entry per opened branch; masks now travel raw
    whatever their length."""
    from autotts.evaluate import evaluate

    path = tmp_path / "fuzz.py"
    path.write_text(_FUZZ)
    store, proto = synthetic_store(4, 20, 0), EvalProtocol(draws=3)
    want = evaluate(str(path), [store], [0.5], proto, traces=True, on_error="record")
    got = evaluate_sandboxed(_FUZZ, [store], [0.5], proto, traces=True, on_error="record",
                             limits=FAST, filename="fuzz.py", _unrestricted=True)
    steps = [e for t in want.traces for e in t["events"] if e.get("ev") == "step"]
    refused = {e["out"][2] for e in steps if e["out"][0] == "refused"}
    assert any("mask with one entry per opened branch" in m for m in refused)
    assert len(refused) > 20 and sum(e["out"][0] == "ok" for e in steps) > 200
    assert got.traces == want.traces
    assert got.rows == want.rows and got.errors == want.errors


# ---- the lead's last attack: a batch that wants a second life ----------------------------------

# With code execution, every batch tries what would let it outlive itself or undo its seal: a
# child process, a thread, and a seccomp filter of its own (a filter can only narrow, but the
# seccomp() call itself being refused shows the seal is the one libseccomp would build). It
# records each outcome in a trace event and answers as read_new would.
_SECOND_LIFE = '''
import ctypes, os, threading


class SecondLife:
    NAME = "second_life"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        out = {}
        try:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            out["fork"] = "ok"
        except OSError as e:
            out["fork"] = e.errno
        try:
            t = threading.Thread(target=lambda: None)
            t.start()
            t.join()
            out["thread"] = "ok"
        except RuntimeError:
            out["thread"] = "refused"
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.syscall(317, 0, 0, 0)  # seccomp(SECCOMP_SET_MODE_STRICT) on x86_64
        out["seccomp"] = "ok" if rc == 0 else ctypes.get_errno()
        ep.trace("tried", **out)
        return ep.read_new()
'''


@pytest.mark.usefixtures("parent")
def test_a_sealed_batch_can_make_no_process_thread_or_filter(tmp_path):
    import errno
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("the candidate calls seccomp by its x86_64 number")
    store, proto = synthetic_store(3, 8, 0), EvalProtocol(draws=2)
    got = evaluate_sandboxed(_SECOND_LIFE, [store], [0.5], proto, traces=True,
                             on_error="record", limits=FAST, filename="second_life.py",
                             _unrestricted=True)
    if not got.isolation.get("seccomp"):
        pytest.skip("no seccomp filter on this platform (the weak-platform tests cover it)")
    tried = [e for t in got.traces for e in t["events"] if e.get("ev") == "tried"]
    assert len(tried) == 3 * 2  # every episode of every batch tried
    for e in tried:
        assert e["fork"] == errno.EPERM and e["thread"] == "refused"
        assert e["seccomp"] == errno.EPERM
    assert not got.errors
