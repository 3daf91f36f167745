"""The agent client: chat completions against any OpenAI-compatible endpoint, with a response
cache, retries, per-request accounting and a spend cap.

Every request goes through `Agent.chat`:
  1. its key is the SHA-256 of (model, messages, sampling parameters); a cached response is
     returned at once, with no HTTP call and no client (so a cached run replays offline, keyless);
  2. otherwise the spend cap is checked against a pessimistic estimate of this request (prompt
     characters / 3 tokens in, max_tokens out) and the request is refused if it could cross it;
  3. the request is sent with the `openai` client, retried with exponential backoff (honouring
     Retry-After) on 429, 5xx, timeouts, connection errors and unreadable bodies;
  4. the response is written to the cache *before* anything else happens with it, then every
     attempt is logged to requests.jsonl (time, purpose, round, status, tokens, cost, latency).
Cost = prompt tokens × input price + completion tokens × output price (config.DEFAULT_PRICES,
extended by AUTOTTS_PRICES).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotts.discover.config import DiscoverConfig, price_for
from autotts.errors import AgentError, ConfigError, SpendCapReached
from autotts.fsio import append_jsonl, read_json, read_jsonl, write_json

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}


@dataclass
class ChatResult:
    key: str
    content: str | None
    response: dict[str, Any]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    cached: bool

    def accounting(self, purpose: str) -> dict[str, Any]:
        """What cost.json records: the original call's tokens and cost even when this run read
        the response from the cache (the money was spent once, by that call)."""
        return {
            "purpose": purpose,
            "key": self.key,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


def request_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def message_content(response: dict[str, Any]) -> str | None:
    """The first choice's text, or None when the response has none (malformed, refusal)."""
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    msg = choices[0].get("message")
    if not isinstance(msg, dict):
        return None
    content = msg.get("content")
    return content if isinstance(content, str) else None


def _usage(response: dict[str, Any]) -> tuple[int, int]:
    u = response.get("usage") if isinstance(response.get("usage"), dict) else {}
    def num(k: str) -> int:
        v = u.get(k)
        return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0
    return num("prompt_tokens"), num("completion_tokens")


