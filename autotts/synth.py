"""A synthetic replay generator (`autotts synth`): a seeded stochastic model of reasoning branches.

It writes a normal replay store (DESIGN §4), so everything that reads a store (the engine, the
evaluator, `inspect`, `demo`, the tests) works on it without a GPU or the reference data. It is
calibrated so that its summary statistics sit in the range of the published Qwen3 AIME stores;
docs/synthetic.md shows both side by side.

The model, per question q (all draws from one numpy Generator seeded by (seed, q), so question q
is the same whatever the number of questions):

  difficulty      d_q ~ Normal(0, difficulty_sd); a branch is right with p_q = sigmoid(skill − d_q)
  answers         a gold answer (an integer 0..999, AIME style); 1 + Poisson(attractors) competing
                  wrong answers with Dirichlet(attractor_alpha) weights; a wrong branch ends on one
                  of them, or with probability tail + tail_hard·(1 − p_q) on a long-tail answer:
                  one of the question's few 'intermediate' numbers (probability tail_reuse) or a
                  fresh random integer (a model that rarely solves a question scatters more)
  length          thinking tokens H ~ LogNormal(μ, length_sd) with, for a right branch,
                  μ = log(length_right) + length_hard·(1 − p_q) + s_q (right answers come fast on
                  easy questions, slowly on hard ones) and, for a wrong one,
                  μ = log(length_wrong) + length_wrong_hard·(1 − p_q) + s_q, where
                  s_q = length_skill·skill + Normal(0, length_question_sd). Probes
                  L = clip(⌊H/Δ⌋, min_probes, max_probes). A branch that reaches max_probes was
                  cut off: its final is 'ERR' with probability truncated_err (else err_final)
  total tokens    T = L·Δ + D, D = Gamma(2, answer_scale) − answer_shift: the tokens after the last
                  probe (so, as in the published data, L·Δ > T for a minority of branches), at
                  most max_probes·Δ + overflow_tokens
  probes          a branch finds its answer V intervals before its end and spends them checking,
                  V = min(verify_share·L, verify_max)·Gamma(verify_shape, 1/verify_shape): short
                  branches commit early (relative to L), long ones late, as in the reference data.
                  Probes after that show the committed answer (with probability blip +
                  blip_hard·(1 − p_q) a stray pool answer instead). Before it, probes drift as a
                  sticky chain: keep the previous answer with probability `stickiness`, else draw
                  the committed answer with probability emerge·(k/commit)^emerge_power or a pool
                  answer (gold with probability explore_gold, a competing answer with probability
                  explore_attractor, else mostly an 'intermediate' number, sometimes a random one).
                  Any probe is 'ERR' with probability err_probe.

The result matches the reference stores on the figures in docs/synthetic.md (pass@1 and majority
accuracy by skill, token and probe distributions, 'ERR' shares, the answer-convergence curve), and
on one behaviour that matters for controllers: the leader among probes never gets ahead of the
final majority by much, so probing controllers do not look better here than they are on real data.

`generate(SynthParams(...))` builds the store in memory; `write_synthetic` writes it. The same
parameters and seed always give identical tables.
"""

from __future__ import annotations

import itertools
import math
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from autotts.errors import ConfigError
from autotts.store import Store, from_autotts_records, write_store

GENERATOR_VERSION = 1
ERR = "ERR"


