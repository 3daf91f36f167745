"""Engines: the one small interface the collection protocol talks to, and its three backends.

An engine turns a batch of `Request`s (prompt token ids in, a token budget, greedy or sampled with a
per-branch seed) into `Completion`s (generated token ids, finish reason, optional logprobs). It also
owns the tokenizer side the protocol needs: rendering the chat prompt, encoding short fixed strings
(the probe suffix, the think-closing text) and decoding probe and answer tokens. Prefixes are always
passed as token ids and never re-encoded.

Backends:
* `VLLMEngine`   - `vllm.LLM` in this process (prefix caching on); imports vLLM lazily.
* `OpenAIEngine` - an OpenAI-compatible `/v1/completions` server (vLLM's), token ids in and out.
* `FakeEngine`   - deterministic and instant, for unit tests and dry runs.

Sampling modes (how a sampled request is seeded), chosen per engine by `select_sampler`:
* `autotts` - position-keyed Gumbel sampling by `autotts.collect.sampler.PositionSeededSampler`
              (a vLLM logits processor; V1 model runner): continuing a branch from its token ids
              gives exactly the tokens of one uninterrupted generation.
* `native`  - vLLM's own seeded sampling with the branch seed on every call. Exact continuation
              where vLLM keys its noise by position (the V2 model runner, the GPU default).
* `reseed`  - fallback: vLLM's seeded sampling with a fresh seed per call derived from the branch
              seed and the position. Deterministic and statistically sound, but a branch then
              depends on where the calls were cut (Δ); recorded in the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from autotts.errors import ConfigError, EngineError


@dataclass(frozen=True)
class Sampling:
    """Sampling settings of the branches (probes are always greedy)."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0  # 0: off

    def check(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (0: off), got {self.top_k}")


@dataclass(frozen=True)
class Request:
    prompt: Sequence[int]
    max_tokens: int
    sampling: Sampling | None = None  # None: greedy
    seed: int = 0  # the branch seed (sampled requests)
    logprobs: int = 0  # top-k logprobs per generated token (0: none)
    ignore_eos: bool = False


@dataclass
class Completion:
    token_ids: list[int]
    finish_reason: str  # "stop" (end of turn / EOS) or "length" (max_tokens reached)
    logprobs: list[float] | None = None  # the generated token's logprob, per token
    top_logprobs: list[list[float]] | None = None  # the top-k logprobs, per token
    cached_tokens: int | None = None  # prompt tokens served from the prefix cache, if known
    text: str | None = None  # the decoded tokens, when the engine returns them (saves a decode)


class Engine(Protocol):
    sampler: str
    continuation_exact: bool

    def generate(self, requests: Sequence[Request]) -> list[Completion]: ...

    def chat_prompt(self, messages: list[dict[str, str]], template_kwargs: dict[str, Any]) -> tuple[list[int], str]:
        """Token ids of the chat prompt (generation prompt added) and its text."""
        ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def info(self) -> dict[str, Any]:
        """Facts for the manifest: backend, vllm_version, max_model_len, model revision."""
        ...

    def close(self) -> None: ...


def mix_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and machines."""
    h = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def call_seed(mode: str, seed: int, position: int) -> int:
    """The vLLM `seed` of a sampled request in `native`/`reseed` mode (see the module docstring)."""
    return seed if mode == "native" else mix_seed("call", seed, position)


def sampler_xargs(r: Request) -> dict[str, Any]:
    s = r.sampling
    assert s is not None
    return {
        "autotts_seed": r.seed,
        "autotts_temperature": s.temperature,
        "autotts_top_p": s.top_p,
        "autotts_top_k": s.top_k,
    }


# ------------------------------------------------------------------------------------------------
# Choosing a sampling mode by checking what the engine actually does


def continuation_matches(engine: Engine, prompt: Sequence[int], n: int = 16) -> bool:
    """One call of n sampled tokens equals two calls of n/2 continuing from token ids (same seed),
    and the tokens are really sampled (another seed gives other tokens)."""
    s = Sampling(temperature=1.5)
    half = n // 2
    one, other, first = engine.generate(
        [
            Request(prompt, n, s, seed=11, ignore_eos=True),
            Request(prompt, n, s, seed=12, ignore_eos=True),
            Request(prompt, half, s, seed=11, ignore_eos=True),
        ]
    )
    (second,) = engine.generate(
        [Request(list(prompt) + first.token_ids, n - half, s, seed=11, ignore_eos=True)]
    )
    chunked = first.token_ids + second.token_ids
    return len(one.token_ids) == n and one.token_ids == chunked and one.token_ids != other.token_ids


def select_sampler(engine: Any, candidates: Sequence[str], prompt: Sequence[int]) -> None:
    """Set `engine.sampler` to the first candidate mode whose continuation is exact, else `reseed`."""
    for mode in candidates:
        engine.sampler = mode
        try:
            ok = continuation_matches(engine, prompt)
        except EngineError:
            ok = False  # e.g. a server that rejects the processor's arguments
        if ok:
            engine.continuation_exact = True
            return
    engine.sampler = "reseed"
    engine.continuation_exact = False


CALIBRATION_TEXT = "0 1 2 3 4 5 6 7 8 9 a b c d e f g h i j k l m n o p q r s t u v w x y z"


# ------------------------------------------------------------------------------------------------
# Fake engine (deterministic; tests and dry runs)


class FakeTokenizer:
    """One token per character (id = code point) plus a few special tokens above 0x110000."""

    SPECIAL = {"<|user|>": 0x110001, "<|assistant|>": 0x110002, "</think>": 0x110003,
               "<|end|>": 0x110004, "<think>": 0x110005}

    def __init__(self) -> None:
        self.by_id = {v: k for k, v in self.SPECIAL.items()}
        self.eos = self.SPECIAL["<|end|>"]

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        i = 0
        while i < len(text):
            for name, tid in self.SPECIAL.items():
                if text.startswith(name, i):
                    out.append(tid)
                    i += len(name)
                    break
            else:
                out.append(ord(text[i]))
                i += 1
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(
            "" if t == self.eos else self.by_id.get(t) or chr(t) for t in ids
        )


@dataclass
class FakeScript:
    """What the fake model 'writes'. A branch with seed s thinks for `think_len(s)` tokens drawn as a
    pure function of (seed, position) from `alphabet`, writes `</think>`, then `answer(s)` and ends.
    A probe answers `probe(n)`, n = tokens generated before the probe suffix."""

    think_len: Callable[[int], int] = lambda s: 60 + s % 150
    answer: Callable[[int], str] = lambda s: f"So the answer is \\boxed{{{s % 3}}}."
    probe: Callable[[int], str] = lambda n: f"{n // 50}}} is it"
    alphabet: str = "abcdefgh 0123456789{}"


@dataclass
class FakeEngine:
    """A deterministic stand-in for a model server, with a simulated prefix cache.

    Sampled tokens depend only on (seed, position), so continuation equals one-shot generation, as
    with the `autotts` sampler on a real engine. `fail_after` raises after that many calls (crash
    tests); `calls` records every request."""

    script: FakeScript = field(default_factory=FakeScript)
    max_model_len: int | None = None
    fail_after: int | None = None
    block_size: int = 16
    sampler: str = "fake"
    continuation_exact: bool = True
    capacity: int = 256
    kv_tokens: int | None = None  # simulated KV cache size (None: unbounded)
    calls: list[list[Request]] = field(default_factory=list)
    tok: FakeTokenizer = field(default_factory=FakeTokenizer)
    _blocks: set[tuple[int, ...]] = field(default_factory=set)

    def info(self) -> dict[str, Any]:
        return {"backend": "fake", "vllm_version": None, "max_model_len": self.max_model_len,
                "revision": None}

    def close(self) -> None:
        pass

    def kv_cache_tokens(self) -> int | None:
        return self.kv_tokens

    def chat_prompt(self, messages: list[dict[str, str]], template_kwargs: dict[str, Any]) -> tuple[list[int], str]:
        text = "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + "<|assistant|>"
        if template_kwargs.get("enable_thinking") is False:
            text += "</think>"
        return self.tok.encode(text), text

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(ids)

    def _cached(self, prompt: Sequence[int]) -> int:
        n = 0
        for end in range(self.block_size, len(prompt) + 1, self.block_size):
            if tuple(prompt[:end]) not in self._blocks:
                break
            n = end
        for end in range(self.block_size, len(prompt) + 1, self.block_size):
            self._blocks.add(tuple(prompt[:end]))
        return n

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise EngineError("fake engine: simulated crash")
        self.calls.append(list(requests))
        return [self._one(r) for r in requests]

    def _one(self, r: Request) -> Completion:
        prompt = list(r.prompt)
        if self.max_model_len is not None and len(prompt) + r.max_tokens > self.max_model_len:
            raise EngineError(f"fake engine: {len(prompt)} + {r.max_tokens} > max_model_len")
        cached = self._cached(prompt)
        start = len(prompt) - 1 - prompt[::-1].index(self.tok.SPECIAL["<|assistant|>"])
        gen = prompt[start + 1 :]
        out: list[int] = []
        if r.sampling is None:
            text = self.script.probe(len(gen) - self._suffix_len(gen))
            out = self.tok.encode(text)[: r.max_tokens]
            return Completion(out, "length" if len(out) == r.max_tokens else "stop",
                              cached_tokens=cached)
        end = self.tok.SPECIAL["</think>"]
        finish = "length"
        while len(out) < r.max_tokens:
            seq = gen + out
            if end in seq:
                j = len(seq) - 1 - seq[::-1].index(end)
                ans = [*self.tok.encode(self.script.answer(r.seed)), self.tok.eos]
                k = len(seq) - j - 1
                tok = ans[k] if k < len(ans) else self.tok.eos
            elif len(seq) == self.script.think_len(r.seed):
                tok = end
            else:
                rnd = random.Random(mix_seed(r.seed, len(prompt) + len(out)))
                tok = ord(rnd.choice(self.script.alphabet))
            if tok == self.tok.eos and not r.ignore_eos:
                finish = "stop"
                break
            out.append(tok)
        lps = [-0.1 - (t % 7) / 10 for t in out] if r.logprobs else None
        tops = [[lp, *(-(1.0 + j) for j in range(r.logprobs - 1))] for lp in lps] if lps else None
        return Completion(out, finish, lps, tops, cached_tokens=cached)

    def _suffix_len(self, gen: list[int]) -> int:
        # The probe suffix starts with </think> (the default); count the thinking tokens before it.
        end = self.tok.SPECIAL["</think>"]
        return len(gen) - gen.index(end) if end in gen else 0


# ------------------------------------------------------------------------------------------------
# vLLM offline engine


def _model_revision(model: str, revision: str | None) -> str | None:
    """The commit of a Hugging Face model in the local cache, or a hash of a local model's files."""
    p = Path(model)
    if p.is_dir():
        h = hashlib.sha256()
        for name in sorted(os.listdir(p)):
            f = p / name
            if f.is_file() and (name.endswith(".json") or name.endswith(".jinja")):
                h.update(name.encode())
                h.update(f.read_bytes())
        return "files-sha256:" + h.hexdigest()[:16]
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json", revision=revision)
        if isinstance(cached, str):
            return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    except Exception:
        pass
    return revision


class VLLMEngine:
    """`vllm.LLM` with prefix caching; the protocol's batches go to one `generate` call each, and vLLM
    schedules them within its KV cache."""

    def __init__(self, model: str, *, revision: str | None = None, seed: int = 0,
                 engine_args: dict[str, Any] | None = None, sampler: str = "auto") -> None:
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        try:
            import vllm
            from vllm import LLM
        except ImportError as e:
            raise ConfigError(
                f"the vllm backend needs vLLM in this environment ({e}); "
                "pip install 'autotts[collect]' on a GPU machine, or use --backend openai"
            ) from None
        self.model = model
        self.revision = revision
        self.vllm_version = vllm.__version__
        kwargs: dict[str, Any] = {"model": model, "revision": revision, "seed": seed,
                                  "enable_prefix_caching": True, "disable_log_stats": False}
        kwargs.update(engine_args or {})
        use_processor = sampler in ("auto", "autotts") and not _uses_v2_runner(kwargs)
        if use_processor:
            from autotts.collect.sampler import PositionSeededSampler

            kwargs["logits_processors"] = [PositionSeededSampler]
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:
            raise EngineError(f"vLLM could not start {model!r}: {e}") from e
        self.tokenizer = self.llm.get_tokenizer()
        cfg = self.llm.llm_engine.vllm_config
        self.max_model_len = int(cfg.model_config.max_model_len)
        self.capacity = int(cfg.scheduler_config.max_num_seqs)  # sequences batched per step
        self.sampler = "native"
        self.continuation_exact = False
        if sampler == "auto":
            candidates = ["autotts"] if use_processor else ["native"]
            select_sampler(self, candidates, self.encode(CALIBRATION_TEXT))
        else:
            self.sampler = sampler
            self.continuation_exact = sampler != "reseed" and continuation_matches(
                self, self.encode(CALIBRATION_TEXT)
            )

    def info(self) -> dict[str, Any]:
        return {"backend": "vllm", "vllm_version": self.vllm_version,
                "max_model_len": self.max_model_len,
                "revision": _model_revision(self.model, self.revision)}

    def chat_prompt(self, messages: list[dict[str, str]], template_kwargs: dict[str, Any]) -> tuple[list[int], str]:
        try:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False, **template_kwargs
            )
        except Exception as e:
            raise EngineError(f"cannot render the chat template of {self.model!r}: {e}") from e
        return self.encode(text), text

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def _params(self, r: Request) -> Any:
        from vllm import SamplingParams

        common: dict[str, Any] = {"max_tokens": r.max_tokens, "detokenize": False,
                                  "ignore_eos": r.ignore_eos, "logprobs": r.logprobs or None}
        s = r.sampling
        if s is None:
            return SamplingParams(temperature=0.0, **common)
        if self.sampler == "autotts":
            return SamplingParams(temperature=0.0, extra_args=sampler_xargs(r), **common)
        return SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or -1,
                              seed=call_seed(self.sampler, r.seed, len(r.prompt)), **common)

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        from vllm.inputs import TokensPrompt

        if not requests:
            return []
        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt)) for r in requests]
        try:
            outs = self.llm.generate(prompts, [self._params(r) for r in requests], use_tqdm=False)
        except Exception as e:
            raise EngineError(f"vLLM generate failed: {e}") from e
        result = []
        for r, o in zip(requests, outs, strict=True):
            c = o.outputs[0]
            ids = list(c.token_ids)
            lps = tops = None
            if r.logprobs and c.logprobs is not None:
                lps = [d[t].logprob for t, d in zip(ids, c.logprobs, strict=True)]
                tops = [sorted((x.logprob for x in d.values() if x.rank is not None
                                and x.rank <= r.logprobs), reverse=True) for d in c.logprobs]
            result.append(Completion(ids, _finish(c.finish_reason), lps, tops,
                                     cached_tokens=o.num_cached_tokens))
        return result

    def kv_cache_tokens(self) -> int | None:
        cc = self.llm.llm_engine.vllm_config.cache_config
        if not cc.num_gpu_blocks:
            return None
        return int(cc.num_gpu_blocks) * int(cc.block_size)

    def prefix_cache_stats(self) -> dict[str, float]:
        """vLLM's prefix-cache counters (queries and hits, in tokens)."""
        out: dict[str, float] = {}
        for m in self.llm.get_metrics():
            if m.name in ("vllm:prefix_cache_queries", "vllm:prefix_cache_hits"):
                key = m.name.split(":")[1]  # one entry per engine: they add up
                out[key] = out.get(key, 0.0) + float(m.value)
        return out

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            with contextlib.suppress(Exception):
                llm.llm_engine.engine_core.shutdown()
            self.llm = None


