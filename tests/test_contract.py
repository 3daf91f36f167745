"""One source for the controller contract (issue 16): autotts/contract.md is the README's section
and part of the discovery prompt, it answers what a newcomer's first controller needs, and what it
says about the handle holds on the engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from autotts.contract import BEGIN, END, contract_text, readme_section, render_readme
from autotts.engine import Episode, Question
from tests.conftest import branch, make_store

ROOT = Path(__file__).resolve().parents[1]


def test_readme_section_is_the_contract_text():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert BEGIN in readme and END in readme
    assert readme_section(readme) == contract_text(), (
        "README's contract section differs from autotts/contract.md: run python -m autotts.contract"
    )
    assert render_readme(readme) == readme


def test_the_discovery_prompt_carries_the_contract_text():
    from autotts.discover.prompt import system_message

    for k in (1, 3):
        assert contract_text().strip() in system_message("EXAMPLE = 1\n", candidates=k)


def test_the_contract_answers_a_newcomers_questions():
    text = " ".join(contract_text().split())
    for needle in (
        "@staticmethod",  # schedule; a first controller failed on it
        "on the step that finishes the branch, its final answer",  # advance()
        "history(i)", "history_depths(i)", "1-based step",
        "the finishing one included", "L + 1",  # depth counts the partial last interval
        "length `num_opened`",
        "numbered per episode, in the order the episode reveals them",
        "no_answer_class", "docs/semantics.md",
        "InvalidAction", "fresh instance",
    ):
        assert needle in text, needle


def test_what_the_contract_says_about_the_handle_holds():
    store = make_store([("A", [branch(["x", "A"], 25, "A"), branch(["B"], 10, "B")])])
    q = Question(store.replay(), 0)
    ep = Episode(q, np.array([0, 1]))
    i = ep.branch(probe=True)
    assert ep.depth(i) == 1
    p2 = ep.advance(i)  # step 2 = interval 2: a probe
    final = ep.advance(i)  # step L + 1 = 3: finishes the branch, returns its final answer
    assert ep.is_finished(i) and ep.depth(i) == 3  # L = 2 probes, depth L + 1
    assert final == ep.final_answers[i] and ep.num_probes == 2  # no probe on the finishing step
    hist, depths = ep.history(i), ep.history_depths(i)
    assert isinstance(hist, np.ndarray) and isinstance(depths, np.ndarray)
    assert list(depths) == [1, 2, 3] and hist[1] == p2 and hist[-1] == final
    ep.branch()
    assert ep.num_opened == 2
    for name in ("depths", "finished", "pruned", "running", "latest", "final_answers"):
        assert len(getattr(ep, name)) == ep.num_opened, name
    assert ep.final_answers[1] == -1  # unfinished
    assert ep.latest[1] == -1  # nothing revealed on it yet


def test_readme_and_docs_link_inside_the_repository():
    """Every relative link of README.md and docs/*.md resolves inside the checkout (issue 16: the
    design link and 'DESIGN §n' pointed at ../shared)."""
    import re

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert "../shared" not in text, page
        assert "DESIGN §" not in text or page.name == "design.md", page
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(ROOT), (page.name, target)
            assert path.exists(), (page.name, target)
