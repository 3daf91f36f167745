"""The collector (DESIGN §9): sample reasoning branches and probes from a model into a replay store.

    from autotts.collect import CollectConfig, ProtocolConfig, collect
    collect(CollectConfig(model="Qwen/Qwen3-8B", questions="aime24", out=Path("data/Qwen3-8B/aime24")))

Modules: `protocol` (intervals, probes, thinking cap; engine-agnostic), `engines` (vLLM offline,
OpenAI-compatible server, fake), `sampler` (position-keyed sampling inside vLLM), `questions`
(JSONL and named benchmarks), `writer` (per-question files, resume, shards, merge, store assembly),
`runner` (the `autotts collect` driver), `ray_shards` (shards as Ray tasks, one per GPU, then
merged), `tinymodel` (a tiny offline test model).
"""

from autotts.collect.engines import Completion, FakeEngine, FakeScript, Request, Sampling
from autotts.collect.protocol import ProtocolConfig, QuestionRun, last_boxed, probe_answer
from autotts.collect.runner import CollectConfig, CollectResult, collect, merge

__all__ = [
    "CollectConfig",
    "CollectResult",
    "Completion",
    "FakeEngine",
    "FakeScript",
    "ProtocolConfig",
    "QuestionRun",
    "Request",
    "Sampling",
    "collect",
    "last_boxed",
    "merge",
    "probe_answer",
]