def _uses_v2_runner(kwargs: dict[str, Any]) -> bool:
    """Whether vLLM will pick its V2 model runner (which keys noise by position itself and rejects
    V1-interface logits processors)."""
    try:
        from vllm.engine.arg_utils import EngineArgs

        known = {k: v for k, v in kwargs.items() if k in EngineArgs.__dataclass_fields__}
        return bool(EngineArgs(**known).create_engine_config().use_v2_model_runner)
    except Exception:
        return False


def _finish(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


# ------------------------------------------------------------------------------------------------
# OpenAI-compatible server (vLLM's /v1/completions with token ids in and out)


class OpenAIEngine:
    """Requests go to the server concurrently (it batches them); prompts are token ids and the
    generated token ids come back via vLLM's `return_token_ids`. The chat template and decoding use
    the server's /tokenize and /detokenize, so the client needs no tokenizer of its own."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 concurrency: int = 256, timeout: float = 3600.0, sampler: str = "auto") -> None:
        try:
            import openai
        except ImportError:
            raise ConfigError("the openai backend needs the openai package (pip install openai)") from None
        base = base_url.rstrip("/")
        self.api_base = base if base.endswith("/v1") else base + "/v1"
        self.root = self.api_base[: -len("/v1")]
        self.model = model
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.client = openai.OpenAI(base_url=self.api_base, api_key=self.api_key,
                                    timeout=timeout, max_retries=2)
        self.pool = ThreadPoolExecutor(max_workers=max(1, concurrency))
        self.capacity = max(1, concurrency)
        version = self._get("/version")
        self.vllm_version = version.get("version") if isinstance(version, dict) else None
        tok = self._post("/tokenize", {"model": model, "prompt": "x", "add_special_tokens": False})
        self.max_model_len = int(tok.get("max_model_len") or 0) or None
        self.sampler = "native"
        self.continuation_exact = False
        cal = self.encode(CALIBRATION_TEXT)
        if sampler == "auto":
            select_sampler(self, ["native", "autotts"], cal)
        else:
            self.sampler = sampler
            self.continuation_exact = sampler != "reseed" and continuation_matches(self, cal)

    # -- plumbing
    def _http(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.root + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")[:300]
            raise EngineError(f"{self.root}{path}: HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError, json.JSONDecodeError) as e:
            raise EngineError(f"{self.root}{path}: {e}") from None

    def _get(self, path: str) -> Any:
        try:
            return self._http("GET", path, None)
        except EngineError:
            return None

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        return self._http("POST", path, body)

    # -- tokenizer side
    def info(self) -> dict[str, Any]:
        return {"backend": "openai", "vllm_version": self.vllm_version,
                "max_model_len": self.max_model_len, "revision": None}

    def chat_prompt(self, messages: list[dict[str, str]], template_kwargs: dict[str, Any]) -> tuple[list[int], str]:
        r = self._post("/tokenize", {"model": self.model, "messages": messages,
                                     "add_generation_prompt": True,
                                     "chat_template_kwargs": template_kwargs})
        ids = [int(t) for t in r["tokens"]]
        return ids, self.decode_raw(ids)

    def encode(self, text: str) -> list[int]:
        r = self._post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        return [int(t) for t in r["tokens"]]

    def decode_raw(self, ids: Sequence[int]) -> str:
        return str(self._post("/detokenize", {"model": self.model, "tokens": list(ids)})["prompt"])

    def decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        return self.decode_raw(ids)

    # -- generation
    def _one(self, r: Request) -> Completion:
        import openai

        extra: dict[str, Any] = {"return_token_ids": True, "ignore_eos": r.ignore_eos}
        kw: dict[str, Any] = {"model": self.model, "prompt": list(r.prompt),
                              "max_tokens": r.max_tokens}
        s = r.sampling
        if s is None:
            kw["temperature"] = 0.0
        elif self.sampler == "autotts":
            kw["temperature"] = 0.0
            extra["vllm_xargs"] = sampler_xargs(r)
        else:
            kw.update(temperature=s.temperature, top_p=s.top_p,
                      seed=call_seed(self.sampler, r.seed, len(r.prompt)))
            extra["top_k"] = s.top_k or -1
        if r.logprobs:
            kw["logprobs"] = r.logprobs
            extra["return_tokens_as_token_ids"] = True
        try:
            resp = self.client.completions.create(extra_body=extra, **kw)
        except openai.OpenAIError as e:
            raise EngineError(f"{self.api_base}/completions: {e}") from None
        ch = resp.choices[0]
        ids = getattr(ch, "token_ids", None)
        if ids is None:
            raise EngineError(
                f"{self.api_base} returned no token ids: the collector needs a vLLM server "
                "that supports return_token_ids"
            )
        lps = tops = None
        if r.logprobs and ch.logprobs is not None:
            lps = [float(x) for x in ch.logprobs.token_logprobs or []]
            tops = [sorted((float(v) for v in (d or {}).values()), reverse=True)[: r.logprobs]
                    for d in ch.logprobs.top_logprobs or []]
        cached = None
        details = getattr(resp.usage, "prompt_tokens_details", None) if resp.usage else None
        if details is not None and getattr(details, "cached_tokens", None) is not None:
            cached = int(details.cached_tokens)
        return Completion([int(t) for t in ids], _finish(ch.finish_reason), lps, tops, cached,
                          text=ch.text)

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        return list(self.pool.map(self._one, requests))

    def _metrics(self) -> str:
        req = urllib.request.Request(self.root + "/metrics")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.read().decode()
        except (urllib.error.URLError, OSError):
            return ""

    def prefix_cache_stats(self) -> dict[str, float]:
        """The server's prefix-cache counters from its Prometheus /metrics."""
        return parse_prefix_metrics(self._metrics())

    def kv_cache_tokens(self) -> int | None:
        """The server's KV cache size, from the `vllm:cache_config_info` metric when exposed."""
        return parse_cache_tokens(self._metrics())

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def parse_cache_tokens(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("vllm:cache_config_info{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            try:
                return int(labels["num_gpu_blocks"]) * int(labels["block_size"])
            except (KeyError, ValueError):
                return None
    return None


def parse_prefix_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        for key in ("prefix_cache_queries", "prefix_cache_hits"):
            if line.startswith(f"vllm:{key}_total"):
                out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def open_engine(backend: str, model: str, *, base_url: str | None = None,
                revision: str | None = None, seed: int = 0,
                engine_args: dict[str, Any] | None = None, sampler: str = "auto") -> Engine:
    if sampler not in ("auto", "autotts", "native", "reseed"):
        raise ConfigError(f"--sampler must be auto, autotts, native or reseed, got {sampler!r}")
    if backend == "vllm":
        return VLLMEngine(model, revision=revision, seed=seed, engine_args=engine_args,
                          sampler=sampler)
    if backend == "openai":
        if not base_url:
            raise ConfigError("--backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1)")
        conc = int((engine_args or {}).get("concurrency", 256))
        return OpenAIEngine(base_url, model, concurrency=conc, sampler=sampler)
    if backend == "fake":
        return FakeEngine()
    raise ConfigError(f"--backend must be vllm or openai, got {backend!r}")
