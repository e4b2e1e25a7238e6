"""Offline answers in the NPC's own voice: their recorded lines first, then canon in the first person.

Both functions take the extractive answer's text (or its citations) and return
new text, so they apply to whatever sentence selection kb/answer.py makes.

First person is a rule, not a model, and applies only where it is safe: a
sentence whose subject is the NPC's name ("Sefa has received...", "Since the
spring of 412 TC Sefa has...", in Chinese "摆渡人玛伦（Maren）年轻时...") or a
"She ..." whose "she" can only be the NPC ("He ..." for an NPC whose card
says he: ``npc_pronouns``).
That is read from the cited chunk, not from the answer's order (which mixes
chunks): the sentence before it in the chunk had the NPC as its subject, or
the chunk's heading names the NPC and no sentence since has named a character.
The name becomes "I" (and "Sefa's" "my"), the verb is conjugated, and
she/her/herself (he/him/his/himself) become I/my/me/myself only when no other known character
(any speaker in the canon) is named in the sentence; otherwise the sentence
is left as the canon wrote it. bench/first_person.py measures the rule on
hand-labelled sentences.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, NamedTuple

from ingest.cards import Card
from ingest.text import CJK_CHARS
from kb.context import Citation
from kb.extract import analysed, passage_coverage

OWN_LINE_MIN = 0.5  # a line must hold half the question's rare-term weight to answer it
_PARENTHETICAL = re.compile(r"^\([^)]*\)\s*")  # an acting direction before a line: (whispering)
_ANSWER_SENTENCE = re.compile(r".+?(?:\s\[\d+\])+(?=\s|$)|.+$")
_LEAD = (r"(?:\*\*[^*\n]+\*\*\s*[—–-]\s*)?"  # a timeline entry's date: **404 TC** — Sefa ...
         r"(?:(?:Since|In|On|At|After|Before|When|By|From|During|For|Until|Every|Each|Twice|Once)"
         r"(?:\s+(?:[a-z]+|\d[\d,]*|TC|of))*\s*,?\s+)?")
_AUXILIARY = {"is": "am", "was": "was", "has": "have", "does": "do", "had": "had", "did": "did",
              "will": "will", "would": "would", "can": "can", "could": "could", "must": "must",
              "should": "should", "may": "may", "might": "might", "never": "never", "also": "also",
              "still": "still", "once": "once", "alone": "alone"}
_OBJECT_FOLLOWERS = {"a", "an", "the", "to", "and", "at", "in", "on", "with", "for", "from", "that",
                     "of", "as", "by", "into", "about", "before", "after", "when", "if", "or", "but"}
# after "Sefa's" these mean "Sefa is/has" ("Sefa's not here"), not a thing of hers
_NOT_POSSESSED = "a|an|the|not|been|here|there|gone|never|always|still|just|got|going"


class Pronouns(NamedTuple):
    """How the canon refers to the NPC without their name."""

    subject: str
    reflexive: str
    object: str
    possessive: str

    def pattern(self) -> re.Pattern:
        """Any of them as a word, with the word after it (which tells "her" as me from "her" as my)."""
        return _pronoun_pattern(self)


@functools.cache
def _pronoun_pattern(pronouns: Pronouns) -> re.Pattern:
    words = "|".join(dict.fromkeys((pronouns.reflexive, pronouns.subject, pronouns.object, pronouns.possessive)))
    return re.compile(rf"\b((?i:{words}))\b(\s+\w+)?")


SHE = Pronouns("she", "herself", "her", "her")
HE = Pronouns("he", "himself", "him", "his")
# a second verb of the same subject: "I am exact and keeps my logbook" -> "and keep my logbook", "and is said"
# -> "and am said", ", but crosses to" -> ", but cross to" (a list ends with "and", rarely with "but")
_COORDINATED = re.compile(
    r"(\b(?:and|but|or))\s+((?:is|has|does)\b|[a-z]+s(?=\s+(?:my|her|the|a|an|his|their|its|every|it|them|me|no)\b))"
    r"|(,\s*but)\s+([a-z]+s)\b")


def own_line_answer(question: str, cited: list[Citation], speaker: str,
                    idf: Callable[[str], float]) -> tuple[str, list[Citation]] | None:
    """The NPC's own recorded line that best answers the question, cited, or None.

    A line answers when it holds at least OWN_LINE_MIN of the question's rare-term
    weight; choices offered to the player are not the NPC's words.
    """
    line = re.compile(rf"^{re.escape(speaker)}:\s*(.+)$", re.IGNORECASE | re.MULTILINE)
    best = None
    for citation in cited:
        for text in line.findall(citation.hit.text):
            if text.startswith("(choice)"):
                continue
            score = passage_coverage(question, text, "", idf)
            if score >= OWN_LINE_MIN and (best is None or score > best[0]):
                best = (score, text, citation)
    if best is None:
        return None
    _, text, citation = best
    quoted = Citation(citation.n, citation.hit, quoted_line_ids(citation, text))
    return f"{_PARENTHETICAL.sub('', text)} [{citation.n}]", [quoted]


def quoted_line_ids(citation: Citation, quoted: str) -> list[str] | None:
    """The id of the quoted line, when the chunk has one id per line of text; None when ids and lines
    do not pair up (then the citation carries all of the chunk's ids)."""
    lines = [line for line in citation.hit.text.splitlines() if line.strip()]
    ids = citation.hit.metadata.get("line_ids")
    if not isinstance(ids, list) or len(ids) != len(lines):
        return None
    return [str(i) for i, line in zip(ids, lines) if quoted in line][:1] or None


def _conjugate(verb: str) -> str:
    """A third-person singular verb in the first person: has -> have, keeps -> keep, watches -> watch."""
    lower = verb.lower()
    if lower in _AUXILIARY:
        return _AUXILIARY[lower]
    if lower.endswith("ies") and len(lower) > 4:
        return verb[:-3] + "y"
    if lower.endswith(("sses", "shes", "ches", "xes", "zes", "oes")):
        return verb[:-2]
    if lower.endswith("s") and not lower.endswith(("ss", "us", "is")):
        return verb[:-1]
    return verb


def _is_verb(word: str) -> bool:
    """A likely finite verb right after a subject: an auxiliary, a past tense, or a third-person -s."""
    lower = word.lower()
    return word.islower() and (lower in _AUXILIARY or lower.endswith("ed")
                               or (lower.endswith("s") and not lower.endswith(("ss", "us", "is"))))


def _pronouns_to_first_person(text: str, pronouns: Pronouns) -> str:
    def swap(match: re.Match) -> str:
        pronoun, following = match.group(1), match.group(2) or ""
        capital = pronoun[0].isupper()
        lower, nxt = pronoun.lower(), following.strip().lower()
        no_noun = not nxt or nxt in _OBJECT_FOLLOWERS  # "telling her to", "the choice is his"
        if lower == pronouns.reflexive:
            word = "myself"
        elif lower == pronouns.subject:
            word, following = "I", (f" {_conjugate(following.strip())}" if nxt else following)
        elif lower == pronouns.object and (no_noun or lower != pronouns.possessive):
            word = "me"
        else:
            word = "mine" if no_noun else "my"
        return (word.capitalize() if capital and word != "I" else word) + following

    return pronouns.pattern().sub(swap, text)


def _names_pattern(names: list[str]) -> str:
    return _alternation(tuple(names))


@functools.lru_cache(maxsize=256)
def _alternation(names: tuple[str, ...]) -> str:
    """The names as one regex alternation, longest first; cached, since every sentence of every answer
    needs the same NPC's."""
    return "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))


@functools.lru_cache(maxsize=256)
def _any_of(names: tuple[str, ...]) -> re.Pattern:
    """Any of the names as a whole word."""
    return re.compile(rf"\b(?:{_alternation(names)})\b")


def sentence_in_first_person(sentence: str, names: list[str], others: set[str],
                             after_own: bool = False, pronouns: Pronouns = SHE) -> str | None:
    """The sentence spoken by the NPC, or None when its subject is not the NPC or the rule is unsure.

    ``names``: what the canon calls the NPC (full name first); ``others``: other
    characters' names; ``after_own``: the sentence before was the NPC's, so a
    leading "She" (``pronouns.subject``) is the NPC too.
    """
    named = _names_pattern(names)
    own_line = re.match(rf"^(?:{named}):\s*(?:\([^)]*\)\s*)?", sentence, re.IGNORECASE)
    if own_line:  # the NPC's own recorded line, quoted with its speaker: just the words
        return sentence[own_line.end():]
    # Chinese canon names the NPC in its own script, then in Latin: 摆渡人玛伦（Maren）年轻时... -> 我年轻时...
    chinese = re.match(rf"^[{CJK_CHARS}·]{{1,12}}（(?:{named})）(?P<poss>的)?", sentence)
    if chinese:
        return ("我的" if chinese.group("poss") else "我") + sentence[chinese.end():]
    subject = re.match(rf"^(?P<lead>{_LEAD})(?:(?P<name>{named})(?P<poss>'s)?|(?P<pronoun>"
                       rf"{pronouns.subject.capitalize()}))\s+(?P<word>\S+)", sentence)
    if not subject or (subject.group("pronoun") and not after_own):
        return None
    word = subject.group("word")
    if subject.group("poss") and re.fullmatch(_NOT_POSSESSED, word.lower()):
        return None  # "Sefa's not here": Sefa is
    if not subject.group("poss") and not _is_verb(word.rstrip(",;")):
        return None
    rest = sentence[subject.end():]
    mentions_other = bool(others) and _any_of(tuple(sorted(others))).search(sentence) is not None
    if mentions_other and pronouns.pattern().search(rest):
        return None  # "her" might be another character's
    lead = subject.group("lead")
    start = "my" if subject.group("poss") else "I"
    if not lead:
        start = start.capitalize()
    head = f"{lead}{start} {word if subject.group('poss') else _conjugate(word)}"
    if not subject.group("poss"):
        rest = _COORDINATED.sub(lambda m: f"{m.group(1) or m.group(3)} {_conjugate(m.group(2) or m.group(4))}", rest)
    rest = re.sub(rf"\b(?:{named})'s\b", "my", rest)
    rest = re.sub(rf"\b(?:{named})\b", "me", rest)
    if not mentions_other:
        rest = _pronouns_to_first_person(rest, pronouns)
    return head + rest


def mentions_in_first_person(sentence: str, names: list[str]) -> str:
    """A sentence about someone else, with the NPC's possessive as "my" ("Warmed in Sefa's palm" ->
    "Warmed in my palm") and the NPC beside another subject as "I" ("Wren and Sefa find" -> "Wren and I
    find"); pronouns are left alone, since "her" there could be either."""
    named = _names_pattern(names)
    verb = rf"(?= (?!(?:{'|'.join(_OBJECT_FOLLOWERS)})\b)[a-z]+\b)"  # a verb follows, not an object's word
    sentence = re.sub(rf"(?P<lead>^{_LEAD}|, )(?P<other>[A-Z][\w'’-]*(?: [A-Z][\w'’-]*)?) and (?:{named}){verb}",
                      r"\g<lead>\g<other> and I", sentence)
    return re.sub(rf"\b(?:{named})'s (?!(?:{_NOT_POSSESSED})\b)", "my ", sentence)


def _rendered(sentence: str, names: list[str], others: set[str], after_own: bool,
              pronouns: Pronouns) -> tuple[str, bool]:
    """The sentence as the NPC says it, and whether its subject is the NPC (so a "She" after it is too)."""
    own = sentence_in_first_person(sentence, names, others, after_own, pronouns)
    if own is not None:
        return own, True
    return mentions_in_first_person(sentence, names), False


def _names_npc(heading: str, names: list[str]) -> bool:
    """A heading that is the NPC's name ("Characters of the Shallows > Sefa Orrin" ends with it)."""
    last = heading.rsplit(">", 1)[-1].strip().casefold()
    return bool(last) and last in (n.casefold() for n in names)


def chunk_in_first_person(text: str, title: str, names: list[str], others: set[str],
                          pronouns: Pronouns = SHE) -> dict[str, tuple[str, bool]]:
    """Each sentence of a chunk (whitespace made single, as answers quote it) as the NPC says it, and
    whether its subject is the NPC; read in order so that a "She ..." knows whom it follows.

    "She" is the NPC after a sentence whose subject is the NPC, or under a heading
    that names the NPC (a character entry) while no sentence since has named anyone.
    """
    named = _any_of((*names, *sorted(others)))
    rendered: dict[str, tuple[str, bool]] = {}
    heading, npc_is_she = None, False
    for sentence, _ in analysed(text):
        if (sentence.heading or title) != heading:
            heading = sentence.heading or title
            npc_is_she = _names_npc(heading, names)
        quoted = " ".join(text[sentence.start:sentence.end].split())
        rendered[quoted] = _rendered(quoted, names, others, npc_is_she, pronouns)
        npc_is_she = rendered[quoted][1] or (npc_is_she and not named.search(quoted))
    return rendered


def _as_chunk_sentences(quote: str, known: dict) -> list[str] | None:
    """A quote split into the chunk's sentences it runs over, or None when it is not made of them."""
    parts, position = [], 0
    while position < len(quote):
        found = max((s for s in known if quote.startswith(s, position)), key=len, default=None)
        if not found:
            return None
        parts.append(found)
        position += len(found)
        while position < len(quote) and quote[position] == " ":
            position += 1
    return parts


def first_person(text: str, names: list[str], others: set[str],
                 chunks: dict[int, tuple[str, str]] | None = None, pronouns: Pronouns = SHE) -> str:
    """An extractive answer ("sentence [n] sentence [n]") with the NPC's sentences in the first person.

    ``chunks``: each citation number's chunk (text, heading path), read for whom a leading
    "She" follows; a quote of a chunk not given follows the answer's previous quote instead.
    ``pronouns``: how the canon refers to the NPC (``npc_pronouns``).
    """
    out, previous_own, rendered_chunks = [], False, {}
    for sentence in (s.strip() for s in _ANSWER_SENTENCE.findall(text)):
        if not sentence:
            continue
        quote, markers = re.match(r"(.*?)((?:\s\[\d+\])*)$", sentence).groups()
        numbers = re.findall(r"\d+", markers)
        chunk = (chunks or {}).get(int(numbers[0])) if numbers else None
        if chunk and chunk not in rendered_chunks:  # an answer quotes a chunk up to three times
            rendered_chunks[chunk] = chunk_in_first_person(*chunk, names, others, pronouns)
        known = rendered_chunks[chunk] if chunk else {}
        parts = _as_chunk_sentences(quote, known) if known else None
        if parts is None:
            rendered, previous_own = _rendered(sentence, names, others, previous_own, pronouns)
            out.append(rendered)
            continue
        out.append(" ".join(known[p][0] for p in parts) + markers)
        previous_own = known[parts[-1]][1]
    return " ".join(out)


def npc_names(card: Card) -> list[str]:
    """What the canon may call the NPC: the full name, the speaker name, the first name, each also
    after the first word of the role ("Archivist Ysolde Penhallow", "The ferrywoman Maren")."""
    full = card.name
    names = list(dict.fromkeys([full, card.speaker, full.split()[0]]))
    title = card.role.split()[0]
    titled = [f"{form} {name}" for name in names for form in (title, f"The {title.lower()}", f"the {title.lower()}")]
    return [*names, *titled]


def npc_pronouns(card: Card) -> Pronouns:
    """HE when the card's persona and role say he/him/his more often than she/her, else SHE."""
    words = re.findall(r"[a-z]+", f"{card.persona} {card.role}".lower())
    he = sum(words.count(w) for w in ("he", "him", "his", "himself"))
    return HE if he > sum(words.count(w) for w in ("she", "her", "herself")) else SHE
