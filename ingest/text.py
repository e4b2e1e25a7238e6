"""Text rules that ingest and kb share: the CJK character ranges, folding for comparison, language."""

from __future__ import annotations

import re
import unicodedata

CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana, CJK ideographs: a regex class body
_CJK = re.compile(f"[{CJK_CHARS}]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")


def fold(text: str) -> str:
    """Case- and width-fold text (NFKC), as answers and tokens are compared."""
    return unicodedata.normalize("NFKC", text).casefold()


def plain(text: str) -> str:
    """Folded text with punctuation and symbols as single spaces, so 'soon die.' matches 'soon die;'."""
    kept = "".join(ch if ch.isalnum() or ch.isspace() else " " for ch in fold(text))
    return " ".join(kept.split())


def detect_lang(text: str) -> str:
    """'zh' when CJK characters dominate the letters, else 'en' (our corpora's two languages)."""
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN_WORD.findall(text))
    return "zh" if cjk and cjk >= latin else "en"
