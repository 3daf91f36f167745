"""The sandbox boundary (issue 14): the candidate's process holds nothing it was not shown and
keeps no account the parent trusts.

Candidates here run with `_unrestricted=True`: the real builtins and no RestrictedPython, as if
they had already broken every Python-level guard. Whatever they do, the result is a refusal or a
score achievable with what the judge charged them. The judge's frame handling is fuzzed with
hostile frames: it never raises anything but a typed failure."""

from __future__ import annotations

import contextlib
import json
import random
import struct
import threading
import time

import numpy as np
import pytest

from autotts.errors import ConfigError
from autotts.evaluate import EvalProtocol, evaluate
from autotts.sandbox import SandboxError, SandboxLimits, evaluate_sandboxed, spawned_pids
from autotts.sandbox.judge import OutputLimit, ProtocolError
from autotts.sandbox.supervisor import Failed, _Task
from autotts.sandbox.wire import OP_JSON, FrameError, FrameReader, escape, pack_frame
from tests.test_sandbox import FAST, parent, synthetic_store  # noqa: F401 (fixture)

STORE = synthetic_store()
PROTO = EvalProtocol(draws=4)


def _run(source: str, **kw):
    kw.setdefault("limits", FAST)
    return evaluate_sandboxed(source, [STORE], [0.5], PROTO, filename="hostile.py",
                              _unrestricted=True, **kw)


def _controller(body: str, extra: str = "") -> str:
    return f'''
import gc, os, sys
import numpy as np
{extra}

class Hostile:
    NAME = "hostile"

    @staticmethod
    def schedule(beta):
        return {{}}

    def run(self, ep):
{body}
'''


# ---- a full memory read finds nothing unrevealed ---------------------------------------------


@pytest.mark.usefixtures("parent")
def test_memory_scan_at_zero_tokens_scores_nothing():
    """Reads every object of its process, at 0 tokens: answer class ids are numbered per episode
    in reveal order, so nothing revealed means no id names a class: accuracy 0, not the pool's
    majority."""
    body = '''        best = None
        for o in gc.get_objects():
            if isinstance(o, np.ndarray) and o.dtype.kind in "iu" and 0 < o.size < 10**6:
                vals, counts = np.unique(o, return_counts=True)
                if len(vals):
                    best = int(vals[np.argmax(counts)])
        return 0 if best is None else best % 7
'''
    ev = _run(_controller(body))
    row = ev.rows[0]
    assert row["tokens"] == 0 and row["accuracy"] == 0.0 and row["errors"] == 0


@pytest.mark.usefixtures("parent")
def test_rewriting_the_client_counters_changes_nothing():
    """Reads the whole pool honestly, then rewrites every counter the client holds: the judge's
    own accounting is what is reported."""
    body = '''        finals = ep.read_new_many(ep.pool_size)
        for name in ("_gen", "_probes", "_actions", "_opened"):
            object.__setattr__(ep, name, 0)
        vals, counts = np.unique(finals, return_counts=True)
        return int(vals[np.argmax(counts)])
'''
    ev = _run(_controller(body))
    honest = evaluate("sc", [STORE], None, PROTO, overrides={"n": 20})
    assert ev.rows[0]["tokens"] == honest.rows[0]["tokens"] > 0
    assert ev.rows[0]["accuracy"] == honest.rows[0]["accuracy"]


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("forged", ["(14, 1, 1, None, None, None)",  # a row: OP_ANSWER, class 1
                                    "(0, 0, 0, None, ['answer', [1]], None)"])  # as JSON
def test_forged_answer_messages_gain_nothing(forged):
    """A forged answer through the client's own request function ends the episode on the judge's
    side at what it cost so far (nothing): an answer naming no revealed class scores nothing."""
    body = f'''        ep._request({forged})
        return 1
'''
    row = _run(_controller(body)).rows[0]
    assert row["tokens"] == 0 and row["accuracy"] == 0.0


