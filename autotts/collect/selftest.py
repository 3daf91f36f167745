"""Check a vLLM setup against the collector's guarantees, with the real engine, in one process:

1. continuing branches from their token ids (Δ at a time, probes in the same batches) yields the
   same tokens as one uninterrupted generation with the same seeds;
2. probes are served from the prefix cache (per-request cached tokens and vLLM's counters);
3. a collection that is interrupted and resumed writes the same store as an uninterrupted one.

    python -m autotts.collect.selftest --model MODEL_DIR --work DIR [--engine-arg K=V ...]

Prints one JSON object (the figures) and exits non-zero when a check fails. The CI test runs it on
the tiny offline model (`autotts.collect.tinymodel`); on a GPU it is a quick smoke test of a real
model before a long collection.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

QUESTION = (
    "A collector samples reasoning branches in intervals of a fixed number of tokens and asks the "
    "model for its current answer after every interval. Each probe re-reads the branch's prefix, "
    "which the prefix cache already holds, so it costs little. What is {k} plus {k} times three?"
)


def _kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        k, _, v = item.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def check_continuation(engine: Any, prompt: list[int], delta: int, rounds: int, n: int,
                       suffix: list[int]) -> dict[str, Any]:
    from autotts.collect.engines import Request, Sampling
    from autotts.collect.protocol import branch_seed

    s = Sampling(temperature=0.7, top_p=0.95, top_k=20)
    seeds = [branch_seed(0, "continuation", b) for b in range(n)]
    one = engine.generate([Request(prompt, delta * rounds, s, seed=x, ignore_eos=True)
                           for x in seeds])
    ids: list[list[int]] = [[] for _ in range(n)]
    probe_cached = []
    for k in range(rounds):
        reqs = [Request(prompt + ids[b], delta, s, seed=seeds[b], ignore_eos=True)
                for b in range(n)]
        probes = [Request(prompt + ids[b] + suffix, 8, None) for b in range(n)] if k else []
        outs = engine.generate(reqs + probes)
        for b in range(n):
            ids[b] += outs[b].token_ids
        probe_cached += [o.cached_tokens for o in outs[n:]]
    equal = [one[b].token_ids == ids[b] for b in range(n)]
    return {"branches": n, "tokens_per_branch": delta * rounds, "equal": equal,
            "distinct_branches": len({tuple(x) for x in ids}), "probe_cached_tokens": probe_cached}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--engine-arg", action="append", default=[])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--delta", type=int, default=32)
    ap.add_argument("--questions", type=int, default=3)
    args = ap.parse_args(argv)

    from autotts.collect.engines import Sampling, VLLMEngine
    from autotts.collect.protocol import ProtocolConfig
    from autotts.collect.runner import CollectConfig, collect
    from autotts.store import read_store_dir

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    qfile = work / "questions.jsonl"
    qfile.write_text("".join(
        json.dumps({"id": f"q{k}", "question": QUESTION.format(k=k), "answer": str(4 * k)}) + "\n"
        for k in range(args.questions)
    ))
    report: dict[str, Any] = {}
    t0 = time.monotonic()
    engine = VLLMEngine(args.model, engine_args=_kv(args.engine_arg))
    report["startup_s"] = round(time.monotonic() - t0, 1)
    report["engine"] = {**engine.info(), "sampler": engine.sampler,
                        "continuation_exact": engine.continuation_exact,
                        "kv_cache_tokens": engine.kv_cache_tokens()}
    try:
        t = time.monotonic()
        prompt, _ = engine.chat_prompt([{"role": "user", "content": QUESTION.format(k=1)}],
                                       {"enable_thinking": True})
        suffix = engine.encode("</think>\n\nThe final answer is \\boxed{")
        report["continuation"] = check_continuation(engine, prompt, args.delta, 3, args.n, suffix)
        report["continuation"]["seconds"] = round(time.monotonic() - t, 1)

        proto = ProtocolConfig(
            n=args.n, delta=args.delta, sampling=Sampling(0.7, 0.95, 20),
            probe_max_tokens=16, max_thinking_tokens=5 * args.delta, max_answer_tokens=48,
            signals=("tokens", "logprobs", "confidence"), top_logprobs=5,
        )

        def cfg(out: Path) -> CollectConfig:
            return CollectConfig(model=args.model, questions=str(qfile), out=out, protocol=proto,
                                 backend="vllm")

        t = time.monotonic()
        full = collect(cfg(work / "full"), engine=engine)
        report["collect_s"] = round(time.monotonic() - t, 1)
        st = full.stats
        report["collect"] = {
            "store": str(full.store), "generated_tokens": st.generated,
            "probe_tokens": st.probe_generated, "probe_prompt_tokens": st.probe_prompt,
            "probe_cached_tokens": st.probe_cached, "prefix_cache": full.prefix_cache,
        }
        part = collect(cfg(work / "resumed"), engine=engine, stop_after=1)
        rest = collect(cfg(work / "resumed"), engine=engine)
        a, b = read_store_dir(work / "full"), read_store_dir(work / "resumed")
        report["resume"] = {
            "first_run_questions": part.done_now, "second_run_questions": rest.done_now,
            "same_content_hash": a.manifest["content_hash"] == b.manifest["content_hash"],
            "same_manifest": a.manifest == {**b.manifest},
        }
    finally:
        engine.close()
    c = report["continuation"]
    failures = []
    if not all(c["equal"]):
        failures.append("continuation from token ids differs from one-shot generation")
    if c["distinct_branches"] != args.n:
        failures.append("branches with different seeds are identical")
    if not report["collect"]["probe_cached_tokens"] > 0:
        failures.append("no probe prompt token came from the prefix cache")
    if not report["resume"]["same_content_hash"]:
        failures.append("resumed collection differs from the uninterrupted one")
    report["failures"] = failures
    print(json.dumps(report, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
