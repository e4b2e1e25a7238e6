"""NPCs: cards from the manifest, knowledge limits as retrieval filters, voice from their own lines.

An NPC only ever sees canon its card's `knows` allows: the limits go into
retrieval before ranking, and into the search for example lines, so neither
the answer nor the prompt can carry a later chapter.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from kb.answer import Answer, respond
from kb.errors import NotFound
from kb.retrieve import Corpus, within_limits
from kb.store import Store

if TYPE_CHECKING:
    from kb.api import KnowledgeBase

VOICE_EXAMPLES = 4


def cards(store: Store) -> dict[str, dict]:
    """Every NPC card in the store, by name (read from the manifest, not re-parsed)."""
    return {r.card["name"]: {**r.card, "source": r.source}
            for r in store.files().values() if r.kind == "card" and r.card}


def card_named(known: dict[str, dict], name: str) -> dict | None:
    """The card among ``known`` whose name or speaker name is ``name``, case-insensitively."""
    folded = name.casefold()
    return next((card for card in known.values()
                 if folded in (card["name"].casefold(), card["speaker"].casefold())), None)


def find_card(known: dict[str, dict], name: str) -> dict:
    """The card among ``known`` whose name (or speaker name) matches, case-insensitively.

    Raises:
        NotFound: no such NPC; the message lists the ones there are.
    """
    card = card_named(known, name)
    if card is not None:
        return card
    listing = ", ".join(sorted(known)) or "none (put YAML cards in an npcs/ folder and ingest it)"
    raise NotFound(f"no NPC named '{name}'; known NPCs: {listing}", "npc_not_found")


def voice_lines(corpus: Corpus, card: dict, limit: int = VOICE_EXAMPLES) -> list[str]:
    """A few of the NPC's own canonical lines, from canon the NPC may know, as voice examples."""
    line = re.compile(rf"^{re.escape(card['speaker'])}:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
    speaker = card["speaker"].casefold()
    examples: list[str] = []
    for pos, meta in enumerate(corpus.metas):
        # the speaker test first: the limits are checked only on the NPC's own few chunks,
        # not over the whole corpus (retrieval builds its own mask for the answer)
        if speaker not in (s.casefold() for s in meta.get("speaker", [])) \
                or not within_limits(meta, card["knows"]):
            continue
        for text in line.findall(corpus.texts[pos]):
            if text not in examples and not text.startswith("(choice)"):
                examples.append(text)
    # spread the picks over the NPC's lines rather than taking one scene's opening
    step = max(1, len(examples) // limit)
    return examples[::step][:limit]


def persona_prompt(card: dict) -> str:
    """Who the NPC is: the system message of their fine-tuning examples and of answers without canon."""
    return (f"You are {card['name']}, {card['role']}, a character in a game. Stay in character.\n\n"
            f"Persona:\n{card['persona']}")


def system_prompt(card: dict, examples: list[str]) -> str:
    """Persona, voice examples and the rules that keep the NPC in canon and in character."""
    voice = "\n".join(f"- {line}" for line in examples) or "- (no recorded lines)"
    return (
        f"{persona_prompt(card)}\n\n"
        f"How you talk (your own lines from the scripts):\n{voice}\n\n"
        "Answer the player using only the numbered canon excerpts you are given; they are "
        "everything you know. Cite each fact with its number in square brackets, like [1]. "
        "Never reveal or guess anything beyond them. If they do not hold the answer, reply in "
        f"character with: {card['unknown_answer']}"
    )


def ask_npc(kb: "KnowledgeBase", card: dict, question: str, retrieval: bool = True, **options) -> Answer:
    """Answer a player's question as the NPC of ``card`` (from find_card), from only the canon it may know.

    Without retrieval the model answers from the persona alone, the way a
    model fine-tuned on the NPC's lines was trained to.
    """
    system = system_prompt(card, voice_lines(kb.corpus, card)) if retrieval else persona_prompt(card)
    answer = respond(kb, question, system=system, retrieval=retrieval,
                     not_found=card["unknown_answer"], limits=card["knows"], **options)
    answer.extra["npc"] = card["name"]
    return answer
