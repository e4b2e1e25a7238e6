"""Pack the best chunks into a token budget and number them for citation."""

from __future__ import annotations

from dataclasses import dataclass

from ingest.tokens import count_tokens
from kb.retrieve import Hit


@dataclass
class Citation:
    """A chunk in the context, with the number the answer cites it by."""

    n: int
    hit: Hit

    def label(self) -> str:
        """Where it came from, as a citation shows it: source, heading, speaker, page."""
        meta = self.hit.metadata
        parts = [self.hit.source]
        for key in ("title", "scene", "node", "knot", "page"):
            if meta.get(key) not in (None, ""):
                parts.append(f"{key} {meta[key]}" if key == "page" else str(meta[key]))
        return " · ".join(dict.fromkeys(parts))

    def to_json(self) -> dict:
        return {"n": self.n, "source": self.hit.source, "id": self.hit.id, "text": self.hit.text}


def pack(hits: list[Hit], budget_tokens: int) -> list[Citation]:
    """Keep hits in rank order while they fit the budget; the first always goes in."""
    packed: list[Citation] = []
    used = 0
    for hit in hits:
        cost = count_tokens(hit.text) + 12  # the "[n] source" header line
        if packed and used + cost > budget_tokens:
            continue
        packed.append(Citation(len(packed) + 1, hit))
        used += cost
    return packed


def render(cited: list[Citation]) -> str:
    """The canon block a chat model reads: each chunk under its [n] and source."""
    return "\n\n".join(f"[{c.n}] ({c.label()})\n{c.hit.text}" for c in cited)
