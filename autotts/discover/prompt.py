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

from autotts.discover.quote import excerpt, visible
from autotts.envdef import EnvDef

PROMPT_VERSION = 4
CONTEXT_KEYS = ("store", "beta", "question", "draw", "step", "line")  # of a verdict, for the agent
IDEA_CHARS = 100  # the idea column of the standings: a docstring's first paragraph, cut
PARENT_SIMILARITY = 0.6  # a candidate at least this similar to a shown one is shown as a diff


def _allowed_imports() -> str:
    from autotts.sandbox.admission import ALLOWED_IMPORTS

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


FEEDBACK = """\
## Reading the feedback

Each round you see the standings (every seed and every candidate of yours, one line each), the \
best seed and your best candidate in full, and your most recent candidates (a revision of a \
controller shown in full appears as a diff against it). Trace digests, per search store:

- "stop reasons": your `ep.trace("stop", reason=...)` reasons, as shares of the traced episodes, \
per β band (low, middle, high β).
- "tokens spent on branches later pruned" and "on branches still running at the answer": cost \
that never became a final answer.
- "wrong although the opened branches, run to their end, would have voted right": the \
aggregation or the stopping rule threw the answer away; "the whole pool would have voted \
right": more width helps; "never right at any β": not worth chasing.
- "q12: 9/60" means question 12, hit in 9 of its 60 episodes (β points × draws) in that set.
- "β points where cost falls" break monotonicity ("within noise" when inside twice the \
standard error).

Differences between objectives carry noise from which questions the stores happen to hold: an \
interval that contains 0 means "within noise"; do not chase differences inside it. Each interval \
is for its own line: with no real difference, one line in twenty still excludes 0 by chance."""


def system_message(example_source: str, candidates: int = 1) -> str:
    from autotts.contract import contract_text

    how = HOW_ONE if candidates == 1 else HOW_MANY.format(k=candidates)
    return SYSTEM.format(imports=_allowed_imports(), api=episode_api(), example=example_source,
                         how=how, contract=contract_text()) + "\n" + FEEDBACK + "\n"


# ---- sections of the user message -------------------------------------------------------------


def env_section(env: EnvDef, stats: Sequence[dict[str, Any]],
                signals: dict[str, dict[str, Any]] | None = None) -> str:
    from autotts.discover.digest import render_signals

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
    if signals:
        lines += ["", render_signals(signals, [s["store"] for s in stats])]
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
    # Messages and tracebacks can carry the candidate's own text (an exception's message):
    # escaped, and cut (issue 21).
    if v["kind"] == "ok":
        return "ok"
    text = f"{v['kind']} at {v['stage']}: {visible(v['message'], 600)}"
    ctx = {k: x for k, x in (v.get("context") or {}).items()
           if k in CONTEXT_KEYS and x is not None and x != ""}
    if ctx:
        text += " (" + ", ".join(f"{k} {visible(str(x), 80)}" for k, x in ctx.items()) + ")"
    if v.get("traceback"):
        tb = str(v["traceback"]).strip()[-1500:]
        # Lines at "\n" only: splitlines() would also break at the candidate's U+2028, NEL,
        # ... and make lines of its own text (visible() escapes those).
        text += "\n```\n" + "\n".join(visible(ln) for ln in tb.split("\n")) \
            .replace("```", "ˋˋˋ") + "\n```"
    return text


def idea_of(source: str | None) -> str:
    """A candidate's idea in one line: the first paragraph of its module or class docstring."""
    if not source:
        return ""
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    docs = [ast.get_docstring(tree)] + [ast.get_docstring(n) for n in tree.body
                                         if isinstance(n, ast.ClassDef)]
    doc = next((d.strip() for d in docs if d and d.strip()), "")
    para = " ".join(doc.split("\n\n")[0].split())  # the first paragraph, on one line
    return visible(para, IDEA_CHARS)


def _name(rec: dict[str, Any]) -> str:
    return visible(rec.get("name") or "–", 64)


