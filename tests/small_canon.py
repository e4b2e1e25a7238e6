"""A four-file canon the adapter tests write for themselves: one chapter a deckhand may know, one he may not."""

from __future__ import annotations

from pathlib import Path

HARBOUR = """---
chapter: 1
region: Saltreach
---
# The Harbour at Low Tide
The Saltreach ferry leaves at the third bell. The harbourmaster keeps a brass bell named Old Gull on the pier,
and rings it when the tide turns.
"""

BETRAYAL = """---
chapter: 4
region: Saltreach
---
# The Betrayal
The harbourmaster sold the brass bell Old Gull to the Grey Fleet smugglers for forty crowns.
"""

PELL = """name: Pell
role: Deckhand on the Saltreach ferry
speaker: Pell
persona: Young, cheerful, talks too much.
knows:
  chapter: 1
unknown_answer: "Never heard of that, friend."
"""

HIDDEN_WORDS = ("Grey Fleet", "forty crowns")  # in chapter 4 only: Pell must never see them
BELL_QUESTION = "Who bought the brass bell Old Gull?"


def write_canon(folder: Path) -> Path:
    """world/harbour.md (chapter 1), world/betrayal.md (chapter 4) and npcs/pell.yaml (knows chapter 1)."""
    (folder / "world").mkdir(parents=True)
    (folder / "npcs").mkdir()
    (folder / "world" / "harbour.md").write_text(HARBOUR, encoding="utf-8")
    (folder / "world" / "betrayal.md").write_text(BETRAYAL, encoding="utf-8")
    (folder / "npcs" / "pell.yaml").write_text(PELL, encoding="utf-8")
    return folder


def chunk_ids_by_source(kb) -> dict[str, set[str]]:
    """The ids the store holds for each ingested file, read back from the store itself."""
    found: dict[str, set[str]] = {}
    for chunk_id, _, meta in kb.store.scan_chunks():
        found.setdefault(meta["source"], set()).add(chunk_id)
    return found