@dataclass(frozen=True)
class SynthParams:
    """Every knob of the generator. The defaults are calibrated to the reference stores; `skill`
    moves pass@1 (expected pass@1 is 50% at skill 0; about -3.5 ≈ Qwen3-0.6B, -1 ≈ 1.7B,
    1.5 ≈ 4B, 2 ≈ 8B on AIME)."""

    questions: int = 50
    branches: int = 64
    seed: int = 0
    delta: int = 500
    skill: float = 0.0
    model: str = "synthetic"
    benchmark: str = ""  # empty: "seed<seed>"
    # difficulty and answers
    difficulty_sd: float = 3.5
    attractors: float = 2.0
    attractor_alpha: float = 0.6
    tail: float = 0.3
    tail_hard: float = 0.35
    tail_reuse: float = 0.4
    intermediates: int = 6
    # lengths
    length_right: float = 7000.0
    length_hard: float = 1.0
    length_wrong: float = 19000.0
    length_wrong_hard: float = 0.0
    length_skill: float = 0.09
    length_question_sd: float = 0.2
    length_sd: float = 0.45
    min_probes: int = 2
    max_probes: int = 80
    overflow_tokens: int = 1500
    answer_scale: float = 350.0
    answer_shift: float = 250.0
    # probes and errors
    verify_share: float = 0.5
    verify_max: float = 10.0
    verify_shape: float = 2.0
    emerge: float = 0.2
    emerge_power: float = 3.0
    stickiness: float = 0.6
    explore_gold: float = 0.0
    explore_attractor: float = 0.25
    blip: float = 0.03
    blip_hard: float = 0.15
    err_probe: float = 0.06
    err_final: float = 0.004
    truncated_err: float = 0.3

    def check(self) -> None:
        if self.questions < 1 or self.branches < 1:
            raise ConfigError("synth needs at least one question and one branch")
        if self.delta < 1:
            raise ConfigError(f"--delta must be positive, got {self.delta}")
        if not 1 <= self.min_probes <= self.max_probes:
            raise ConfigError("need 1 <= min_probes <= max_probes")
        for name in ("tail", "tail_hard", "tail_reuse", "stickiness", "emerge", "verify_share",
                     "blip_hard", "explore_gold", "explore_attractor", "blip",
                     "err_probe", "err_final", "truncated_err"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {v}")
        if self.explore_gold + self.explore_attractor > 1.0:
            raise ConfigError("explore_gold + explore_attractor must not exceed 1")
        for name in ("difficulty_sd", "length_sd", "answer_scale", "verify_shape",
                     "attractor_alpha", "length_right", "length_wrong"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive")

    @property
    def store_benchmark(self) -> str:
        return self.benchmark or f"seed{self.seed}"

    def command(self, out: str | Path) -> str:
        """The `autotts synth` command line that regenerates this store (non-default knobs only)."""
        parts = ["autotts", "synth", "--out", str(out), "--seed", str(self.seed),
                 "--questions", str(self.questions), "--branches", str(self.branches)]
        defaults = SynthParams()
        for f in fields(self):
            if f.name in ("questions", "branches", "seed"):
                continue
            v = getattr(self, f.name)
            if v != getattr(defaults, f.name):
                flag = "--" + f.name.replace("_", "-")
                if f.name in CLI_KNOBS:
                    parts += [flag, str(v)]
                else:
                    parts += ["--set", f"{f.name}={v}"]
        return shlex.join(parts)


CLI_KNOBS = ("delta", "skill", "model", "benchmark")


def with_overrides(params: SynthParams, overrides: dict[str, Any]) -> SynthParams:
    """`--set KEY=VALUE` for any generator knob, with the knob's own type."""
    known = {f.name: f for f in fields(SynthParams)}
    values = asdict(params)
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"synth has no knob {key!r} (knobs: {', '.join(sorted(known))})")
        kind = type(getattr(SynthParams(), key))
        try:
            values[key] = kind(value) if kind is not int else int(str(value))
        except (TypeError, ValueError):
            raise ConfigError(f"synth knob {key}: expected {kind.__name__}, got {value!r}") from None
    return SynthParams(**values)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _question(p: SynthParams, qi: int) -> dict[str, Any]:
    rng = np.random.default_rng([p.seed, qi])
    d = float(rng.normal(0.0, p.difficulty_sd))
    p_right = _sigmoid(p.skill - d)

    # the question's answers: gold, competing wrong answers, 'intermediate' numbers
    n_att = 1 + int(rng.poisson(p.attractors))
    pool = rng.permutation(1000)[: 1 + n_att + p.intermediates]
    gold = str(int(pool[0]))
    attract = [str(int(x)) for x in pool[1 : 1 + n_att]]
    inter = [str(int(x)) for x in pool[1 + n_att :]]
    att_w = rng.dirichlet(np.full(n_att, p.attractor_alpha))
    gold_int = int(gold)

    def random_wrong() -> str:
        x = int(rng.integers(0, 999))
        return str(x if x < gold_int else x + 1)  # any integer 0..999 but the gold

    tail = min(1.0, p.tail + p.tail_hard * (1.0 - p_right))

    def intermediate() -> str:
        return inter[min(int(rng.geometric(0.35)) - 1, len(inter) - 1)]

    def wrong_answer() -> str:
        if rng.random() < tail:
            if inter and rng.random() < p.tail_reuse:
                return inter[int(rng.integers(len(inter)))]
            return random_wrong()
        return attract[int(rng.choice(n_att, p=att_w))]

    def explore() -> str:
        u = rng.random()
        if u < p.explore_gold:
            return gold
        if u < p.explore_gold + p.explore_attractor:
            return attract[int(rng.choice(n_att, p=att_w))]
        if inter and rng.random() < 0.75:
            return intermediate()
        return random_wrong()

    shared = float(rng.normal(0.0, p.length_question_sd))  # this question's own length
    shared += p.length_skill * p.skill  # stronger models think longer
    log_right = math.log(p.length_right) + p.length_hard * (1.0 - p_right) + shared
    log_wrong = math.log(p.length_wrong) + p.length_wrong_hard * (1.0 - p_right) + shared
    blip = min(1.0, p.blip + p.blip_hard * (1.0 - p_right))  # unsure on questions it rarely solves
    branches = []
    for _ in range(p.branches):
        right = rng.random() < p_right
        final = gold if right else wrong_answer()
        think = float(rng.lognormal(log_right if right else log_wrong, p.length_sd))
        n = int(min(max(think // p.delta, p.min_probes), p.max_probes))
        truncated = think / p.delta >= p.max_probes
        committed = final
        if rng.random() < (p.truncated_err if truncated else p.err_final):
            final = ERR  # the probes still show what the branch was converging to
            if truncated:
                committed = wrong_answer()
        tail_tokens = float(rng.gamma(2.0, p.answer_scale)) - p.answer_shift
        tokens = max(1, min(round(n * p.delta + tail_tokens),
                            p.max_probes * p.delta + p.overflow_tokens))

        # the answer is found `verify` intervals before the end, then checked and written up
        verify = min(p.verify_share * n, p.verify_max) * float(
            rng.gamma(p.verify_shape, 1.0 / p.verify_shape))
        commit = max(0, n - round(verify))  # probes k > commit show the committed answer
        probes: list[str] = []
        current: str | None = None
        for k in range(1, n + 1):
            if k > commit:
                ans = committed if rng.random() >= blip else explore()
            else:
                if current is None or rng.random() >= p.stickiness:
                    emerging = p.emerge * (k / commit) ** p.emerge_power
                    current = committed if rng.random() < emerging else explore()
                ans = current
            probes.append(ERR if rng.random() < p.err_probe else ans)
        branches.append([probes, int(tokens), final])
    return {
        "question": f"Synthetic question {qi} (seed {p.seed}, difficulty {d:+.2f})",
        "gold_answer": gold,
        "probe_freq": p.delta,
        "final_answers_trace": [b[2] for b in branches],
        "each_branch": branches,
    }


def generate_records(params: SynthParams) -> list[dict[str, Any]]:
    """The synthetic questions in the published AutoTTS JSON layout."""
    params.check()
    return [_question(params, qi) for qi in range(params.questions)]


def generate(params: SynthParams | None = None) -> Store:
    """Build a synthetic store in memory (not written)."""
    params = params or SynthParams()
    records = generate_records(params)
    store = from_autotts_records(
        records, model=params.model, benchmark=params.store_benchmark, answers="exact",
        origin="<synthetic>",
        source={"kind": "synthetic", "generator": "autotts.synth",
                "generator_version": GENERATOR_VERSION},
    )
    store.manifest["sampling"] = {
        "generator": "autotts.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": params.seed,
        "params": asdict(params),
    }
    store.manifest["probe_template"] = None
    return store


def write_synthetic(params: SynthParams, out: str | Path) -> Store:
    """Generate and write a synthetic store to `out` (atomically); record the command."""
    store = generate(params)
    store.manifest["source"]["command"] = params.command(out)
    write_store(store, out)
    return store


# ---- calibration statistics -------------------------------------------------------------------


def convergence_curve(store: Store, bins: int = 10) -> np.ndarray:
    """The answer-convergence curve: percent of probes equal to their branch's final answer, by
    relative depth k/L (probe k of L, bins of equal width over (0, 1]). 'ERR' probes count as not
    equal. Compared on answer strings, so it does not depend on the answer mode."""
    b = store.branches
    finals = b.column("final_answer").to_pylist()
    hit = np.zeros(bins)
    total = np.zeros(bins)
    for probes, final in zip(b.column("probe_answers").to_pylist(), finals, strict=True):
        n = len(probes)
        if not n:
            continue
        idx = np.minimum(np.ceil(np.arange(1, n + 1) * bins / n).astype(int) - 1, bins - 1)
        eq = np.fromiter((s.strip() == final.strip() for s in probes), dtype=bool, count=n)
        np.add.at(total, idx, 1)
        np.add.at(hit, idx, eq)
    return 100.0 * hit / np.maximum(total, 1)


def calibration_stats(store: Store) -> dict[str, Any]:
    """The figures the generator is calibrated on: `summarize` plus distinct finals per question,
    probe stickiness, wrong/right length ratio and the convergence curve."""
    from autotts.summary import summarize

    s = summarize(store)
    golds = store.questions.column("gold").to_pylist()
    qidx = store.branches.column("question_idx").to_numpy()
    tokens = store.branches.column("tokens").to_numpy()
    finals = store.branches.column("final_answer").to_pylist()
    right = np.array([f.strip() == golds[q].strip() for f, q in zip(finals, qidx, strict=True)])
    distinct = np.bincount([q for q, _ in set(zip(qidx.tolist(), finals, strict=True))],
                           minlength=store.num_questions)
    same = pairs = 0
    for probes in store.branches.column("probe_answers").to_pylist():
        pairs += max(0, len(probes) - 1)
        same += sum(a == b for a, b in itertools.pairwise(probes))
    ratio = (float(tokens[~right].mean() / tokens[right].mean())
             if right.any() and (~right).any() else float("nan"))
    return {
        "store": s["store"],
        "questions": s["questions"],
        "branches_per_question": s["branches_per_question"]["mean"],
        "pass_at_1": s["pass_at_1"],
        "majority_accuracy": s["majority_accuracy"],
        "tokens_mean": s["tokens"]["mean"],
        "tokens_median": s["tokens"]["median"],
        "tokens_max": s["tokens"]["max"],
        "probes_per_branch_mean": s["probes_per_branch"]["mean"],
        "probes_per_branch_max": s["probes_per_branch"]["max"],
        "err_share_probes": s["err_share_probes"],
        "err_share_finals": s["err_share_finals"],
        "probes_beyond_tokens_share": s["probes_beyond_tokens_share"],
        "distinct_finals_per_question": float(np.mean(distinct)),
        "probe_stickiness": 100.0 * same / max(1, pairs),
        "wrong_right_length_ratio": ratio,
        "convergence": [round(float(x), 1) for x in convergence_curve(store)],
    }
