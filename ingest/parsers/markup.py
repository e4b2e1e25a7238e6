"""Display markup out of dialogue text, words kept: one stripper for every script parser and the loc table.

Game text carries the engine's formatting: Unity / TextMesh Pro rich text
(`<i>`, `<b>`, `<color=red>`, `<size=120%>`, `<sprite name=x>`), HTML-like
tags (`<br/>`, `<span class="x">`), Godot BBCode (`[color=red]`, `[b]`,
`[break]`, `[right]`, `[wave amp=50]`) and Yarn markup (`[b]`, `[/b]`,
`[emotion=happy/]`, `[/]`), plus HTML entities (`&amp;`). A writer searching
the canon wants the words, so the tags go and their content stays.

A bracket is markup when it closes (`[/b]`, `[/]`), closes itself
(`[pause/]`), carries a value (`[color=red]`, `[wave amp=5]`) or is a known
formatting name in lower case (`[b]`, `[right]`, `[break]`); `[Delay]` or
`[sighs]` stay, as they may be words the player reads.
"""

from __future__ import annotations

import html
import re

BBCODE_NAMES = (
    "b", "i", "u", "s", "code", "p", "center", "left", "right", "fill", "indent", "url", "img",
    "font", "font_size", "color", "bgcolor", "fgcolor", "outline_size", "outline_color", "table",
    "cell", "ul", "ol", "wave", "tornado", "shake", "fade", "rainbow", "pulse", "hint",
    "break", "br", "nbsp", "size", "sup", "sub", "mark", "nomarkup", "character", "speed", "pause",
)
_TAG = re.compile(r"</?[A-Za-z][\w-]*(?:[\s=][^<>]*)?/?>")
_BRACKET = re.compile(
    r"\[(?:/[\w-]*"                             # [/b], [/]
    r"|[A-Za-z][\w-]*\s*=[^\[\]]*"              # [color=red], [emotion=happy/]
    r"|[A-Za-z][\w-]*\s+[\w-]+\s*=[^\[\]]*"     # [wave amp=50]
    r"|[A-Za-z][\w-]*\s*/"                      # [pause/]
    rf"|(?:{'|'.join(BBCODE_NAMES)})"           # [b], [right], [break]
    r")\]"
)
_BREAKS = re.compile(r"\[(?:break|br)\]|<br\s*/?>", re.IGNORECASE)


def strip_markup(text: str) -> str:
    """Text without rich-text tags, BBCode, Yarn markup or HTML entities; line-break tags become a space."""
    text = _BREAKS.sub(" ", text)
    text = _BRACKET.sub("", _TAG.sub("", text))
    return html.unescape(text)