def _framed(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize("frame", [
    _framed(b"\xff" * 64),
    _framed(b'{"t":"done","stdout":"","dropped":Infinity}'),
    _framed(b'{"t":"done","stdout":"","dropped":1e999}'),
    _framed(b'[' * 5000 + b']' * 5000),
    _framed(b'{"t":"round","m":[[0,"advance",[0]],[0,"advance",[0]]]}'),
    # the same two messages for one slot, as rows
    pack_frame({"t": "round", "m": [], "e": []},
               [np.array([[0, 7, 0, 0, 0], [0, 7, 0, 0, 0]], np.int64), np.zeros(0, np.int32),
                np.zeros(0, bool)]),
    _framed(b'{"t":"verdict","verdict":{"kind":"timeout","message":"\\u001b[2Jfake"}}'),
])
@pytest.mark.usefixtures("parent")
def test_forged_frames_on_the_result_pipe(frame):
    """Writes a forged frame straight to the pipe it reports on (found by trying every
    descriptor): a typed verdict, never an exception of the parent."""
    body = f'''        frame = {frame!r}
        for fd in range(3, 64):
            try:
                if os.fstat(fd).st_mode & 0o170000 == 0o010000:  # a pipe
                    os.write(fd, frame)
            except OSError:
                pass
        return ep.read_new()
'''
    with pytest.raises(SandboxError) as info:
        _run(_controller(body))
    v = info.value.verdict
    assert v.kind in ("crash", "timeout", "exception", "invalid_action"), str(v)
    assert "\x1b" not in str(v)


@pytest.mark.usefixtures("parent")
def test_watchdog_state_is_the_judges():
    """Loops forever while scribbling over every writable mapping it can find (the attribution
    hint among them): the judge's clock still ends it."""
    body = '''        import mmap
        maps = [o for o in gc.get_objects() if isinstance(o, mmap.mmap)]
        while True:
            for m in maps:
                try:
                    m[:8] = b"\\0" * 8
                except Exception:
                    pass
'''
    t0 = time.monotonic()
    with pytest.raises(SandboxError) as info:
        _run(_controller(body), limits=SandboxLimits(**{**FAST.__dict__, "episode_seconds": 1}))
    assert info.value.verdict.kind == "timeout"
    assert time.monotonic() - t0 < 30


@pytest.mark.usefixtures("parent")
def test_huge_name_is_an_output_limit():
    source = _controller("        return ep.read_new()\n") + '\nHostile.NAME = "x" * 50_000_000\n'
    with pytest.raises(SandboxError) as info:
        _run(source)
    assert info.value.verdict.kind == "output_limit"
    assert len(info.value.verdict.message) < 500


@pytest.mark.usefixtures("parent")
def test_huge_knobs_are_an_output_limit():
    source = '''
class Hostile:
    NAME = "hostile"

    @staticmethod
    def schedule(beta):
        return {"n": [0] * 5_000_000}

    def __init__(self, n=1):
        self.n = n

    def run(self, ep):
        return ep.read_new()
'''
    with pytest.raises(SandboxError) as info:
        _run(source)
    assert info.value.verdict.kind == "output_limit"


@pytest.mark.usefixtures("parent")
def test_trace_amplification_is_an_output_limit():
    body = '''        for _ in range(50):
            ep.trace("x", data=[0] * 100_000)
            ep.read_new()
        return 0
'''
    limits = SandboxLimits(**{**FAST.__dict__, "max_trace_items": 1_000_000})
    with pytest.raises(SandboxError) as info:
        _run(_controller(body), traces=True, limits=limits)
    assert info.value.verdict.kind == "output_limit"


@pytest.mark.usefixtures("parent")
def test_signals_to_another_sandbox_fail():
    """While another evaluation's sandbox process runs, a hostile one tries to signal it (and
    every other process it can name)."""
    looping = '''
class Loop:
    NAME = "loop"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        while True:
            pass
'''
    before = set(spawned_pids())
    def run_victim() -> None:
        with pytest.raises(SandboxError):
            evaluate_sandboxed(looping, [STORE], [0.5], EvalProtocol(draws=1),
                               limits=SandboxLimits(**{**FAST.__dict__, "episode_seconds": 8}))

    victim = threading.Thread(target=run_victim)
    victim.start()
    deadline = time.monotonic() + 10
    pids: set[int] = set()
    while time.monotonic() < deadline and not pids:
        pids = set(spawned_pids()) - before
        time.sleep(0.05)
    assert pids
    time.sleep(1.5)  # the victim is locked down and looping
    body = f'''        reached = []
        for pid in {sorted(pids)!r} + list(range(1, 400)):
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                reached.append(pid)
            except OSError:
                pass
        raise ValueError(f"reached {{reached}}")
'''
    try:
        ev = _run(_controller(body), on_error="record")
    finally:
        victim.join()
    assert ev.errors and all("reached []" in e["message"] for e in ev.errors), ev.errors[0]


# ---- terminal escapes and paths never reach the console --------------------------------------


@pytest.mark.usefixtures("parent")
def test_messages_are_escaped():
    source = '''
class Loud:
    NAME = "loud"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        raise ValueError("\\x1b[2J\\x1b]0;pwned\\x07 gone")
'''
    with pytest.raises(SandboxError) as info:
        evaluate_sandboxed(source, [STORE], [0.5], PROTO, limits=FAST)
    text = str(info.value) + (info.value.verdict.traceback or "")
    assert "\x1b" not in text and "\x07" not in text and "\\x1b" in text


def test_escape():
    assert escape("a\x1b[31mb\x9b\x7fc\nd") == "a\\x1b[31mb\\x9b\\x7fc\nd"
    assert escape("x\ny", newlines=False) == "x\\ny"
    assert len(escape("z" * 10_000, 100)) == 100


@pytest.mark.usefixtures("parent")
def test_int_subclass_answer_is_a_non_answer():
    source = '''
class Sneaky:
    NAME = "sneaky"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        return Answer(ep.read_new())


class Answer(int):
    pass
'''
    ev = evaluate_sandboxed(source, [STORE], [0.5], PROTO, limits=FAST, on_error="record")
    assert {e["kind"] for e in ev.errors} == {"non_answer"}
    assert "int subclass" in ev.errors[0]["message"]


# ---- the judge's frame handling, fuzzed --------------------------------------------------------

ALLOWED = (Failed, ProtocolError, OutputLimit, FrameError, ConfigError)


def _busy_task() -> _Task:
    """A supervisor task past its boot, judging a unit of the toy store (no process)."""
    request = {"source": "", "filename": "f.py", "admit": True, "betas": [0.5], "overrides": {},
               "proto": {"draws": 2, "protocol": "shuffle", "pool": None, "seed": 0,
                         "probe_cost": 3, "budget": 400},
               "traces": True, "on_error": "record", "limits": FAST.__dict__,
               "allow_weak": True}
    from autotts.sandbox.judge import TraceBudget

    task = _Task(request, [STORE.replay()], [(0, 0, 0, 1), (0, 0, 1, 2)], FAST,
                 TraceBudget(10_000), None)
    task.on_frame({"t": "ready", "isolation": {}})
    task.on_frame({"t": "configs", "name": "x", "configs": [{}]})
    from autotts.sandbox import judge as judge_module

    # Slot k is question k here (the judge's order is otherwise secret and random): these tests
    # forge frames for known questions and compare them with the engine's episodes of those.
    secret, judge_module.secret_order = judge_module.secret_order, lambda n: list(range(n))
    try:
        task.next_batch()  # what the supervisor does once the knobs process is gone
    finally:
        judge_module.secret_order = secret
    judged = task.on_frame

    def on_frame(header, arrays=()):
        # The batch process adds its batch's token to each frame (the child's Scheduler does);
        # these tests forge everything else.
        if type(header) is dict and header.get("t") in ("round", "unit_done"):
            header = {"k": task.token, **header}
        return judged(header, arrays)

    task.on_frame = on_frame
    return task


def json_rows(messages: object, live: object = ()) -> np.ndarray:
    """A round's rows for messages that all travel as JSON (op OP_JSON): the form the client
    uses for what a row cannot carry, and the one the earlier sessions' forged rounds were
    written in (before rows). A message whose slot no int64 row can hold gets the first live
    slot's row, so that the message itself is judged (and refused as malformed)."""
    msgs = messages if type(messages) is list else []
    fallback = min(live, default=-1)
    slots = [m[0] if type(m) is list and m and type(m[0]) is int and -(2**63) <= m[0] < 2**63
             else fallback for m in msgs]
    return np.array([[s, OP_JSON, 0, 0, 0] for s in slots], dtype=np.int64).reshape(-1, 5)


def json_round(task: _Task, header: dict, arrays=()) -> dict:
    """`task.on_frame` for a round written as JSON messages only (header "m" in the form
    [slot, op, args(, events)], arrays [indices(, masks)] or whatever a test forges there): its
    rows are prepended, and the reply's rows are given back in the JSON form too, as "m":
    [slot, generated, probes, actions, n] per served action, [slot, message, generated,
    probes, actions] per refusal."""
    live = task.judge.live if task.judge is not None else ()
    arrays = list(arrays)
    if len(arrays) < 2:  # the indices and masks were optional: none stood for empty ones
        arrays = ([*arrays] or [np.zeros(0, np.int32)]) + [np.zeros(0, bool)]
    reply = task.on_frame(header, [json_rows(header.get("m"), live), *arrays])
    if reply is not None and reply.get("t") == "reply":
        refusals = iter(reply["x"])
        reply["m"] = [[s, g, p, a, n] if n >= 0 else [s, next(refusals), g, p, a]
                      for s, g, p, a, n in reply["arrays"][0].tolist()]
        reply["arrays"] = reply["arrays"][1:]
    return reply


_OPS = ["advance_many", "advance", "branch", "branch_many", "extend", "probe", "read",
        "read_new", "read_new_many", "prune", "prune_many", "answer", "error", "nope", 3, None]
_VALUES = [0, 1, -1, 2, 7, 2**31, 2**63, -(2**63) - 1, 10**30, 1.5, True, False, None, "x",
           "\x1b[2J", [], [0], [0, 0], [True, False], [[1]], {}, {"a": 1}, ["#", 1], ["#", 10**9],
           ["?", 1], ["?", 3], ["?", -1],
           [1.0], "answer", ["exception", "m", None], ["non_answer", 3, "tb"]]


def _value(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth < 3 and r < 0.15:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if depth < 3 and r < 0.2:
        return {rng.choice(["t", "m", "slot", "x"]): _value(rng, depth + 1)}
    return rng.choice(_VALUES)


def _message(rng: random.Random, live: list[int]):
    slot = rng.choice([*live, -1, 999, 2**40, "0", None]) if live else rng.randint(-2, 9)
    op = rng.choice(_OPS)
    args = [_value(rng) for _ in range(rng.randint(0, 3))]
    m = [slot, op, args]
    if rng.random() < 0.2:
        m.append([[rng.choice(["k", 3]), {"a": _value(rng)}]] if rng.random() < 0.7
                 else _value(rng))
    if rng.random() < 0.1:
        m = _value(rng)
    return m


_FIELDS = [0, 1, 2, 3, -1, 5, 2**31 - 1, 2**31, -(2**31) - 1, 2**62, -(2**63), 2**63 - 1]


def _row(rng: random.Random, live: list[int]) -> list[int]:
    """A binary row: a live slot or not, any op code, fields of every kind; or one that could
    be the client's."""
    if live and rng.random() < 0.6:
        return [rng.choice(live), rng.randint(1, 14), rng.choice([0, 0, 1, 1, 2, 3]),
                rng.choice([0, 0, 0, 1, 2]), 0]
    slot = rng.choice([*live, -1, 999, 2**40, -(2**63)]) if live else rng.randint(-2, 9)
    return [slot, rng.choice([*range(-1, 17), 2**40]), rng.choice(_FIELDS), rng.choice(_FIELDS),
            rng.choice([0, 0, 0, 1, 2, -1])]


def _frame(rng: random.Random, task: _Task):
    live = sorted(task.judge.live) if task.judge is not None else []
    kind = rng.random()
    if kind < 0.35:  # JSON messages (json_round gives them rows)
        header = {"t": "round", "m": [_message(rng, live) for _ in range(rng.randint(0, 6))]}
        return header, ["json", *_arrays(rng)]
    if kind < 0.7:  # binary rows, with or without JSON messages and trace events
        rows = [_row(rng, live) for _ in range(rng.randint(0, 3))]
        header = {"t": "round"}
        if rng.random() < 0.5:
            header["m"] = [_message(rng, live) for _ in range(rng.randint(0, 2))]
        if rng.random() < 0.5:
            header["e"] = [[[rng.choice(["k", 3]), {"a": _value(rng)}]] if rng.random() < 0.7
                           else _value(rng) for _ in range(rng.randint(0, 2))]
        table = np.array(rows, dtype=np.int64).reshape(-1, 5)
        if rng.random() < 0.1:  # another width or dtype
            table = rng.choice([table.reshape(-1)[: 4 * (len(table.reshape(-1)) // 4)]
                                .reshape(-1, 4), table.astype(np.int32), table.reshape(-1)])
        arrays = _arrays(rng)
        if len(arrays) < 2 and rng.random() < 0.8:
            arrays = ([*arrays] or [np.zeros(0, np.int32)]) + [np.zeros(0, bool)]
        return header, [table, *arrays]
    elif kind < 0.8:
        header = {"t": rng.choice(["done", "configs", "verdict", "config_error", "x", 5,
                                   "unit_done", "died", "ready"]),
                  **{k: _value(rng) for k in rng.sample(
                      ["stdout", "dropped", "name", "configs", "verdict", "message"], 3)}}
    else:
        header = _value(rng)
    return header, _arrays(rng)


def _arrays(rng: random.Random) -> list[np.ndarray]:
    arrays = []
    if rng.random() < 0.3 + 0.5 * (rng.random() < 0.5):
        arrays = [np.array([rng.randint(0, 40) for _ in range(rng.randint(0, 8))],
                           dtype=rng.choice([np.int32, np.int32, np.int64, np.uint8]))]
        if rng.random() < 0.5:  # a round's masks; bytes other than 0/1 too, as a forger sends
            arrays.append(np.array([rng.randint(0, 3) for _ in range(rng.randint(0, 8))],
                                   dtype=np.uint8).view(rng.choice([np.bool_, np.uint8])))
    return arrays


def test_judge_never_raises_on_hostile_frames():
    """10,000 random and hostile frames: each either is answered or ends the task with a typed
    failure; no other exception ever leaves the trusted side."""
    rng = random.Random(1234)
    task = _busy_task()
    answered = failed = 0
    for _ in range(10_000):
        header, arrays = _frame(rng, task)
        try:
            if type(header) is not dict:
                raise FrameError("frame header is not an object")
            if arrays and type(arrays[0]) is str:  # "json": JSON messages only
                json_round(task, header, arrays[1:])
            else:
                task.on_frame(header, arrays)
            answered += 1
        except ALLOWED:
            failed += 1
            task = _busy_task()
    assert answered > 500 and failed > 500


def test_frame_reader_never_raises_on_hostile_bytes():
    rng = random.Random(7)
    good = pack_frame({"t": "round", "m": [], "e": []},
                      [np.array([[0, 7, 0, 0, 0]], dtype="<i8"), np.arange(3, dtype="<i4"),
                       np.ones(2, bool)])
    for _ in range(3000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.2:
            data = bytearray(struct.pack("<Q", rng.randint(0, 200))) + rng.randbytes(
                rng.randint(0, 200))
        if rng.random() < 0.1:
            data = bytearray(struct.pack("<Q", 40)) + json.dumps(
                {"arrays": [[rng.choice(["<i4", "|O", "<f8"]), [rng.randint(-1, 5)]]]}
            ).encode().ljust(40)
        with contextlib.suppress(FrameError):
            FrameReader(1 << 16, max_frame=1 << 12).feed(bytes(data))


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("unrestricted", [False, True])
def test_no_memory_outlives_a_batch(unrestricted):
    """State a candidate keeps between episodes (a class attribute; with code execution, an
    attribute of the builtins module) lives only as long as one batch: one draw of each question
    under one β. So it never meets a question twice and cannot learn a pool across draws or β
    (a red-team candidate learned branch fingerprints that way: 79.7% at the cost of 1.6 branches)."""
    keep = ("import builtins\n        n = getattr(builtins, 'seen', 0) + 1\n"
            "        builtins.seen = n\n" if unrestricted else
            "n = Counter.seen + 1\n        Counter.seen = n\n")
    source = f'''
class Counter:
    NAME = "counter"
    seen = 0

    @staticmethod
    def schedule(beta):
        return {{}}

    def run(self, ep):
        {keep}
        raise ValueError(f"episode {{n}} of this process")
'''
    store2 = synthetic_store(3, 9, seed=2)
    ev = evaluate_sandboxed(source, [STORE, store2], [0.0, 0.5, 1.0], EvalProtocol(draws=5),
                            limits=FAST, on_error="record", _unrestricted=unrestricted)
    counts = [int(e["message"].split("episode ")[1].split(" ")[0]) for e in ev.errors]
    assert len(counts) == 3 * 5 * (4 + 3)
    assert max(counts) == 4 + 3  # one draw of every question of both stores, never more


@pytest.mark.usefixtures("parent")
def test_each_batch_draws_its_own_random_numbers():
    """Each batch is a fork of the zygote, and `random` takes a fresh seed in each child
    (statistics.NormalDist.samples draws from that module's generator): without it every batch
    would draw the same numbers, and a stochastic controller would repeat itself across draws."""
    source = '''
from statistics import NormalDist

class Sampler:
    NAME = "sampler"

    @staticmethod
    def schedule(beta):
        return {}

    def run(self, ep):
        raise ValueError(f"drew {NormalDist().samples(1)[0]!r}")
'''
    ev = evaluate_sandboxed(source, [STORE], [0.5], EvalProtocol(draws=6), limits=FAST,
                            on_error="record")
    first = [e["message"] for e in ev.errors if e["question"] == 0]
    assert len(first) == 6  # the first episode of each batch
    assert len(set(first)) == len(first)


@pytest.mark.usefixtures("parent")
@pytest.mark.parametrize("forge", [False, True], ids=["silent", "forged-reaped"])
def test_a_batch_cannot_stay_to_play_the_next_one(forge: bool):
    """With code execution, a batch process takes over its own exit: after reporting its batch
    done it would read the next batch's frame from the shared pipe and play it with what it
    learned. The judge sends the next frame only once the batch's process is gone (from /proc),
    so this one just times out; forging the sandbox process's "reaped" hint (the frame that
    says when to look) changes nothing: /proc still shows the batch's process."""
    extra = f'''
import autotts.sandbox.child as sandbox_child

_send = sandbox_child._Out.send


def send(self, header, arrays=()):
    _send(self, header, arrays)
    if header.get("t") == "unit_done":
        if {forge}:
            _send(self, {{"t": "reaped"}})
        while True:  # stay alive, waiting to read what comes next
            pass


sandbox_child._Out.send = send
'''
    with pytest.raises(SandboxError) as info:
        _run(_controller("        return ep.read_new()\n", extra),
             limits=SandboxLimits(**{**FAST.__dict__, "episode_seconds": 2}))
    assert info.value.verdict.kind == "timeout"
    assert "did not exit" in info.value.verdict.message
