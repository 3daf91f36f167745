"""The agent's prompt (DESIGN §8), built only from deterministic inputs — the environment, the
search stores' statistics, the seed controllers and the history of rounds — so that a round redone
after a crash sends byte-identical messages and hits the response cache.

Nothing about the held-out split ever enters a prompt: not its paths, not its store names, not its
statistics. The environment section is built from the search split alone.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from autotts.envdef import EnvDef

PROMPT_VERSION = 2
CONTEXT_KEYS = ("store", "beta", "question", "draw", "step", "line")  # of a verdict, for the agent


def _allowed_imports() -> str:
    from autotts.admission import ALLOWED_IMPORTS

    return ", ".join(sorted(ALLOWED_IMPORTS))


def episode_api() -> str:
    from autotts.engine import Episode

    return inspect.getdoc(Episode) or ""


def _tok(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


SYSTEM = """\
You are a research engineer designing test-time-scaling (TTS) controllers for reasoning language \
models. A controller decides, for one question, how to spend tokens on a pool of pre-recorded \
reasoning branches of the same model: when to open a new branch, continue one, probe it for the \
answer it would give if stopped now, prune it, and when to stop and answer. Controllers are \
evaluated offline by exact replay of recorded branches, so every accuracy and token figure you are \
shown is measured, not estimated.

## The controller contract

{contract}
For your proposals:

- `NAME = "..."`: a short, new, lowercase identifier for each proposal (letters, digits, _).
- Before returning, call `ep.trace("stop", reason="<why>")` with a short reason (e.g. \
"converged", "budget", "pool_exhausted"): the feedback you get counts these reasons.
- Imports: only {imports}. No file, network or process access; no eval/exec/open/type/getattr \
with computed names; no attribute or name that starts with an underscore. Keep it deterministic.
- Actions the replay does not admit count as failures: check `ep.running`, `ep.num_opened`, \
`ep.pool_size` and `ep.remaining_budget` first. You never see gold answers; correctness is scored \
outside.

## The episode handle `ep`

{api}

## A complete example (self-consistency)

```python
{example}```

## How to answer