class ResponseCache:
    """One JSON file per request key. Entries are written atomically, so a crash leaves either
    the whole entry or none."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            entry = read_json(p)
        except (OSError, json.JSONDecodeError):
            return None  # treat an unreadable entry as a miss; the request is simply redone
        return entry if isinstance(entry, dict) and "response" in entry else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        write_json(self.path(key), entry)


class Agent:
    def __init__(self, cfg: DiscoverConfig, log_path: Path) -> None:
        self.cfg = cfg
        self.log_path = log_path
        self.cache = ResponseCache(cfg.cache_path())
        self.price = price_for(cfg.model or "", cfg.prices)
        self._client: Any = None
        self.http_calls = 0
        self.llm_seconds = 0.0  # time spent waiting on the endpoint (HTTP + backoff)
        # Spending so far, over every invocation of this run: the log is the ledger.
        self.spent_usd = sum(
            float(r.get("cost_usd") or 0.0) for r in read_jsonl(log_path) if r.get("http")
        )
        self.cap_reached = (
            cfg.budget_usd is not None and self.spent_usd >= cfg.budget_usd and self.spent_usd > 0
        )

    # ---- cost ---------------------------------------------------------------------------------

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.price is None:
            return None
        return (prompt_tokens * self.price["input"] + completion_tokens * self.price["output"]) / 1e6

    def estimate(self, messages: list[dict[str, Any]]) -> float:
        chars = sum(len(str(m.get("content", ""))) for m in messages)
        return self.cost(chars // 3 + 16, self.cfg.max_tokens) or 0.0

    def check_budget(self) -> None:
        """Refuse to run without a price when a cap is set: the cap could not be enforced."""
        if self.cfg.budget_usd is not None and self.price is None and not self.cfg.offline:
            raise ConfigError(
                f"no price known for model {self.cfg.model!r}, so the spend cap cannot be "
                "enforced: add it to AUTOTTS_PRICES (USD per million tokens; 0 for a local server)"
            )

    # ---- the request --------------------------------------------------------------------------

    def _get_client(self) -> Any:
        if self._client is None:
            try:
                from openai import OpenAI
            except ImportError:
                raise ConfigError(
                    "discover needs the openai package: pip install 'autotts[agent]'"
                ) from None
            key = self.cfg.api_key
            if not key:
                url = self.cfg.base_url or ""
                if "127.0.0.1" in url or "localhost" in url:
                    key = "EMPTY"  # a local `vllm serve` accepts any key
                else:
                    raise ConfigError(
                        "no API key: set OPENAI_API_KEY (or AUTOTTS_API_KEY); for a local server "
                        "give --base-url http://127.0.0.1:PORT/v1"
                    )
            # Retries are ours (logged, with backoff we control), not the client's.
            self._client = OpenAI(api_key=key, base_url=self.cfg.base_url or None,
                                  timeout=self.cfg.request_timeout, max_retries=0)
        return self._client

    def _log(self, entry: dict[str, Any]) -> None:
        append_jsonl(self.log_path, {"time": round(time.time(), 3), **entry})

    def chat(self, messages: list[dict[str, Any]], *, purpose: str, round_no: int,
             model: str | None = None) -> ChatResult:
        model = model or self.cfg.model
        if not model:
            raise ConfigError("no model: give --model or set AUTOTTS_MODEL")
        params = self.cfg.request_params()
        key = request_key(model, messages, params)
        hit = self.cache.get(key)
        if hit is not None:
            res = self._result(key, hit, cached=True)
            self._log({"purpose": purpose, "round": round_no, "key": key, "model": model,
                       "http": False, "cached": True, "status": "cache"})
            return res
        if self.cfg.offline:
            raise AgentError(
                f"offline replay: no cached response for round {round_no} ({purpose}, key "
                f"{key[:12]}); unset AUTOTTS_OFFLINE to ask the model"
            )
        cap = self.cfg.budget_usd
        if cap is not None:
            est = self.estimate(messages)
            if self.spent_usd + est > cap:
                raise SpendCapReached(
                    f"spend cap: ${self.spent_usd:.4f} spent, the next request could cost up to "
                    f"${est:.4f}, cap ${cap:.2f}"
                )
        response = self._send(model, messages, params, purpose, round_no, key)
        pt, ct = _usage(response)
        cost = self.cost(pt, ct)
        entry = {"key": key, "model": model, "base_url": self.cfg.base_url, "params": params,
                 "messages": messages, "response": response, "prompt_tokens": pt,
                 "completion_tokens": ct, "cost_usd": cost}
        self.cache.put(key, entry)
        self.spent_usd += cost or 0.0
        self._log({"purpose": purpose, "round": round_no, "key": key, "model": model,
                   "http": True, "status": "ok", "prompt_tokens": pt, "completion_tokens": ct,
                   "cost_usd": cost, "spent_usd": round(self.spent_usd, 6)})
        if cap is not None and self.spent_usd >= cap:
            self.cap_reached = True
        return self._result(key, entry, cached=False)

    def _result(self, key: str, entry: dict[str, Any], *, cached: bool) -> ChatResult:
        response = entry["response"]
        return ChatResult(
            key=key,
            content=message_content(response) if isinstance(response, dict) else None,
            response=response if isinstance(response, dict) else {"raw": response},
            prompt_tokens=int(entry.get("prompt_tokens") or 0),
            completion_tokens=int(entry.get("completion_tokens") or 0),
            cost_usd=entry.get("cost_usd"),
            cached=cached,
        )

    def _send(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any],
              purpose: str, round_no: int, key: str) -> dict[str, Any]:
        import openai

        client = self._get_client()
        rng = random.Random(key)
        last = ""
        for attempt in range(1, self.cfg.max_attempts + 1):
            t0 = time.monotonic()
            retry_after: float | None = None
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=model, messages=messages, **params
                )
                self.http_calls += 1
                self.llm_seconds += time.monotonic() - t0
                text = raw.http_response.text
                try:
                    data = json.loads(text)
                except json.JSONDecodeError:
                    data = None
                if isinstance(data, dict):
                    return data
                status, last = "unreadable", f"unreadable response body: {text[:120]!r}"
            except openai.APIStatusError as e:
                self.http_calls += 1
                self.llm_seconds += time.monotonic() - t0
                code = e.status_code
                last = f"HTTP {code}: {_short(e)}"
                if code not in RETRY_STATUS:
                    self._log({"purpose": purpose, "round": round_no, "key": key, "model": model,
                               "http": True, "status": str(code), "attempt": attempt,
                               "error": last, "cost_usd": 0.0})
                    raise AgentError(f"{model} at {self.cfg.base_url or 'api.openai.com'}: "
                                     f"{last}") from None
                status = str(code)
                retry_after = _retry_after(e)
            except openai.APITimeoutError:
                self.http_calls += 1
                self.llm_seconds += time.monotonic() - t0
                status, last = "timeout", f"no answer within {self.cfg.request_timeout:g} s"
            except openai.APIConnectionError as e:
                self.llm_seconds += time.monotonic() - t0
                status, last = "connection", f"connection failed: {_short(e)}"
            self._log({"purpose": purpose, "round": round_no, "key": key, "model": model,
                       "http": True, "status": status, "attempt": attempt, "error": last,
                       "cost_usd": 0.0})
            if attempt == self.cfg.max_attempts:
                break
            wait = self.cfg.retry_base_s * 2 ** (attempt - 1) * (0.75 + 0.5 * rng.random())
            if retry_after is not None:
                wait = max(wait, retry_after)
            wait = min(wait, 120.0)
            time.sleep(wait)
            self.llm_seconds += wait
        raise AgentError(
            f"{model} at {self.cfg.base_url or 'api.openai.com'}: gave up after "
            f"{self.cfg.max_attempts} attempts ({last}); rerun to resume"
        )


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _retry_after(e: Any) -> float | None:
    try:
        v = e.response.headers.get("retry-after")
        return None if v is None else min(120.0, max(0.0, float(v)))
    except (AttributeError, ValueError, TypeError):
        return None

