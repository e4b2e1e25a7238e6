"""NPCs: cards from the manifest, knowledge limits as retrieval filters, voice from their own lines.

An NPC only ever sees canon its card's `knows` allows, narrowed by the game
state of the request (kb/gamestate.py): the limits and the quest flags go into
retrieval before ranking, and into the search for example lines, so neither
the answer nor the prompt can carry a later chapter or a locked secret. In a
conversation the question is condensed with the turns before it
(kb/conversation.py); offline, the answer is put in the NPC's own voice
(kb/in_character.py).
"""

from __future__ import annotations

import re
import weakref
from typing import TYPE_CHECKING

from ingest.cards import Card
from kb.answer import Answer, respond
from kb.asked import holds_rarest_term, says_what_was_asked
from kb.conversation import bounded_history, retrieval_query
from kb.errors import NotFound
from kb.gamestate import Visibility, card_visibility
from kb.in_character import first_person, npc_names, npc_pronouns, own_line_answer
from kb.retrieve import Corpus
from kb.store import Store

if TYPE_CHECKING:
    from kb.api import KnowledgeBase

VOICE_EXAMPLES = 4


def cards(store: Store) -> dict[str, Card]:
    """Every NPC card in the store, by name (read from the manifest, not re-parsed)."""
    found = (Card.from_json({**r.card, "source": r.source})
             for r in store.files().values() if r.kind == "card" and r.card)
    return {card.name: card for card in found}


def card_named(known: dict[str, Card], name: str) -> Card | None:
    """The card among ``known`` whose name or speaker name is ``name``, case-insensitively."""
    folded = name.casefold()
    return next((card for card in known.values()
                 if folded in (card.name.casefold(), card.speaker.casefold())), None)


def find_card(known: dict[str, Card], name: str) -> Card:
    """The card among ``known`` whose name (or speaker name) matches, case-insensitively.

    Raises:
        NotFound: no such NPC; the message lists the ones there are.
    """
    card = card_named(known, name)
    if card is not None:
        return card
    listing = ", ".join(sorted(known)) or "none (put YAML cards in an npcs/ folder and ingest it)"
    raise NotFound(f"no NPC named '{name}'; known NPCs: {listing}", "npc_not_found")


# Voice lines and speaker names, per loaded corpus (so per store generation), per NPC and state.
_voices: "weakref.WeakKeyDictionary[Corpus, dict]" = weakref.WeakKeyDictionary()
_speakers: "weakref.WeakKeyDictionary[Corpus, frozenset]" = weakref.WeakKeyDictionary()
VOICES_PER_CORPUS = 1024


def _visibility_key(seen: Visibility) -> tuple:
    return (tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in seen.limits.items())),
            seen.flags, seen.strict)


def voice_lines(corpus: Corpus, card: Card, seen: Visibility | None = None,
                limit: int = VOICE_EXAMPLES) -> list[str]:
    """A few of the NPC's own canonical lines, from canon the NPC may know, as voice examples.

    ``seen`` is what this request may see (default: the card's limits, no quest flags).
    """
    seen = seen or card_visibility(card, None)
    key = (card.name, card.speaker, limit, _visibility_key(seen))
    cached = _voices.setdefault(corpus, {})
    if key in cached:
        return cached[key]
    line = re.compile(rf"^{re.escape(card.speaker)}:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
    speaker = card.speaker.casefold()
    examples: list[str] = []
    # the speaker test first: the limits are checked only on the NPC's own few chunks,
    # not over the whole corpus (retrieval builds its own mask for the answer)
    own = [pos for pos, meta in enumerate(corpus.metas())
           if speaker in (s.casefold() for s in meta.get("speaker", [])) and seen.allows(meta)]
    chunks = corpus.chunks_at(own)
    for pos in own:
        for text in line.findall(chunks[pos][1]):
            if text not in examples and not text.startswith("(choice)"):
                examples.append(text)
    # spread the picks over the NPC's lines rather than taking one scene's opening
    step = max(1, len(examples) // limit)
    if len(cached) >= VOICES_PER_CORPUS:
        cached.clear()
    cached[key] = examples[::step][:limit]
    return cached[key]


def speakers(corpus: Corpus) -> frozenset[str]:
    """Every character who speaks a line in the canon (their first names), for the first-person rule."""
    if corpus not in _speakers:
        _speakers[corpus] = frozenset(s for meta in corpus.metas() for s in meta.get("speaker", ()))
    return _speakers[corpus]


def persona_prompt(card: Card) -> str:
    """Who the NPC is: the system message of their fine-tuning examples and of answers without canon."""
    return (f"You are {card.name}, {card.role}, a character in a game. Stay in character.\n\n"
            f"Persona:\n{card.persona}")


def system_prompt(card: Card, examples: list[str]) -> str:
    """Persona, voice examples and the rules that keep the NPC in canon and in character."""
    voice = "\n".join(f"- {line}" for line in examples) or "- (no recorded lines)"
    return (
        f"{persona_prompt(card)}\n\n"
        f"How you talk (your own lines from the scripts):\n{voice}\n\n"
        "Answer the player using only the canon excerpts you are given; they are "
        "everything you know. Cite each fact with its excerpt's id in square brackets, like [1]. "
        "Never reveal or guess anything beyond them. If they do not hold the answer, reply in "
        f"character with: {card.unknown_answer}"
    )


def in_character(answer: Answer, card: Card, question: str, query: str, corpus: Corpus) -> Answer:
    """An extractive answer in the NPC's voice: their own line when one answers, else canon in the
    first person; the card's unknown_answer when the canon cited misses what the question is about."""
    if answer.mode != "extractive" or not answer.citations:
        return answer
    if not (holds_rarest_term(question, answer.citations, corpus)
            and says_what_was_asked(question, answer.citations, corpus.idf)):
        return Answer(card.unknown_answer, [], answer.mode, answer.extra)
    own = own_line_answer(query, answer.citations, card.speaker, corpus.idf)
    if own is not None:
        answer.answer, answer.citations = own
        return answer
    names = npc_names(card)
    others = {s for s in speakers(corpus) if s not in names and s not in card.name.split()}
    cited = {c.n: (c.hit.text, c.hit.metadata.get("title", "")) for c in answer.citations}
    answer.answer = first_person(answer.answer, names, others, cited, npc_pronouns(card))
    return answer


def ask_npc(kb: "KnowledgeBase", card: Card, question: str, retrieval: bool = True,
            history: list[dict] | None = None, state: dict | None = None, **options) -> Answer:
    """Answer a player's question as the NPC of ``card`` (from find_card), from only the canon it may know.

    ``history`` is the conversation so far (user/assistant turns, oldest first);
    ``state`` the player's game state, which may only narrow the card.
    Without retrieval the model answers from the persona alone, the way a
    model fine-tuned on the NPC's lines was trained to.

    Raises:
        InvalidState: the state is malformed.
        StateBeyondCard: the state asks for more than the card allows.
    """
    seen = card_visibility(card, state)
    corpus, settings = kb.corpus, kb.settings
    turns = bounded_history(history or [])
    query = retrieval_query(question, turns, settings, corpus.idf, options.get("model"),
                            options.get("extractive", False))
    system = system_prompt(card, voice_lines(corpus, card, seen)) if retrieval else persona_prompt(card)
    answer = respond(kb, question, system=system, retrieval=retrieval, not_found=card.unknown_answer,
                     limits=seen.limits, flags=seen.flags, strict=seen.strict, query=query, history=turns,
                     corpus=corpus, **options)
    answer = in_character(answer, card, question, query, corpus)
    answer.extra["npc"] = card.name
    return answer