def _obj(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def best_seed(seeds: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    scored = [s for s in seeds if s.get("objective") is not None]
    return max(scored, key=lambda s: s["objective"]) if scored else None


def best_overall(history: Sequence[dict[str, Any]], seeds: Sequence[dict[str, Any]]
                 ) -> tuple[str, dict[str, Any]] | None:
    """("seed" | "candidate", record) of the highest objective among the seeds and the eligible
    candidates; a seed wins ties (a candidate must beat it to be best)."""
    cand = best_record(history)
    seed = best_seed(seeds)
    if seed is not None and (cand is None or seed["objective"] >= cand["objective"]):
        return "seed", seed
    return None if cand is None else ("candidate", cand)


def standings_section(history: Sequence[dict[str, Any]], seeds: Sequence[dict[str, Any]],
                      noise: dict[str, Any] | None, example_source: str = "",
                      versus: dict[str, dict[str, Any] | None] | None = None) -> str:
    """The best so far (seeds included), the noise of the lead, and one line per controller with
    its difference to the best seed: with its interval where `versus`
    (significance.versus_best_seed) has one, else the point and "(no interval)"."""
    from autotts.discover.significance import cell, describe

    out = ["# Standings (search split)", ""]
    top = best_overall(history, seeds)
    bs = best_seed(seeds)
    if top is not None:
        kind, rec = top
        who = (f"seed {rec['name']}" if kind == "seed"
               else f"your round {rec['id']}, {_name(rec)}")
        out.append(f"Best so far: {who} ({_obj(rec['objective'])}).")
    cand = best_record(history)
    if cand is not None and bs is not None:
        line = (f"Your best ({_name(cand)}) minus the best seed ({bs['name']}): ΔAUC "
                f"{cand['objective'] - bs['objective']:+.2f}")
        if noise is not None:
            line = (f"Your best ({_name(cand)}) minus the best seed ({bs['name']}): ΔAUC "
                    f"{describe(noise['pooled'])} (95% interval over which questions were "
                    "asked, pooled over stores)")
        out.append(line + ".")
    out += ["", "| id | NAME | idea | verdict | objective | vs best seed: ΔAUC [95% interval] |",
            "|---|---|---|---|---|---|"]
    ref = None if bs is None else bs["objective"]
    versus = versus or {}

    def vs(x: float | None, key: str) -> str:
        if x is None or ref is None:
            return ""
        return cell(versus.get(key), x - ref)

    for s in seeds:
        diff = "(the best seed)" if s is bs else vs(s.get("objective"), f"seed:{s['name']}")
        out.append(f"| seed | {s['name']} | {idea_of(s.get('source') or example_source)} "
                   f"| ok | {_obj(s.get('objective'))} | {diff} |")
    for rec in history:
        v = rec["verdict"]
        kind = v["kind"] if v["kind"] == "ok" else f"{v['kind']} ({v['stage']})"
        if v["kind"] == "ok" and not rec.get("eligible"):
            kind += ", not eligible"
        part = rec.get("partial")
        obj = (_obj(rec.get("objective")) if not part else
               f"{_obj(part.get('objective'))} (partial: {part['draws']}/{part['of']} draws)")
        out.append(f"| {rec['id']} | {_name(rec)} | {idea_of(rec.get('source'))} | {kind} | "
                   f"{obj} | {vs(rec.get('objective'), str(rec['id']))} |")
    if not history:
        out += ["", "No proposals of yours yet: this is the first round."]
    return "\n".join(out)


def seed_section(seeds: Sequence[dict[str, Any]], stores: Sequence[str],
                 with_digests: bool, full: bool = True) -> str:
    """The seeds in detail: every seed while the agent has no eligible candidate (`full`), then
    only the best seed (its code and curve): the others stay one line in the standings."""
    from autotts.discover.digest import render_digest

    bs = best_seed(seeds)
    shown = list(seeds) if full else [s for s in seeds if s is bs]
    title = "# Seed controllers (built-in)" if full else "# The best seed"
    out = [title, ""]
    for s in shown:
        out += [f"## {s['name']}: {_score(s, stores)}", ""]
        if s.get("source") is not None:
            out += ["```python", s["source"].rstrip(), "```", ""]
        else:
            out += ["(code: the example in the contract)", ""]
        out += [curve_table(s["rows"], stores), ""]
        if with_digests and s.get("digest"):
            out += ["Trace digest:", render_digest(s["digest"], stores), ""]
    return "\n".join(out)


def _parent(source: str, shown: Sequence[tuple[str, str]]) -> tuple[str, str] | None:
    """The shown controller a candidate revises: the most similar source shown in full in this
    prompt, if similar enough that a diff is shorter than the file."""
    import difflib

    best: tuple[float, str, str] | None = None
    for label_, src in shown:
        r = difflib.SequenceMatcher(None, src, source, autojunk=False).quick_ratio()
        if r >= PARENT_SIMILARITY and (best is None or r > best[0]):
            best = (r, label_, src)
    return None if best is None else (best[1], best[2])


def _code_or_diff(source: str, shown: Sequence[tuple[str, str]]) -> list[str]:
    import difflib

    par = _parent(source, shown)
    if par is not None:
        diff = "".join(difflib.unified_diff(
            par[1].splitlines(keepends=True), source.splitlines(keepends=True),
            fromfile=par[0], tofile="this candidate", n=2))
        if diff and len(diff) < 0.7 * len(source):
            return [f"Code: a revision of {par[0]} (shown above); the diff:", "",
                    "```diff", diff.rstrip().replace("```", "ˋˋˋ"), "```", ""]
    return ["```python", source.rstrip(), "```", ""]


def _candidate_block(rec: dict[str, Any], stores: Sequence[str], title: str,
                     shown: Sequence[tuple[str, str]]) -> list[str]:
    from autotts.discover.digest import render_digest

    out = [f"## {title}: round {rec['id']}, {_name(rec)}", ""]
    out += [f"Verdict: {_verdict_text(rec['verdict'])}", ""]
    part = rec.get("partial")
    if rec.get("rows") and part:
        out += [f"Partial figures, over the first {part['draws']} of {part['of']} "
                f"draws: {_score({**rec, **part}, stores)}; not eligible for selection", ""]
    elif rec.get("rows"):
        mono = "monotone" if rec.get("monotone") else "NOT monotone"
        out += [f"{_score(rec, stores)}; cost {mono} in β; "
                f"{'eligible' if rec.get('eligible') else 'not eligible'} for selection", ""]
    if rec.get("critic"):
        out += ["Critic's review:", rec["critic"].strip()[:1500], ""]
    if rec.get("source"):
        out += _code_or_diff(rec["source"], shown)
    if rec.get("rows"):
        out += [curve_table(rec["rows"], stores), ""]
    if rec.get("digest"):
        out += ["Trace digest" + (f" (first {part['draws']} draws):" if part else ":"),
                render_digest(rec["digest"], stores), ""]
    if rec.get("stdout"):
        out += ["What it printed (an excerpt, escaped; print() output is not feedback the "
                "scorer uses):", excerpt(rec["stdout"]), ""]
    return out


def history_section(history: Sequence[dict[str, Any]], seeds: Sequence[dict[str, Any]],
                    stores: Sequence[str], recent: int,
                    shown: Sequence[tuple[str, str]] = ()) -> str:
    """Your best candidate in full, then the last `recent` candidates (code, or the diff against
    the controller they revise); everything else is its line in the standings."""
    if not history:
        return ""
    out = ["# Your candidates in detail", ""]
    shown = list(shown)
    best = best_record(history)
    done = set()
    if best is not None:
        out += _candidate_block(best, stores, "Your best", shown)
        done.add(_key(best))
        if best.get("source"):
            shown.append((f"round {best['id']} ({_name(best)})", best["source"]))
    # The last `recent` candidates, less the best (already in full): a round whose candidate
    # became the best adds nothing older.
    for rec in [r for r in history[-recent:] if _key(r) not in done]:
        out += _candidate_block(rec, stores, "Recent", shown)
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

This is round {n}. Propose {what} a higher objective than the best so far, with cost monotone \
in β. {how}"""


def build_messages(
    *,
    env: EnvDef,
    stats: Sequence[dict[str, Any]],
    example_source: str,
    seeds: Sequence[dict[str, Any]],
    history: Sequence[dict[str, Any]],
    recent: int,
    candidates: int = 1,
    signals: dict[str, dict[str, Any]] | None = None,
    noise: dict[str, Any] | None = None,
    versus: dict[str, dict[str, Any] | None] | None = None,
) -> list[dict[str, str]]:
    """The messages of the round after `history` (records of completed rounds, one per
    candidate), asking for up to `candidates` controller files. `noise`: the paired interval of
    the best candidate's objective minus the best seed's (significance.delta_auc); `versus`: every
    other controller's (significance.versus_best_seed)."""
    stores = [s["store"] for s in stats]
    no_own = best_record(history) is None
    n = max((r["round"] for r in history), default=0) + 1
    if candidates == 1:
        what = "a new controller that scores"
        how = "Give exactly one complete controller file in a single ```python block."
    else:
        what = f"up to {candidates} new controllers, each of which should score"
        how = (f"Give 1 to {candidates} complete controller files, each in its own ```python "
               "block with its own NAME.")
    shown = [(f"seed {s['name']}", s["source"]) for s in seeds
             if s.get("source") and (no_own or s is best_seed(seeds))]
    shown.append(("the example (sc)", example_source))
    parts = [
        env_section(env, stats, signals),
        standings_section(history, seeds, noise, example_source, versus),
        seed_section(seeds, stores, with_digests=no_own, full=no_own),
        history_section(history, seeds, stores, max(recent, candidates), shown),
        TASK.format(n=n, what=what, how=how),
    ]
    user = "\n\n".join(p for p in parts if p)
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
