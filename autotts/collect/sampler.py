"""Position-keyed sampling for vLLM's V1 model runner, so that continuing a branch from its token ids
draws exactly the tokens that one uninterrupted generation would have drawn.

Why: the collector generates every branch in rounds of Δ tokens and probes in between. vLLM's V1
model runner (its CPU backend, and GPUs where the V2 runner is unavailable) seeds a fresh
`torch.Generator` per request, so a continuation request with the branch's seed replays the noise of
the branch's first tokens instead of drawing fresh noise. This processor replaces that noise by
Gumbel noise that is a pure function of (seed, absolute position, token id): sampling becomes
`argmax(logits / T + masked top-k/top-p + gumbel(seed, pos))`, which is an exact draw from the
tempered, truncated distribution and does not depend on where requests start or stop.

Requests opt in through `SamplingParams.extra_args` (the OpenAI server's `vllm_xargs`) with
temperature 0, so that vLLM itself takes the argmax of the processed logits:

    {"autotts_seed": int, "autotts_temperature": float, "autotts_top_p": float, "autotts_top_k": int}

Other requests pass through untouched. vLLM's V2 model runner (the GPU default in recent vLLM)
already keys its Gumbel noise by (seed, position) and rejects V1-interface processors; the engines
detect which behaviour they got with a self-check (`selftest.check_continuation`).

Load it with `LLM(..., logits_processors=[PositionSeededSampler])` or, for a server,
`--logits-processors autotts.collect.sampler:PositionSeededSampler`.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2**32 for x < 2**32 held in int64, split so no product overflows 63 bits.
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # MurmurHash3's 32-bit finalizer: a bijection with good avalanche.
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def gumbel_noise(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [rows, vocab], a pure function of (seed, position, token id)."""
    dev = seeds.device
    s = seeds.to(torch.int64)
    k = _mix32((s & _M32) ^ _mix32(((s >> 32) & _M32) ^ 0x9E3779B9))
    k = _mix32(k ^ _mix32((positions.to(torch.int64) + 0x7F4A7C15) & _M32))
    v = _mix32(torch.arange(vocab, device=dev, dtype=torch.int64) ^ 0x6A09E667)
    h = _mix32(k[:, None] ^ v[None, :])
    h = _mix32((h + k[:, None]) & _M32)
    u = ((h >> 8).to(torch.float64) + 0.5) / float(1 << 24)  # in (0, 1), never 0 or 1
    return (-torch.log(-torch.log(u))).to(torch.float32)


def truncate(logits: torch.Tensor, top_p: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Mask logits outside top-k (k <= 0: off) and the top-p nucleus, as vLLM's sampler does."""
    vocab = logits.shape[-1]
    srt, idx = logits.sort(dim=-1, descending=False)
    k = torch.where(top_k <= 0, torch.full_like(top_k, vocab), top_k.clamp(max=vocab))
    kth = srt.gather(1, (vocab - k).to(torch.int64).unsqueeze(1))
    srt = srt.masked_fill(srt < kth, -float("inf"))
    cum = srt.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= (1 - top_p).unsqueeze(1)
    drop[:, -1] = False  # always keep the most likely token
    srt = srt.masked_fill(drop, -float("inf"))
    return torch.empty_like(logits).scatter_(1, idx, srt)


class PositionSeededSampler(LogitsProcessor):
    """See the module docstring."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        # batch row -> (seed, temperature, top_p, top_k, prompt length, live output token ids)
        self.rows: dict[int, tuple[int, float, float, int, int, list[int]]] = {}

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        xa = sampling_params.extra_args or {}
        if "autotts_seed" not in xa:
            return
        if sampling_params.temperature != 0:
            raise ValueError("autotts_seed requests must use temperature 0 (the processor samples)")
        if not isinstance(xa["autotts_seed"], int):
            raise ValueError("autotts_seed must be an integer")

    def is_argmax_invariant(self) -> bool:
        return False  # it *is* the sampler: it changes which token wins the argmax

    @staticmethod
    def _entry(
        params: SamplingParams, prompt: list[int] | None, output: list[int]
    ) -> tuple[int, float, float, int, int, list[int]] | None:
        xa = params.extra_args or {}
        if "autotts_seed" not in xa:
            return None
        return (
            int(xa["autotts_seed"]),
            float(xa.get("autotts_temperature", 1.0)),
            float(xa.get("autotts_top_p", 1.0)),
            int(xa.get("autotts_top_k", 0)),
            len(prompt or ()),
            output,
        )

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        # Order prescribed by vLLM: removed, added, moved.
        for i in batch_update.removed:
            self.rows.pop(i, None)
        for i, params, prompt, output in batch_update.added:
            entry = self._entry(params, prompt, output)
            if entry is None:
                self.rows.pop(i, None)
            else:
                self.rows[i] = entry
        for a, b, kind in batch_update.moved:
            ea, eb = self.rows.pop(a, None), self.rows.pop(b, None)
            if ea is not None:
                self.rows[b] = ea
            if kind == MoveDirectionality.SWAP and eb is not None:
                self.rows[a] = eb

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        rows = sorted(i for i in self.rows if i < logits.shape[0])
        if not rows:
            return logits
        ent = [self.rows[i] for i in rows]
        dev = logits.device
        idx = torch.tensor(rows, device=dev, dtype=torch.int64)
        seeds = torch.tensor([e[0] for e in ent], device=dev, dtype=torch.int64)
        temp = torch.tensor([e[1] for e in ent], device=dev, dtype=torch.float32)
        top_p = torch.tensor([e[2] for e in ent], device=dev, dtype=torch.float32)
        top_k = torch.tensor([e[3] for e in ent], device=dev, dtype=torch.int64)
        # The token being sampled sits at absolute position prompt + generated so far.
        pos = torch.tensor([e[4] + len(e[5]) for e in ent], device=dev, dtype=torch.int64)
        sub = logits.index_select(0, idx).to(torch.float32) / temp.clamp(min=1e-5).unsqueeze(1)
        sub = truncate(sub, top_p, top_k) + gumbel_noise(seeds, pos, logits.shape[1]).to(dev)
        logits.index_copy_(0, idx, sub.to(logits.dtype))
        return logits
