"""The controller contract as text: one source (autotts/contract.md, shipped inside the package)
for the README's contract section and the discovery agent's prompt.

`python -m autotts.contract` rewrites the README section between the markers below from the
package text; tests/test_contract.py fails when the two differ.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

BEGIN = "<!-- contract: generated from autotts/contract.md by `python -m autotts.contract` -->"
END = "<!-- /contract -->"


def contract_text() -> str:
    """The contract (markdown), from the installed package (works from a wheel too)."""
    return resources.files("autotts").joinpath("contract.md").read_text(encoding="utf-8")


def readme_section(readme: str) -> str | None:
    """The contract text currently between the README's markers (None without markers)."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        return None
    return readme[start + len(BEGIN) : end].strip("\n") + "\n"


def render_readme(readme: str) -> str:
    """`readme` with the text between the markers replaced by the contract."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {BEGIN!r} ... {END!r} markers")
    return readme[: start + len(BEGIN)] + "\n\n" + contract_text() + "\n" + readme[end:]


def main() -> int:
    readme = Path(__file__).resolve().parent.parent / "README.md"
    text = readme.read_text(encoding="utf-8")
    new = render_readme(text)
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print(f"updated the contract section of {readme}")
    else:
        print(f"{readme} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
