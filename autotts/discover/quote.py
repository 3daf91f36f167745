"""Quoting what a candidate wrote into the agent's prompt (issue 21).

A candidate controls some text the loop reads back: what it prints, the `reason` of its stop
traces, its exception messages. None of it reaches the LLM raw: the prompt quotes at most a short
excerpt, with every control character (ANSI escapes, carriage returns, bidi overrides, NULs, ...)
written out visibly as `\\xNN` / `\\uNNNN`, and with each line prefixed so that it cannot open or
close a Markdown code fence of the prompt. The run directory keeps the full (size-capped) text.
"""

from __future__ import annotations

import unicodedata

EXCERPT_CHARS = 400  # printed output quoted in a prompt, per candidate
EXCERPT_LINES = 8
SHORT_CHARS = 40  # a stop reason or an idea line


def visible(text: str, limit: int | None = None) -> str:
    """`text` with every control / format / unassigned character escaped (newlines included),
    and the line and paragraph separators U+2028 / U+2029 (str.splitlines() breaks lines there,
    so raw they would start a line of the prompt that no quoting prefixes), cut to `limit`
    characters (an ellipsis says it was cut)."""
    out = []
    for ch in str(text):
        cat = unicodedata.category(ch)
        if cat[0] == "C" or cat in ("Zl", "Zp"):  # Cc, Cf, Cs, Co, Cn; U+2028, U+2029
            o = ord(ch)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000
                       else f"\\U{o:08x}")
        else:
            out.append(ch)
    s = "".join(out)
    if limit is not None and len(s) > limit:
        s = s[: max(0, limit - 1)] + "…"
    return s


def excerpt(text: str, chars: int = EXCERPT_CHARS, lines: int = EXCERPT_LINES) -> str:
    """A quoted excerpt of multi-line text: the first `lines` lines, `chars` characters in all,
    each line escaped and prefixed with "| "; a last line says how much was left out."""
    text = str(text)
    all_lines = text.splitlines()
    shown: list[str] = []
    used = 0
    cut = len(all_lines) > lines
    for ln in all_lines[:lines]:
        v = visible(ln, max(1, chars - used))
        shown.append("| " + v)
        used += len(v)
        if v.endswith("…") and not ln.endswith("…"):
            cut = True
        if used >= chars:
            cut = cut or len(shown) < len(all_lines)
            break
    if cut:
        shown.append(f"| [... cut: {len(text)} characters in all; the run directory has them]")
    return "\n".join(shown)
