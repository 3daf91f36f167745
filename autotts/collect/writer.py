"""Incremental, crash-safe output: one finished-question file per question, then the store.

A collection writing the store OUT keeps its work in the sibling directory `OUT.collect/`:

    settings.json        everything that determines the data (model, questions, protocol, template)
    engine.json          facts about the engine of the first run (vLLM version, sampling mode)
    q/000012.json        question 12, finished: its branches (probes, tokens, finals, finish reasons)
    q/000012.signals.parquet   its per-interval signals, when requested (written first)

Each file appears by atomic rename, so a question is either finished or absent. A rerun loads
settings.json, refuses different settings, and skips finished questions; because seeds derive from
(seed, question id, branch) and the store is assembled from these files in question order, the
store equals the one an uninterrupted run writes. `--shard I/N` runs take the questions whose index
is I mod N and may share one work directory; `merge` joins work directories from several hosts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from autotts.errors import CollectError
from autotts.fsio import atomic_write_bytes
from autotts.store import (
    Store,
    from_autotts_records,
    replace_dir,
    write_store,
)

SIGNALS_SCHEMA = pa.schema([
    ("question_idx", pa.int32()),
    ("branch_idx", pa.int32()),
    ("interval_idx", pa.int32()),
    ("phase", pa.string()),  # "think" or "answer"
    ("start", pa.int32()),  # offset of the interval's first token in the branch
    ("num_tokens", pa.int32()),
    ("probe_idx", pa.int32()),  # index into probe_answers when a probe followed, else null
    ("probe_text", pa.string()),  # the probe's raw completion
    ("token_ids", pa.list_(pa.int32())),
    ("logprobs", pa.list_(pa.float32())),  # sampled tokens' logprobs (model distribution)
    ("confidence", pa.float64()),  # mean token confidence over the interval (DeepConf)
    ("lowest_group_confidence", pa.float64()),  # lowest sliding-window mean so far
])
BRANCH_INFO_SCHEMA = pa.schema([
    ("question_idx", pa.int32()),
    ("branch_idx", pa.int32()),
    ("seed", pa.int64()),
    ("finish_reason", pa.string()),
    ("thinking_tokens", pa.int32()),
    ("answer_tokens", pa.int32()),
    ("think_closed", pa.bool_()),
    ("forced_close", pa.bool_()),
])
SIGNALS_FILE = "signals.parquet"
BRANCH_INFO_FILE = "branch_info.parquet"


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False, sort_keys=True) + "\n").encode()


def _first_difference(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str | None:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _first_difference(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k}: {va!r} vs {vb!r}"
    return None


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """`I/N` with 0 <= I < N."""
    if text is None:
        return None
    from autotts.errors import ConfigError

    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard expects I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need N >= 1 and 0 <= I < N (shards are 0-based)")
    return i, n


class WorkDir:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.qdir = self.root / "q"

    @classmethod
    def for_store(cls, out: str | os.PathLike[str]) -> WorkDir:
        out = Path(out)
        return cls(out.with_name(out.name + ".collect"))

    # -- settings
    def settings(self) -> dict[str, Any]:
        f = self.root / "settings.json"
        if not f.is_file():
            raise CollectError(f"{self.root}: not a collection work directory (no settings.json)")
        return json.loads(f.read_text())

    def open(self, settings: dict[str, Any]) -> None:
        """Start a work directory or check that it was started with the same settings."""
        f = self.root / "settings.json"
        if f.is_file():
            old = json.loads(f.read_text())
            diff = _first_difference(old, settings)
            if diff:
                raise CollectError(
                    f"{self.root} was started with other settings ({diff}); "
                    "use another --out or delete the work directory"
                )
            return
        self.qdir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(f, _json_bytes(settings))

    def engine_info(self) -> dict[str, Any] | None:
        f = self.root / "engine.json"
        return json.loads(f.read_text()) if f.is_file() else None

    def record_engine(self, info: dict[str, Any]) -> None:
        """The first run's engine facts go to the manifest; later runs must agree on the sampler and
        the rendered chat template (else their branches would not mix)."""
        old = self.engine_info()
        if old is None:
            atomic_write_bytes(self.root / "engine.json", _json_bytes(info))
            return
        for key in ("template_hash", "sampler"):
            if old.get(key) != info.get(key):
                raise CollectError(
                    f"{self.root}: this run's {key} {info.get(key)!r} differs from the first "
                    f"run's {old.get(key)!r}; finish with the same engine setup or start over"
                )

    # -- questions
    def _qfile(self, idx: int) -> Path:
        return self.qdir / f"{idx:06d}.json"

    def finished(self) -> set[int]:
        if not self.qdir.is_dir():
            return set()
        return {int(p.name[:6]) for p in self.qdir.glob("[0-9][0-9][0-9][0-9][0-9][0-9].json")}

    def write_question(self, idx: int, record: dict[str, Any], signals: list[dict[str, Any]] | None) -> None:
        if signals is not None:
            table = pa.Table.from_pylist(
                [{"question_idx": idx, **r} for r in signals], schema=SIGNALS_SCHEMA
            )
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd")
            atomic_write_bytes(self.qdir / f"{idx:06d}.signals.parquet", buf.getvalue())
        # The question file last: its presence is what marks the question finished.
        atomic_write_bytes(self._qfile(idx), _json_bytes(record))

    def read_question(self, idx: int) -> dict[str, Any]:
        try:
            return json.loads(self._qfile(idx).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CollectError(f"{self._qfile(idx)}: unreadable ({e})") from None

    def read_signals(self, idx: int) -> pa.Table | None:
        f = self.qdir / f"{idx:06d}.signals.parquet"
        return pq.read_table(f) if f.is_file() else None


# ------------------------------------------------------------------------------------------------
# Assembly


def _parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def build_store(settings: dict[str, Any], engine: dict[str, Any],
                records: Sequence[dict[str, Any]]) -> tuple[Store, dict[str, pa.Table]]:
    """The store (and its extra tables) from finished-question records in question order."""
    proto = settings["protocol"]
    rows = []
    for rec in records:
        rows.append({
            "question": rec["question"],
            "gold_answer": rec["gold"],
            "probe_freq": proto["delta"],
            "final_answers_trace": [b["final"] for b in rec["branches"]],
            "each_branch": [[b["probes"], b["tokens"], b["final"]] for b in rec["branches"]],
            "id": rec["id"],
        })
    store = from_autotts_records(
        rows, model=settings["model_name"], benchmark=settings["benchmark"],
        answers=settings["answers"], origin=settings["benchmark"],
        source={"kind": "collect", **settings["questions"]["source"],
                "questions_sha256": settings["questions"]["sha256"]},
    )
    info_rows = [
        {"question_idx": qi, "branch_idx": bi, "seed": b["seed"],
         "finish_reason": b["finish_reason"], "thinking_tokens": b["thinking_tokens"],
         "answer_tokens": b["answer_tokens"], "think_closed": b["think_closed"],
         "forced_close": b["forced_close"]}
        for qi, rec in enumerate(records) for bi, b in enumerate(rec["branches"])
    ]
    extras = {BRANCH_INFO_FILE: pa.Table.from_pylist(info_rows, schema=BRANCH_INFO_SCHEMA)}
    m = store.manifest
    m["sampling"] = {
        "n": proto["n"], "temperature": proto["temperature"], "top_p": proto["top_p"],
        "top_k": proto["top_k"], "seed": proto["seed"], "sampler": engine.get("sampler"),
        "continuation_exact": engine.get("continuation_exact"),
    }
    m["probe_template"] = {"suffix": proto["probe_suffix"], "max_tokens": proto["probe_max_tokens"]}
    m["collect"] = {
        "model": settings["model"], "revision": engine.get("revision"),
        "backend": engine.get("backend"), "vllm_version": engine.get("vllm_version"),
        "template_hash": engine.get("template_hash"), "prompt_template": settings["prompt_template"],
        "system_prompt": settings["system_prompt"], "template_kwargs": settings["template_kwargs"],
        "max_thinking_tokens": proto["max_thinking_tokens"], "think_close": proto["think_close"],
        "max_answer_tokens": proto["max_answer_tokens"], "signals": proto["signals"],
        "top_logprobs": proto["top_logprobs"], "conf_window": proto["conf_window"],
        "autotts_version": engine.get("autotts_version"),
    }
    return store, extras


def write_store_with_extras(store: Store, extras: dict[str, pa.Table], out: Path) -> Path:
    """`write_store`, plus extra tables, swapped into place in one rename (readers ignore them)."""
    blobs = {name: _parquet_bytes(t) for name, t in extras.items()}
    store.manifest["extra_tables"] = {
        name: "sha256:" + hashlib.sha256(b).hexdigest() for name, b in sorted(blobs.items())
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    write_store(store, staging)
    try:
        for name, b in blobs.items():
            atomic_write_bytes(staging / name, b)
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    store.path = str(out)
    return out


def assemble(workdirs: Sequence[WorkDir], out: str | os.PathLike[str]) -> Path:
    """Join finished questions from one or more work directories into the store OUT."""
    if not workdirs:
        raise CollectError("merge needs at least one work directory")
    settings = workdirs[0].settings()
    engine = workdirs[0].engine_info() or {}
    where: dict[int, WorkDir] = {}
    for wd in workdirs:
        s = wd.settings()
        diff = _first_difference(settings, s)
        if diff:
            raise CollectError(f"{wd.root} and {workdirs[0].root} hold different collections ({diff})")
        e = wd.engine_info() or {}
        for key in ("template_hash", "sampler"):
            if e and engine and e.get(key) != engine.get(key):
                raise CollectError(f"{wd.root}: {key} {e.get(key)!r} differs from "
                                   f"{engine.get(key)!r} in {workdirs[0].root}")
        for idx in wd.finished():
            where.setdefault(idx, wd)
    total = int(settings["questions"]["count"])
    missing = [i for i in range(total) if i not in where]
    if missing:
        raise CollectError(
            f"{len(missing)} of {total} questions are not finished yet (first: question "
            f"{missing[0]}); run the remaining shards, then merge"
        )
    records = [where[i].read_question(i) for i in range(total)]
    store, extras = build_store(settings, engine, records)
    if settings["protocol"]["signals"]:
        tables = [where[i].read_signals(i) for i in range(total)]
        extras[SIGNALS_FILE] = pa.concat_tables(
            [t.cast(SIGNALS_SCHEMA) for t in tables if t is not None]
        ) if any(t is not None for t in tables) else SIGNALS_SCHEMA.empty_table()
    return write_store_with_extras(store, extras, Path(out))


def settings_dict(*, model: str, model_name: str, benchmark: str,
                  questions_source: dict[str, Any], questions_sha: str, count: int,
                  answers: str, prompt_template: str, system_prompt: str | None,
                  template_kwargs: dict[str, Any], protocol: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": model, "model_name": model_name, "benchmark": benchmark, "answers": answers,
        "questions": {"source": questions_source, "sha256": questions_sha, "count": count},
        "prompt_template": prompt_template, "system_prompt": system_prompt,
        "template_kwargs": template_kwargs, "protocol": protocol,
    }
