"""`autotts collect`: questions -> engine -> protocol -> finished-question files -> store.

Several questions are in flight at once so that every engine call carries enough branches to fill
the KV cache, including at the end of a question when only its longest branches are left. Each
engine call is one round: the next interval of every idle branch of every in-flight question plus
every queued probe. A question's file is written the moment its last branch finishes.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotts import __version__
from autotts.collect.engines import Engine, open_engine
from autotts.collect.protocol import ProtocolConfig, QuestionRun, ScheduledRequest, Stats
from autotts.collect.questions import SourceQuestion, load_questions, questions_sha256
from autotts.collect.writer import WorkDir, assemble, settings_dict
from autotts.errors import ConfigError

DEFAULT_PROMPT_TEMPLATE = (
    "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."
)
PLACEHOLDER = "<<QUESTION>>"


@dataclass
class CollectConfig:
    model: str
    questions: str
    out: Path
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    backend: str = "vllm"
    base_url: str | None = None
    shard: tuple[int, int] | None = None
    answers: str = "math"
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    system_prompt: str | None = None
    template_kwargs: dict[str, Any] = field(default_factory=lambda: {"enable_thinking": True})
    revision: str | None = None
    engine_args: dict[str, Any] = field(default_factory=dict)
    sampler: str = "auto"
    inflight: int | None = None  # questions in flight (None: enough to fill the engine)
    limit: int | None = None  # only the first `limit` questions (smoke runs)

    def check(self) -> None:
        self.protocol.check()
        if self.answers not in ("exact", "math"):
            raise ConfigError(f"--answers must be exact or math, got {self.answers!r}")
        if "{question}" not in self.prompt_template:
            raise ConfigError("--prompt-template must contain {question}")
        if self.inflight is not None and self.inflight < 1:
            raise ConfigError("--inflight must be >= 1")


@dataclass
class CollectResult:
    store: Path | None  # the store, once every question (all shards) is finished
    done_now: int  # questions finished by this run
    finished: int  # questions finished in the work directory
    total: int
    stats: Stats
    seconds: float  # generation time of this run (engine start-up and store assembly excluded)
    engine_info: dict[str, Any] | None = None
    prefix_cache: dict[str, float] | None = None


class Progress:
    """What the runner reports; the CLI draws a bar from it."""

    def start(self, total: int, finished: int) -> None: ...

    def update(self, finished: int, tokens: int, seconds: float) -> None: ...

    def stop(self) -> None: ...


def model_name(model: str) -> str:
    return Path(model.rstrip("/")).name or model


def render_messages(cfg: CollectConfig, question: str) -> list[dict[str, str]]:
    msgs = []
    if cfg.system_prompt:
        msgs.append({"role": "system", "content": cfg.system_prompt})
    msgs.append({"role": "user", "content": cfg.prompt_template.replace("{question}", question)})
    return msgs


def template_hash(engine: Engine, cfg: CollectConfig) -> str:
    """sha256 of the chat prompt rendered for a placeholder question: changes with the model's chat
    template, its kwargs, the system prompt and the prompt template."""
    _, text = engine.chat_prompt(render_messages(cfg, PLACEHOLDER), cfg.template_kwargs)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def collect(cfg: CollectConfig, *, engine: Engine | None = None, progress: Progress | None = None,
            stop_after: int | None = None, log: Callable[[str], None] | None = None) -> CollectResult:
    """Run (or resume) a collection. `engine` overrides the configured backend (tests);
    `stop_after` stops after that many questions (tests of interrupted runs)."""
    cfg.check()
    log = log or (lambda _msg: None)
    qs = load_questions(cfg.questions)
    questions = qs.questions[: cfg.limit] if cfg.limit else qs.questions
    settings = settings_dict(
        model=cfg.model, model_name=model_name(cfg.model), benchmark=qs.name,
        questions_source={**qs.source, **({"limit": cfg.limit} if cfg.limit else {})},
        questions_sha=questions_sha256(qs), count=len(questions), answers=cfg.answers,
        prompt_template=cfg.prompt_template, system_prompt=cfg.system_prompt,
        template_kwargs=cfg.template_kwargs, protocol=cfg.protocol.as_dict(),
    )
    wd = WorkDir.for_store(cfg.out)
    wd.open(settings)
    finished = wd.finished()
    mine = [q for q in questions
            if cfg.shard is None or q.index % cfg.shard[1] == cfg.shard[0]]
    todo = [q for q in mine if q.index not in finished]
    t0 = time.monotonic()
    seconds = 0.0
    stats = Stats()
    done_now = 0
    info = None
    cache = None
    if todo:
        own = engine is None
        if engine is None:
            engine = open_engine(cfg.backend, cfg.model, base_url=cfg.base_url,
                                 revision=cfg.revision, seed=cfg.protocol.seed,
                                 engine_args=cfg.engine_args, sampler=cfg.sampler)
        try:
            info = {**engine.info(), "sampler": engine.sampler,
                    "continuation_exact": engine.continuation_exact,
                    "template_hash": template_hash(engine, cfg), "autotts_version": __version__}
            wd.record_engine(info)
            if not engine.continuation_exact:
                log("warning: this engine cannot continue a branch exactly as one uninterrupted "
                    f"generation (sampler {engine.sampler!r}); branches depend on Δ")
            if progress:
                progress.start(len(mine), len(mine) - len(todo))
            t0 = time.monotonic()  # tokens/s from here: engine start-up excluded
            done_now = _drive(engine, cfg, todo, wd, stats, progress, len(mine) - len(todo), t0,
                              stop_after)
            stats_fn = getattr(engine, "prefix_cache_stats", None)
            cache = stats_fn() if stats_fn else None
            seconds = time.monotonic() - t0
        finally:
            if progress:
                progress.stop()
            if own:
                engine.close()
    finished = wd.finished()
    total = len(questions)
    store = None
    if len(finished & set(range(total))) == total:
        store = assemble([wd], cfg.out)
    return CollectResult(store, done_now, len(finished), total, stats, seconds, info, cache)


def _drive(engine: Engine, cfg: CollectConfig, todo: list[SourceQuestion], wd: WorkDir, stats: Stats,
           progress: Progress | None, already: int, t0: float, stop_after: int | None) -> int:
    inflight = cfg.inflight or max(2, math.ceil(getattr(engine, "capacity", 256) / cfg.protocol.n) + 1)
    max_len = engine.info().get("max_model_len")
    queue = list(todo)
    active: list[tuple[SourceQuestion, QuestionRun]] = []
    done = 0
    budget = kv_budget(engine)
    warm: set[tuple[int, int]] = set()
    while queue or active:
        while queue and len(active) < inflight:
            q = queue.pop(0)
            ids, _ = engine.chat_prompt(render_messages(cfg, q.text), cfg.template_kwargs)
            run = QuestionRun(q.id, ids, cfg.protocol, encode=engine.encode, decode=engine.decode,
                              max_model_len=max_len)
            active.append((q, run))
        jobs = [(qi, j) for qi, (_, run) in enumerate(active) for j in run.next_requests()]
        chosen = schedule(jobs, budget, warm, active_ids=[q.index for q, _ in active])
        if chosen:
            comps = engine.generate([j.request for _, j in chosen])
            for (_, j), c in zip(chosen, comps, strict=True):
                j.done(c)
        warm = {(active[qi][0].index, j.branch) for qi, j in chosen if not j.probe}
        still = []
        for q, run in active:
            if run.done:
                rec = {"id": q.id, "question": q.text, "gold": q.gold, **run.result()}
                wd.write_question(q.index, rec, run.signal_rows() if cfg.protocol.signals else None)
                stats.add(run.stats)
                done += 1
                if stop_after is not None and done >= stop_after:
                    return done
            else:
                still.append((q, run))
        active = still
        if progress:
            live = sum(r.stats.generated + r.stats.probe_generated for _, r in active)
            progress.update(already + done, stats.generated + stats.probe_generated + live,
                            time.monotonic() - t0)
    return done


def kv_budget(engine: Engine) -> int | None:
    """Tokens of KV cache one round may fill (90% of the engine's cache), None when unknown."""
    fn = getattr(engine, "kv_cache_tokens", None)
    tokens = fn() if fn else None
    return int(0.9 * tokens) if tokens else None


def schedule(jobs: list[tuple[int, ScheduledRequest]], budget: int | None, warm: set[tuple[int, int]],
             active_ids: list[int]) -> list[tuple[int, ScheduledRequest]]:
    """The jobs of this round: as many as the KV cache holds, the rest cancelled for later.

    Why: a round that asks for more branches than the cache holds makes vLLM cycle through them,
    and by a branch's next round its prefix has been evicted, so every round recomputes every
    prefix (for 10k-token contexts that costs about as much as the Δ tokens themselves). Branches
    that ran last round (their prefixes are cached) and probes (short, on cached prefixes) go
    first, then the waiting branches in question and branch order. A job costs the KV it can fill
    by the end of the round: prompt + max_tokens (a probe: only what it adds to its branch's
    cached prefix)."""
    if budget is None:
        chosen = jobs
    else:

        def rank(item: tuple[int, ScheduledRequest]) -> tuple[int, int, int]:
            qi, j = item
            tier = 0 if j.probe else 1 if (active_ids[qi], j.branch) in warm else 2
            return (tier, qi, j.branch)

        chosen, used = [], 0
        for item in sorted(jobs, key=rank):
            j = item[1]
            cost = (j.request.max_tokens + 64) if j.probe else len(j.request.prompt) + j.request.max_tokens
            if chosen and used + cost > budget:
                continue
            chosen.append(item)
            used += cost
    keep = {id(j) for _, j in chosen}
    for _, j in jobs:
        if id(j) not in keep:
            j.cancel()
    return chosen


def merge(workdirs: list[Path], out: Path) -> Path:
    """Join the work directories of sharded runs (copied from several hosts) into one store."""
    return assemble([WorkDir(p) for p in workdirs], out)


class RichProgress(Progress):
    """A progress bar on stderr: questions, tokens/s (branches and probes) and ETA."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.bar: Any = None
        self.task: Any = None
        self.first = 0

    def start(self, total: int, finished: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self.first = finished
        self.bar = Bar(
            TextColumn("collecting"), BarColumn(), MofNCompleteColumn(), TextColumn("questions"),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=self.console, transient=False,
            speed_estimate_period=3600,
        )
        self.bar.start()
        self.task = self.bar.add_task("collect", total=total, completed=finished, rate="")

    def update(self, finished: int, tokens: int, seconds: float) -> None:
        if self.bar is not None:
            rate = f"{tokens / seconds:,.0f} tok/s" if seconds > 0 else ""
            self.bar.update(self.task, completed=finished, rate=rate)

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