{how}
"""

HOW_ONE = """\
Reason briefly about the feedback, then give exactly ONE complete controller file in a single \
```python code block. Do not put any other code block in your answer."""

HOW_MANY = """\
Reason briefly about the feedback, then give from 1 to {k} complete controller files, each in \
its own ```python code block and each with its own NAME; they are evaluated side by side, so \
make them test different ideas. Do not put any other code block in your answer."""

CRITIC_SYSTEM = """\
You review test-time-scaling controllers before they are evaluated. Each controller is one \
Python class (NAME, @staticmethod schedule(beta) -> dict of knobs, __init__(**knobs), \
run(self, ep) -> answer class) replayed over recorded reasoning branches. Look for: violations of \
the contract, actions that the replay would reject (advancing pruned/finished branches, probing \
twice at one depth, opening past ep.pool_size), token cost that is not monotone in β, wasted \
tokens, and logic errors. Answer with a first line that is exactly `VERDICT: APPROVE` or \
`VERDICT: REJECT` (reject only for errors that would make it fail or be ineligible), then at most \
8 short bullet points."""


def system_message(example_source: str, candidates: int = 1) -> str:
    from autotts.contract import contract_text

    how = HOW_ONE if candidates == 1 else HOW_MANY.format(k=candidates)
    return SYSTEM.format(imports=_allowed_imports(), api=episode_api(), example=example_source,
                         how=how, contract=contract_text())


# ---- sections of the user message -------------------------------------------------------------


def env_section(env: EnvDef, stats: Sequence[dict[str, Any]]) -> str:
    lo, hi = env.token_range
    lines = [
        f"# Environment: {env.name}",
        "",
        env.description.strip() or "(no description)",
        "",
        "Replay rules: interval Δ = "
        f"{stats[0]['delta'] if stats else env.delta} tokens per branch step; probe cost "
        f"κ = {env.probe_cost} tokens per revealed probe; up to "
        f"{env.branch_cap or 'all'} branches per question (the pool of a draw); per-question "
        f"token budget: {env.budget if env.budget is not None else 'none'}.",
        f"Evaluation: β grid {', '.join(f'{b:g}' for b in env.betas)}; {env.draws} {env.protocol} "
        "draws per question (each draw is a different order of the branch pool).",
        f"Objective (higher is better): for each search store, the mean accuracy (%) of the "
        f"accuracy-vs-log10(tokens) curve between {_tok(lo)} and {_tok(hi)} mean tokens per "
        "question (the curve through your β points sorted by tokens, flat beyond its ends), "
        "averaged over the search stores. Cheap points with high accuracy raise it; so does "
        "reaching high accuracy anywhere inside the range. The candidate must also be monotone: "
        "mean tokens must not fall as β grows.",
        "",
        "Search stores (the only data you are evaluated on now):",
        "",
        "| store | questions | branches/q | tokens/branch mean (median) | probes/branch mean "
        "| 'ERR' finals | pass@1 | majority of all branches |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in stats:
        lines.append(
            f"| {s['store']} | {s['questions']} | {s['branches_per_question']['mean']:.0f} | "
            f"{_tok(s['tokens']['mean'])} ({_tok(s['tokens']['median'])}) | "
            f"{s['probes_per_branch']['mean']:.1f} | {s['err_share_finals']:.1f}% | "
            f"{s['pass_at_1']:.1f}% | {s['majority_accuracy']:.1f}% |"
        )
    return "\n".join(lines)


def curve_table(rows: Sequence[dict[str, Any]], stores: Sequence[str]) -> str:
    """β rows × store columns of 'accuracy% @ tokens'."""
    by: dict[tuple[float, str], dict[str, Any]] = {}
    betas: list[float] = []
    for r in rows:
        if r.get("beta") is None:
            continue
        by[(float(r["beta"]), r["store"])] = r
        if float(r["beta"]) not in betas:
            betas.append(float(r["beta"]))
    head = "| β | " + " | ".join(stores) + " |"
    lines = [head, "|---|" + "---|" * len(stores)]
    for b in sorted(betas):
        cells = []
        for s in stores:
            r = by.get((b, s))
            cells.append("–" if r is None else f"{r['accuracy']:.1f}% @ {_tok(r['tokens'])}")
        lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _score(rec: dict[str, Any], stores: Sequence[str]) -> str:
    obj = rec.get("objective")
    if obj is None:
        return "objective: n/a"
    per = rec.get("store_objective") or {}
    parts = ", ".join(f"{s} {per[s]:.2f}" for s in stores if s in per)
    return f"objective {obj:.2f} (per store: {parts})"


def _verdict_text(v: dict[str, Any]) -> str:
    if v["kind"] == "ok":
        return "ok"
    text = f"{v['kind']} at {v['stage']}: {v['message']}"
    ctx = {k: x for k, x in (v.get("context") or {}).items()
           if k in CONTEXT_KEYS and x is not None and x != ""}
    if ctx:
        text += " (" + ", ".join(f"{k} {x}" for k, x in ctx.items()) + ")"
    if v.get("traceback"):
        text += "\n```\n" + str(v["traceback"]).strip()[:1500] + "\n```"
    return text


def seed_section(seeds: Sequence[dict[str, Any]], stores: Sequence[str],
                 with_digests: bool) -> str:
    from autotts.discover.digest import render_digest

    out = ["# Seed controllers (built-in baselines)", ""]
    for s in seeds:
        out += [f"## {s['name']} — {_score(s, stores)}", ""]
        if s.get("source") is not None:
            out += ["```python", s["source"].rstrip(), "```", ""]
        else:
            out += ["(code: the example above)", ""]
        out += [curve_table(s["rows"], stores), ""]
        if with_digests and s.get("digest"):
            out += ["Trace digest:", render_digest(s["digest"], stores), ""]
    return "\n".join(out)


def _candidate_block(rec: dict[str, Any], stores: Sequence[str], title: str) -> list[str]:
    from autotts.discover.digest import render_digest

    out = [f"## {title}: round {rec['id']}, {rec.get('name') or '(no name)'}",
           ""]
    out += [f"Verdict: {_verdict_text(rec['verdict'])}", ""]
    if rec.get("rows"):
        mono = "monotone" if rec.get("monotone") else "NOT monotone"
        out += [f"{_score(rec, stores)}; cost {mono} in β; "
                f"{'eligible' if rec.get('eligible') else 'not eligible'} for selection", ""]
    if rec.get("critic"):
        out += ["Critic's review:", rec["critic"].strip()[:1500], ""]
    if rec.get("source"):
        out += ["```python", rec["source"].rstrip(), "```", ""]
    if rec.get("rows"):
        out += [curve_table(rec["rows"], stores), ""]
    if rec.get("digest"):
        out += ["Trace digest:", render_digest(rec["digest"], stores), ""]
    return out


def history_section(history: Sequence[dict[str, Any]], seeds: Sequence[dict[str, Any]],
                    stores: Sequence[str], recent: int) -> str:
    out = ["# History of your proposals", ""]
    if not history:
        out += ["No proposals yet: this is the first round.", ""]
        return "\n".join(out)
    out += ["| round | NAME | verdict | objective |", "|---|---|---|---|"]
    for s in seeds:
        obj = "n/a" if s.get("objective") is None else f"{s['objective']:.2f}"
        out.append(f"| seed | {s['name']} | ok | {obj} |")
    for rec in history:
        v = rec["verdict"]
        kind = v["kind"] if v["kind"] == "ok" else f"{v['kind']} ({v['stage']})"
        obj = "n/a" if rec.get("objective") is None else f"{rec['objective']:.2f}"
        out.append(f"| {rec['id']} | {rec.get('name') or '–'} | {kind} | {obj} |")
    out.append("")
    best = best_record(history)
    shown = set()
    if best is not None:
        out += _candidate_block(best, stores, "Best so far")
        shown.add(_key(best))
    for rec in [r for r in history if _key(r) not in shown][-recent:]:
        out += _candidate_block(rec, stores, "Recent")
    return "\n".join(out)


def _key(rec: dict[str, Any]) -> tuple[int, int]:
    return rec["round"], rec["slot"]


def best_record(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The eligible candidate with the highest objective (earliest on ties)."""
    eligible = [r for r in history if r.get("eligible") and r.get("objective") is not None]
    if not eligible:
        return None
    return max(eligible, key=lambda r: (r["objective"], *(-k for k in _key(r))))


