"""The collector against the real vLLM engine (CPU build) and the real OpenAI-compatible server, on a
tiny random-weight model built offline. vLLM lives in its own virtualenv (`.venv-vllm`, made by
.ci/run; see docs/collect.md), found through $AUTOTTS_VLLM_PYTHON. Missing, these tests skip
locally and fail under CI=true. Nothing is downloaded: HF_HUB_OFFLINE=1 throughout."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from autotts.collect.engines import parse_prefix_metrics
from autotts.store import read_store_dir

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.vllm

ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
ENGINE = {"enforce_eager": "true", "max_model_len": "2048", "dtype": "float32"}


def env() -> dict[str, str]:
    return {**os.environ, **ENV}


@pytest.fixture(scope="module")
def vllm_python() -> str:
    path = Path(os.environ.get("AUTOTTS_VLLM_PYTHON", ROOT / ".venv-vllm" / "bin" / "python"))
    if not path.exists():
        msg = f"no vLLM virtualenv at {path} (set AUTOTTS_VLLM_PYTHON; .ci/run makes one)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return str(path)


@pytest.fixture(scope="module")
def tiny_model(vllm_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "model"
    p = subprocess.run([vllm_python, "-m", "autotts.collect.tinymodel", str(out)], env=env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def replay(store: Path, tmp_path: Path) -> list[dict]:
    """`autotts eval` (the main environment) replays the store with a built-in controller."""
    out = tmp_path / f"{store.name}-eval.json"
    p = subprocess.run(
        [sys.executable, "-m", "autotts", "eval", "--controller", "parallel_probe", "--store",
         str(store), "--draws", "3", "--betas", "0,1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(out.read_text())


def test_offline_engine(vllm_python: str, tiny_model: Path, tmp_path: Path):
    """One engine process: exact continuation from token ids (probes interleaved), prefix-cache
    hits for probes, and an interrupted+resumed collection equal to an uninterrupted one."""
    args = [vllm_python, "-m", "autotts.collect.selftest", "--model", str(tiny_model), "--work",
            str(tmp_path / "work")]
    for k, v in ENGINE.items():
        args += ["--engine-arg", f"{k}={v}"]
    p = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=540)
    assert p.stdout.strip(), p.stderr[-4000:]
    report = json.loads(p.stdout)
    print(json.dumps(report, indent=1))
    assert p.returncode == 0 and report["failures"] == [], report["failures"]

    assert report["engine"]["sampler"] == "autotts" and report["engine"]["continuation_exact"]
    assert report["engine"]["kv_cache_tokens"] > 0
    c = report["continuation"]
    assert all(c["equal"]) and c["distinct_branches"] == c["branches"]
    assert all(x >= 128 for x in c["probe_cached_tokens"])  # CPU prefix blocks are 128 tokens
    col = report["collect"]
    assert col["probe_cached_tokens"] > 0.5 * col["probe_prompt_tokens"]
    assert col["prefix_cache"]["prefix_cache_hits"] > 0
    assert report["resume"]["first_run_questions"] == 1 and report["resume"]["same_content_hash"]

    store = read_store_dir(tmp_path / "work" / "full")
    m = store.manifest
    assert m["collect"]["vllm_version"] == "0.32.0" and m["collect"]["backend"] == "vllm"
    assert m["collect"]["revision"] and m["collect"]["template_hash"].startswith("sha256:")
    assert m["sampling"]["sampler"] == "autotts" and m["sampling"]["continuation_exact"]
    probes = store.branches.column("probe_answers").to_pylist()
    assert sum(len(p) for p in probes) > 0
    rows = replay(tmp_path / "work" / "full", tmp_path)
    assert {r["beta"] for r in rows} == {0.0, 1.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def test_openai_server(vllm_python: str, tiny_model: Path, tmp_path: Path):
    """`autotts collect --backend openai` against vLLM's server on 127.0.0.1: token ids in and out,
    exact continuation through the server-side sampler, probe prefix-cache hits, replay."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(tiny_model),
         "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
         "--enforce-eager", "--max-model-len", ENGINE["max_model_len"], "--dtype", "float32",
         "--enable-prefix-caching", "--seed", "0",
         "--logits-processors", "autotts.collect.sampler:PositionSeededSampler"],
        env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                pytest.fail("server exited: " + (tmp_path / "server.log").read_text()[-3000:])
            try:
                get(base + "/health")
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("server did not start within 300 s")
                time.sleep(1)
        qfile = tmp_path / "qs.jsonl"
        qfile.write_text("".join(
            json.dumps({"id": f"s{k}", "question": f"What is {k} times {k}? " * 12,
                        "answer": str(k * k)}) + "\n" for k in range(3)
        ))
        out = tmp_path / "store"
        cmd = [sys.executable, "-m", "autotts", "collect", "--backend", "openai", "--base-url",
               base + "/v1", "--model", "tiny", "--questions", str(qfile), "--out", str(out),
               "--n", "4", "--delta", "32", "--max-thinking-tokens", "160",
               "--max-answer-tokens", "48", "--probe-max-tokens", "16", "--top-p", "0.95",
               "--top-k", "20", "--signals", "confidence", "--engine-arg", "concurrency=16"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=400,
                           env={**os.environ, "COLUMNS": "200"})
        assert p.returncode == 0, p.stderr[-3000:]
        assert "3/3 finished" in p.stdout

        metrics = parse_prefix_metrics(get(base + "/metrics"))
        assert metrics["prefix_cache_hits"] > 0, metrics

        store = read_store_dir(out)
        m = store.manifest
        assert m["collect"]["backend"] == "openai" and m["collect"]["vllm_version"] == "0.32.0"
        # The server's V1 runner restarts its generator per request, so the engine picked the
        # position-keyed sampler and verified exact continuation against the server.
        assert m["sampling"]["sampler"] == "autotts" and m["sampling"]["continuation_exact"]
        assert (out / "signals.parquet").is_file()
        assert sum(len(x) for x in store.branches.column("probe_answers").to_pylist()) > 0
        rows = replay(out, tmp_path)
        assert all(r["questions"] == 3 for r in rows)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
