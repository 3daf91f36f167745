"""The collection protocol (DESIGN §9), engine-agnostic: branches, Δ intervals, probes, thinking cap.

Per question, N branches are sampled from the chat prompt, each with its own seed. Generation runs in
rounds of at most Δ tokens that continue from the branch's token ids. After every *full* interval
generated while the model is still thinking (no `</think>` yet), a greedy probe runs on
prefix + probe suffix (default `</think>\\n\\nThe final answer is \\boxed{`) for a few tokens; the
probe answer is the text up to the brace that closes the suffix's `\\boxed{` ('ERR' when it never
closes). A branch that reaches the thinking cap gets the think block closed for it (`think_close`)
and then writes its answer. The final answer is the last `\\boxed{...}` of the text after
`</think>` (of the whole output when the think block never closed), 'ERR' when there is none.

The probe of interval k and interval k+1 of the same branch depend on the same prefix, so they go
to the engine in the same batch: the probe re-reads a prefix that is in the prefix cache.

Replay semantics this produces (DESIGN §3): `probe_answers` has one entry per full Δ interval
generated while thinking; `tokens` is the length of the branch's token ids (generated tokens plus
the few forced think-closing tokens when the cap was hit); `final_answer` as above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotts.collect.engines import Completion, Request, Sampling, mix_seed
from autotts.errors import ConfigError

DEFAULT_PROBE_SUFFIX = "</think>\n\nThe final answer is \\boxed{"
DEFAULT_THINK_CLOSE = "\n\nConsidering the limited time, I have to give the solution based on the thinking directly now.\n</think>\n\n"
SIGNALS = ("tokens", "logprobs", "confidence")


@dataclass(frozen=True)
class ProtocolConfig:
    n: int = 128
    delta: int = 500
    sampling: Sampling = field(default_factory=Sampling)
    seed: int = 0
    probe_suffix: str = DEFAULT_PROBE_SUFFIX
    probe_max_tokens: int = 32
    max_thinking_tokens: int = 30000
    think_close: str = DEFAULT_THINK_CLOSE
    max_answer_tokens: int = 2048
    think_end: str = "</think>"
    signals: tuple[str, ...] = ()
    top_logprobs: int = 20  # k of the DeepConf confidence (mean of -top-k logprobs)
    conf_window: int = 2048  # tokens per sliding window of the lowest-group confidence

    def check(self) -> None:
        self.sampling.check()
        for name in ("n", "delta", "probe_max_tokens", "max_thinking_tokens", "max_answer_tokens",
                     "top_logprobs", "conf_window"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        bad = [s for s in self.signals if s not in SIGNALS]
        if bad:
            raise ConfigError(f"unknown signal {bad[0]!r} (expected some of {', '.join(SIGNALS)})")
        if self.think_end not in self.think_close:
            raise ConfigError(f"think_close must contain {self.think_end!r}")

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "delta": self.delta, "seed": self.seed,
            "temperature": self.sampling.temperature, "top_p": self.sampling.top_p,
            "top_k": self.sampling.top_k, "probe_suffix": self.probe_suffix,
            "probe_max_tokens": self.probe_max_tokens,
            "max_thinking_tokens": self.max_thinking_tokens, "think_close": self.think_close,
            "max_answer_tokens": self.max_answer_tokens, "think_end": self.think_end,
            "signals": list(self.signals), "top_logprobs": self.top_logprobs,
            "conf_window": self.conf_window,
        }


# ------------------------------------------------------------------------------------------------
# Answer extraction


def _match_brace(text: str, start: int, depth: int = 1) -> int | None:
    """Index of the brace that brings `depth` to 0, scanning from `start`; escaped braces (`\\{`,
    `\\}`) are LaTeX literals and do not count."""
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def probe_answer(text: str) -> str:
    """The probe's answer: its text up to the brace closing the suffix's `\\boxed{`, else 'ERR'."""
    end = _match_brace(text, 0)
    return "ERR" if end is None else text[:end].strip()


def last_boxed(text: str) -> str:
    """Content of the last complete `\\boxed{...}` in `text`, else 'ERR'."""
    key = "\\boxed{"
    pos = text.rfind(key)
    while pos >= 0:
        end = _match_brace(text, pos + len(key))
        if end is not None:
            return text[pos + len(key) : end].strip()
        pos = text.rfind(key, 0, pos)
    return "ERR"


# ------------------------------------------------------------------------------------------------
# Confidence (DeepConf): token confidence = mean of -top-k logprobs


def token_confidence(top: Sequence[float]) -> float:
    return -sum(top) / len(top) if top else 0.0


def lowest_window_mean(values: Sequence[float], start: int, window: int, prev: float) -> float:
    """Running minimum of sliding-window means over `values`, updated for the windows that end at
    positions start..len-1 (before `window` values exist, the mean of all of them counts)."""
    n = len(values)
    if n == 0:
        return prev
    if n < window:
        return min(prev, sum(values) / n)
    best = prev
    first_end = max(start, window - 1)
    s = sum(values[first_end - window + 1 : first_end + 1])
    best = min(best, s / window)
    for end in range(first_end + 1, n):
        s += values[end] - values[end - window]
        best = min(best, s / window)
    return best


# ------------------------------------------------------------------------------------------------
# One question


@dataclass
class Branch:
    idx: int
    seed: int
    ids: list[int] = field(default_factory=list)
    thinking: bool = True
    think_tokens: int = 0
    answer_tokens: int = 0
    think_end_at: int | None = None  # index of </think> in ids
    forced_close: bool = False
    done: bool = False
    busy: bool = False
    finish_reason: str = ""
    probes: list[str | None] = field(default_factory=list)
    probe_texts: list[str | None] = field(default_factory=list)
    token_conf: list[float] = field(default_factory=list)
    lowest_conf: float = math.inf
    signal_rows: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Stats:
    generated: int = 0  # tokens generated by branch calls
    probe_generated: int = 0
    probe_prompt: int = 0
    probe_cached: int = 0  # probe prompt tokens served from the prefix cache (when reported)
    probe_cached_known: int = 0  # probes whose engine reported cached tokens
    calls: int = 0

    def add(self, other: Stats) -> None:
        for k in self.__dataclass_fields__:
            setattr(self, k, getattr(self, k) + getattr(other, k))


Pending = tuple[Request, Callable[[Completion], None]]
QueuedProbe = tuple[Request, Callable[[Completion], None], int]


@dataclass
class ScheduledRequest:
    """One request handed out by a question run: `done` with its completion, or `cancel` when the
    scheduler leaves it for a later round (then the run hands it out again)."""

    request: Request
    done: Callable[[Completion], None]
    cancel: Callable[[], None]
    branch: int
    probe: bool


class QuestionRun:
    """The state machine of one question's N branches; `next_requests()` hands out what can run now
    (the next interval of every idle branch and every queued probe) with a callback per request."""

    def __init__(self, qid: str, prompt: list[int], cfg: ProtocolConfig, *,
                 encode: Callable[[str], list[int]], decode: Callable[[Sequence[int]], str],
                 max_model_len: int | None = None) -> None:
        self.cfg = cfg
        self.qid = qid
        self.prompt = list(prompt)
        self.decode = decode
        self.room_total = max_model_len
        end = encode(cfg.think_end)
        if len(end) != 1:
            raise ConfigError(
                f"{cfg.think_end!r} is not a single token for this model; the collector needs a "
                "thinking model whose think block ends with one special token"
            )
        self.think_end_id = end[0]
        self.suffix = encode(cfg.probe_suffix)
        self.close = encode(cfg.think_close)
        if self.think_end_id not in self.close:
            raise ConfigError(f"think_close does not tokenize to a text containing {cfg.think_end!r}")
        self.branches = [Branch(b, branch_seed(cfg.seed, qid, b)) for b in range(cfg.n)]
        self.probe_queue: list[QueuedProbe] = []
        self.outstanding = 0
        self.stats = Stats()
        self.want_logprobs = cfg.top_logprobs if {"logprobs", "confidence"} & set(cfg.signals) else 0

    @property
    def done(self) -> bool:
        return self.outstanding == 0 and not self.probe_queue and all(b.done for b in self.branches)

    def _room(self, extra: int = 0) -> Callable[[Branch], float]:
        def room(b: Branch) -> float:
            if self.room_total is None:
                return math.inf
            return self.room_total - len(self.prompt) - len(b.ids) - extra
        return room

    def next_requests(self) -> list[ScheduledRequest]:
        out: list[ScheduledRequest] = []
        for item in self.probe_queue:
            out.append(ScheduledRequest(item[0], item[1], self._requeue(item), item[2], True))
        self.probe_queue.clear()
        for b in self.branches:
            if b.done or b.busy:
                continue
            req = self._main_request(b)
            if req is not None:
                out.append(ScheduledRequest(req[0], req[1], self._release(b), b.idx, False))
        self.outstanding += len(out)
        return out

    def _requeue(self, item: QueuedProbe) -> Callable[[], None]:
        def cancel() -> None:
            self.outstanding -= 1
            self.probe_queue.append(item)
        return cancel

    def _release(self, b: Branch) -> Callable[[], None]:
        def cancel() -> None:
            self.outstanding -= 1
            b.busy = False
        return cancel

    def _finish(self, b: Branch, reason: str) -> None:
        b.done = True
        b.finish_reason = reason

    def _main_request(self, b: Branch) -> Pending | None:
        cfg = self.cfg
        room = self._room()(b)
        if b.thinking and b.think_tokens >= cfg.max_thinking_tokens:
            # The thinking cap: close the think block for the model, then let it answer.
            if room < len(self.close) + 1:
                self._finish(b, "length")
                return None
            j = self.close.index(self.think_end_id)
            b.think_end_at = len(b.ids) + j
            b.ids.extend(self.close)
            b.answer_tokens += len(self.close) - j - 1
            b.thinking = False
            b.forced_close = True
            room = self._room()(b)
        if b.thinking:
            m = min(cfg.delta, cfg.max_thinking_tokens - b.think_tokens, room)
        else:
            m = min(cfg.delta, cfg.max_answer_tokens - b.answer_tokens, room)
        if m <= 0:
            self._finish(b, "length")
            return None
        m = int(m)
        phase = "think" if b.thinking else "answer"
        req = Request(self.prompt + b.ids, m, cfg.sampling, seed=b.seed, logprobs=self.want_logprobs)
        b.busy = True

        def done(c: Completion) -> None:
            self._on_main(b, phase, m, c)

        return req, done

    def _on_main(self, b: Branch, phase: str, asked: int, c: Completion) -> None:
        self.outstanding -= 1
        self.stats.calls += 1
        b.busy = False
        new = list(c.token_ids)
        start = len(b.ids)
        b.ids.extend(new)
        self.stats.generated += len(new)
        full_interval = False
        if phase == "think":
            j = new.index(self.think_end_id) if self.think_end_id in new else None
            if j is None:
                b.think_tokens += len(new)
                full_interval = len(new) == asked == self.cfg.delta and c.finish_reason == "length"
            else:
                b.think_tokens += j + 1
                b.answer_tokens += len(new) - j - 1
                b.think_end_at = start + j
                b.thinking = False
        else:
            b.answer_tokens += len(new)
        probe_idx = None
        if full_interval:
            probe_idx = len(b.probes)
            self._queue_probe(b, probe_idx)
        if self.cfg.signals:
            self._record_signals(b, phase, start, new, c, probe_idx)
        if c.finish_reason != "length":
            self._finish(b, c.finish_reason)
        elif len(new) < asked:
            self._finish(b, "length")  # the engine stopped early: context exhausted
        elif not b.thinking and b.answer_tokens >= self.cfg.max_answer_tokens:
            self._finish(b, "length")

    def _queue_probe(self, b: Branch, k: int) -> None:
        b.probes.append(None)
        b.probe_texts.append(None)
        prompt = self.prompt + b.ids + self.suffix
        room = self._room(len(self.suffix))(b)
        m = int(min(self.cfg.probe_max_tokens, room))
        if m <= 0:
            b.probes[k] = "ERR"
            b.probe_texts[k] = ""
            return

        def done(c: Completion) -> None:
            self.outstanding -= 1
            self.stats.calls += 1
            self.stats.probe_generated += len(c.token_ids)
            self.stats.probe_prompt += len(prompt)
            if c.cached_tokens is not None:
                self.stats.probe_cached += c.cached_tokens
                self.stats.probe_cached_known += 1
            text = c.text if c.text is not None else self.decode(c.token_ids)
            b.probes[k] = probe_answer(text)
            b.probe_texts[k] = text
            for row in b.signal_rows:
                if row["probe_idx"] == k:
                    row["probe_text"] = text

        self.probe_queue.append((Request(prompt, m, None), done, b.idx))

    def _record_signals(self, b: Branch, phase: str, start: int, new: list[int], c: Completion,
                        probe_idx: int | None) -> None:
        sig = self.cfg.signals
        row: dict[str, Any] = {
            "interval_idx": len(b.signal_rows), "phase": phase, "start": start,
            "num_tokens": len(new), "probe_idx": probe_idx, "probe_text": None,
            "token_ids": new if "tokens" in sig else None,
            "logprobs": c.logprobs if "logprobs" in sig else None,
            "confidence": None, "lowest_group_confidence": None,
        }
        if "confidence" in sig and c.top_logprobs is not None:
            first = len(b.token_conf)
            confs = [token_confidence(t) for t in c.top_logprobs]
            b.token_conf.extend(confs)
            b.lowest_conf = lowest_window_mean(b.token_conf, first, self.cfg.conf_window,
                                               b.lowest_conf)
            row["confidence"] = sum(confs) / len(confs) if confs else None
            row["lowest_group_confidence"] = None if math.isinf(b.lowest_conf) else b.lowest_conf
        b.signal_rows.append(row)

    # -- results
    def result(self) -> dict[str, Any]:
        """The question's branches as plain data (JSON-ready), in branch order."""
        assert self.done
        branches = []
        for b in self.branches:
            if b.think_end_at is not None:
                text = self.decode(b.ids[b.think_end_at + 1 :])
            else:
                text = self.decode(b.ids)
            branches.append({
                "probes": [p if p is not None else "ERR" for p in b.probes],
                "tokens": len(b.ids),
                "final": last_boxed(text),
                "finish_reason": b.finish_reason,
                "thinking_tokens": b.think_tokens,
                "answer_tokens": b.answer_tokens,
                "think_closed": b.think_end_at is not None,
                "forced_close": b.forced_close,
                "seed": b.seed,
            })
        return {"branches": branches, "prompt_tokens": len(self.prompt)}

    def signal_rows(self) -> list[dict[str, Any]]:
        rows = []
        for b in self.branches:
            for r in b.signal_rows:
                rows.append({"branch_idx": b.idx, **r})
        return rows


def branch_seed(seed: int, qid: str, b: int) -> int:
    """Branch b of question `qid`: the same seed whatever the shard, batch or resume."""
    return mix_seed("branch", seed, qid, b)