TASK = """\
# Your task

This is round {n}. Propose {what} a higher objective than everything \
above, with cost monotone in β. Use the trace digests: tokens spent on branches that are later \
pruned are wasted; "wrong although the opened branches would have voted right" means the \
aggregation or the stopping rule threw the answer away; "the whole pool would have voted right" \
means more width helps; β points where cost falls break monotonicity. {how}"""


def build_messages(
    *,
    env: EnvDef,
    stats: Sequence[dict[str, Any]],
    example_source: str,
    seeds: Sequence[dict[str, Any]],
    history: Sequence[dict[str, Any]],
    recent: int,
    candidates: int = 1,
) -> list[dict[str, str]]:
    """The messages of the round after `history` (records of completed rounds, one per
    candidate), asking for up to `candidates` controller files."""
    stores = [s["store"] for s in stats]
    with_seed_digests = best_record(history) is None
    n = max((r["round"] for r in history), default=0) + 1
    if candidates == 1:
        what = "a new controller that scores"
        how = "Give exactly one complete controller file in a single ```python block."
    else:
        what = f"up to {candidates} new controllers, each of which should score"
        how = (f"Give 1 to {candidates} complete controller files, each in its own ```python "
               "block with its own NAME.")
    user = "\n\n".join([
        env_section(env, stats),
        seed_section(seeds, stores, with_seed_digests),
        history_section(history, seeds, stores, max(recent, candidates)),
        TASK.format(n=n, what=what, how=how),
    ])
    return [
        {"role": "system", "content": system_message(example_source, candidates)},
        {"role": "user", "content": user},
    ]


def critic_messages(source: str, example_source: str) -> list[dict[str, str]]:
    user = (f"The episode handle's API:\n\n{episode_api()}\n\nA correct example controller:\n\n"
            f"```python\n{example_source}```\n\nThe controller to review:\n\n```python\n{source}```")
    return [{"role": "system", "content": CRITIC_SYSTEM}, {"role": "user", "content": user}]


def critic_verdict(text: str | None) -> tuple[bool, str]:
    """(approved, review). Anything but an explicit REJECT approves: the critic advises, the
    evaluation decides."""
    review = (text or "").strip()
    first = review.splitlines()[0].upper() if review else ""
    return ("REJECT" not in first), review


def render_prompt(messages: Sequence[dict[str, str]]) -> str:
    """prompt.md: the messages as one markdown document."""
    parts = []
    for m in messages:
        parts.append(f"<!-- role: {m['role']} -->\n\n{m['content'].rstrip()}\n")
    return "\n".join(parts)
