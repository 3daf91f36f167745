"""The discovery loop (DESIGN §8): an LLM agent writes, tests and revises controllers.

    from autotts.discover import DiscoverConfig, run_discovery
    run_discovery(DiscoverConfig.from_env("env/aime-qwen3.toml", "runs/r1", model="gpt-4.1"))

Modules: config (settings, prices), agent (OpenAI client, cache, retries, spend cap), prompt,
candidates (parsing, sandboxed evaluation, objective), digest (trace digests), baselines (the
seeds' curves, cached across runs), rundir (the crash-safe run directory, written with
autotts/fsio.py), loop (rounds, resume, held-out step), command (`autotts discover`), runreport
(`autotts report RUN_DIR`), fakeserver (a scripted OpenAI-compatible server for tests and the
bench), bench.
"""

from autotts.discover.config import DiscoverConfig
from autotts.discover.loop import first_prompt, run_discovery
from autotts.discover.runreport import RunReport, is_run_dir, read_run_dir, write_run_report

__all__ = [
    "DiscoverConfig",
    "RunReport",
    "first_prompt",
    "is_run_dir",
    "read_run_dir",
    "run_discovery",
    "write_run_report",
]
