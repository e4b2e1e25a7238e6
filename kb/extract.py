"""Choose the canon sentences that answer a question, for answers written without a model.

A sentence scores by the share of the question's rare terms it holds
(`coverage`): a term counts whole when its stem is there, in part when only
a related form is (founder for founded), and in part when only the chunk's
heading or, for a sentence that opens with a pronoun, the sentence before
holds it; every sentence of a Chinese chunk holds the name its first
sentence opens with, since a Chinese article names its subject once and then
drops it; the word a Chinese question word picks out (哪个政权) names the
kind of the answer and is not looked for; a character of a Chinese question
that no term the context holds covers (卵 in 鱼的卵) counts a little on its
own, to part sentences that hold the same terms. On top come a bonus when the
sentence holds the kind of thing the question asks for (who: a name; when: a
date; how many: a number; where: a place; what colour: a colour; how did X
feel: a feeling) that the question does not already name, and a small one
for the chunk's rank. Sentences
are split with care for abbreviations, quotes and list items; a fragment is
never quoted alone, a sentence opening with a pronoun brings the one it
leans on, one that tells the event a question asks the outcome of ("What
happened when …?") brings the sentence after it, and near-identical
sentences are quoted once. Everything here takes and returns plain values.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import json
import math
import re
import threading
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from ingest.text import CJK_CHARS, fold
from kb.lexical import query_tokens, tokens

MAX_QUOTES = 3
RELATED_FORM = 0.7  # a question term found only as a related form (founder for founded)
HEADING = 0.5  # ... found only in the chunk's heading
LEANED_ON = 0.6  # ... found only in the sentence a pronoun-led sentence leans on
SUBJECT = 1.0  # ... found only in the subject a Chinese chunk's first sentence opens with (article_subject)
TYPE_BONUS = 0.3  # the sentence holds what the question asks for (a name, a date, a number, a place)
CHARACTER = 0.05  # a Chinese question's characters no held term covers, together: a tie-breaker (_unheld_characters)
RANK_BONUS = 0.1  # for the first-ranked chunk, falling as 1/rank
SAID = 0.3  # a question term the quotes already hold weighs this share for the next pick
LOCAL_FLOOR = 0.1  # the least a question term held by most of the context's sentences still weighs
FRAGMENT_WORDS = 4  # fewer words than this (a CJK character counts half) is a fragment
# Bump when the sentence split or the terms of a sentence change: the index then works its stored analyses
# out again (kb/postings.py); tests/test_extract.py pins the analysis of a tricky text to catch a change.
ANALYSIS_VERSION = 1
KEPT_ANALYSES = 256  # chunks whose analysis is kept in memory

_CJK = re.compile(f"[{CJK_CHARS}]")
_CJK_RUN = re.compile(f"[{CJK_CHARS}]+")
_LATIN_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_DIGITS = re.compile(r"\d+")
_NOT_WORD = re.compile(r"\W+")
_HEADING_LINE = re.compile(r"#{1,6}\s")
_LIST_MARKER = re.compile(r"(?:[-*+•]|\(?\d{1,3}[.)]|[a-z][.)])\s+")
# A sentence ends at . ! ? … (with closing quotes or brackets) before a space, or at 。！？ (with closers).
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)|[。！？!?]+[」』”’）)\"]*")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st mt ft jr sr prof gen capt col lt sgt cpl rev hon fr sen gov pres vs etc "
    "e.g eg i.e ie cf al no nos vol vols pp p ch fig figs approx ca inc ltd co corp dept est".split())
_NEXT_CHARACTER = re.compile(r"\s*(\S)")
_PRONOUN_OPENERS = frozenset(
    "he she it they him her his its their them this these that those such there's".split())
_ZH_PRONOUN_OPENERS = tuple("他她它其该該此这這")
_ZH_FUNCTION = re.compile("[的了是在和与與及或也就而被把对對从從为為于於以之会會这這那个個着过過吗嗎呢吧么麼]")
# A Chinese question word and the character pair after it, the kind of thing asked for: 哪个政权, 什么官职, 有哪些机构.
_ZH_ASKING = re.compile(f"(?:什么|什麼|哪个|哪個|哪些|哪种|哪種|哪一|怎样的|怎樣的|怎么样的|怎麼樣的|何种|何種)([{CJK_CHARS}]{{2}})")
# The name a Chinese article opens with: "唐爱陆（1872年—1944年），…", "散发脱刀令，俗称…", "《夏日旋律》是…", "余杭站位于…".
_ZH_SUBJECT = re.compile(f"[《「“]?([{CJK_CHARS}A-Za-z·]{{2,12}}?)[》」”]?(?=[（(，,]|是|为|為|位于|位於)")

# What a question asks for: its earliest question phrase decides, the longer one where two start
# together ("what year" over "what", 什么时候 over 什么); phrases that ask for no kind map to None.
_QUESTION_TYPES = (
    ("date", re.compile(r"\b(?:when|what year|which year|what date|what day|what century|what time)\b"
                        r"|哪一年|哪年|何年|哪一天|何时|何時|什么时候|什麼時候|什么时间|什麼時間|几月|幾月|几号|幾號"
                        r"|哪个朝代|哪個朝代|哪一世纪|哪個世紀|哪一世紀|什么年代|什麼年代")),
    # "how tall": only "how" goes, so "tall" stays content ("is 58 metres tall")
    ("number", re.compile(r"\bhow (?:many|much)\b|\bhow(?= (?:long|old|far|wide|tall|high|deep|big|large|heavy|often)\b)"
                          r"|多少|多久|多长|多長|多大|多高|多远|多遠|多深|多重|多宽|多寬|几|幾")),
    ("person", re.compile(r"\b(?:who|whom|whose)\b|谁|誰|哪位|哪一位|何人|哪一人|哪个人|哪個人")),
    ("place", re.compile(r"\bwhere\b|哪里|哪裡|哪裏|哪儿|哪兒|何处|何處|什么地方|什麼地方|哪个国家|哪個國家"
                         r"|哪座城市|哪个城市|哪個城市|哪个地区|哪個地區")),
    ("feeling", re.compile(r"\bhow\b(?=(?:\s+\S+){1,6}?\s+feel\b)")),
    # only the question word: "colour" and 颜色 stay content (the canon may say "its colour is ...")
    ("colour", re.compile(r"\b(?:what|which)(?=\s+colou?rs?\b)|(?:什么|什麼|哪种|哪種)(?=颜色|顏色|色)|何(?=色)"
                          r"|(?<=颜色|顏色)是")),
    (None, re.compile(r"\bwhat (?:happened|happens|will happen)\b|\b(?:what|which|why|how)\b"
                      r"|什么|什麼|哪些|哪个|哪個|哪一|哪种|哪種|如何|怎么|怎麼|怎样|怎樣"
                      r"|为什么|為什麼|为何|為何")),
)
# 有 or 是 just before a Chinese question word (有什么, 是哪里) belongs to the question phrase: left in, it joins the
# word before into a bigram no canon says (铁路有 gives 路有, which matched 铁路有限公司).
_ZH_LEADING_VERB = re.compile("[有是](?=什么|什麼|哪|多少|几|幾|谁|誰|怎|如何|何)")
# "feel" of "How did X feel …?" asks for a feeling: the answer names one (terrified, grateful), seldom "feel" itself.
_FEEL = re.compile(r"\bfeel\b")
_NUMBER_WORDS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety "
                 "hundred thousand million billion dozen score half once twice thrice first second third")
_MONTHS = "january february march april may june july august september october november december"
_ZH_NUMERAL = "〇零一二两兩三四五六七八九十百千万萬亿億"
_ZH_MEASURE = "个個年月日天夜人名位次种種件座条條只隻本部张張头頭匹艘家所层層届屆任米里斤吨噸元岁歲倍多余餘成"
_COLOURS = ("red orange yellow green blue purple violet black white grey gray brown pink golden gold silver scarlet "
            "crimson azure")
_FEELINGS = ("happy glad joy joyful delighted overjoyed pleased content proud grateful thankful relieved excited "
             "sad sorrow sorrowful unhappy miserable grief grieved lonely ashamed sorry angry furious enraged vexed "
             "annoyed jealous envious afraid frightened terrified scared fear fearful alarmed anxious worried uneasy "
             "nervous surprised astonished amazed puzzled confused curious disappointed")
# Compiled on first use (_evidence): the five took 13 ms of every process's import, a `kb search` using none.
_EVIDENCE = {
    "feeling": (rf"\b(?:{_FEELINGS.replace(' ', '|')})\b", re.I),
    "colour": (rf"\b(?:{_COLOURS.replace(' ', '|')})\b|[红紅橙黄黃绿綠青蓝藍紫黑白灰褐棕粉金银銀赤]色", re.I),
    "date": (rf"\b(?:1\d{{3}}|20\d\d)\b|\b\d+\s*(?:[A-Z]{{2,3}}|[ab]\.?c\.?|a\.?d\.?)(?![a-z])"
             rf"|\b(?:{_MONTHS.replace(' ', '|')})\b|\d+\s*(?:年|月|日|世纪|世紀)"
             rf"|[{_ZH_NUMERAL}]+(?:年|月|日|世纪|世紀)|年代|朝|时期|時期|centur(?:y|ies)", re.I),
    "number": (rf"\d|\b(?:{_NUMBER_WORDS.replace(' ', '|')})\b|第[{_ZH_NUMERAL}]"
               rf"|[{_ZH_NUMERAL}]+[{_ZH_MEASURE}]", re.I),
    "place": (rf"\b(?:in|at|from|to|near|on|into|across|beyond|of)\s+(?:the\s+)?[A-Z][\w'’-]+"
              rf"|(?:在|位于|位於|于|於|来自|來自|到)[{CJK_CHARS}]{{1,8}}?"
              rf"(?:省|市|县|縣|区|區|州|国|國|岛|島|山|河|江|湖|海|城|镇|鎮|村|洲|港|湾|灣|郡|道|府)"
              rf"|(?:省|市|县|縣|州|村|镇|鎮|乡|鄉)人(?![口民员員数數士物们們均])", 0),
}


@functools.cache
def _evidence(kind: str) -> re.Pattern:
    """A kind's evidence pattern, compiled when a question first asks for that kind."""
    return re.compile(*_EVIDENCE[kind])


# The kinds whose evidence is one of a list of words: a sentence is read word by word, and only a word with a letter
# outside ASCII goes to the pattern (whose case-blind match differs from lower() there); the pattern tried at every
# character was 70 µs a sentence.
_EVIDENCE_WORDS = {"feeling": frozenset(_FEELINGS.split())}
_WORD_RUN = re.compile(r"\w+")
# Chinese words for one thing that share no character bigram (卒 for 去世, 著有 for 著作, 用于 for 用途): where the question
# uses one and the canon another, the canon holds a related form of it. Simplified and traditional both.
_ZH_SAME_THING = (
    "去世 逝世 病逝 过世 過世 辞世 辭世 身故 卒 殁 歿 死于 死於",
    "出生 生于 生於 诞生 誕生",
    "著作 著有 作品 代表作 撰有 编著 編著 著述",
    "创立 創立 创办 創辦 创建 創建 成立 始创 始創 创设 創設",
    "用途 用于 用於 用作 用来 用來",
    "才能 擅长 擅長 擅于 擅於 精通",
    "包含 包括 含有",
    "特征 特徵 特点 特點",
    "爱好 愛好 喜欢 喜歡 喜爱 喜愛 嗜好 兴趣 興趣",
)
# A Chinese word a question asks about and the words the canon tells it with, one way only: a species' 习性 is where
# it lives and what it eats (栖息于…以…为食), which no other question word means.
_ZH_TOLD_BY = {word: "栖息 棲息 觅食 覓食 为食 為食 捕食 夜行 昼行 晝行 群居 独居 獨居 洄游 迴游" for word in ("习性", "習性")}
_ZH_FORMS = {word: tuple(other for other in group.split() if other != word)
             for group in _ZH_SAME_THING for word in group.split()} | {
    word: tuple(told.split()) for word, told in _ZH_TOLD_BY.items()}
_WHAT_FOLLOWED = re.compile(r"\bwhat happened\b|\b(?:what|how)\b.*\b(?:when|after|once|as soon as|because)\b", re.I)
_CAPITALISED_RUN = re.compile(r"\b[A-Z][a-z'’-]+(?:\s+(?:[A-Z][a-z'’-]+|of|de|van|von))*")


class Quote(NamedTuple):
    """Words of the canon to quote, and the citation number of the chunk they come from."""

    text: str
    n: int


class _Sentence(NamedTuple):  # a tuple: an answer reads back hundreds from the index, and a dataclass built slower
    start: int
    end: int
    line: int  # which line of the chunk: sentences of one line can be quoted as one run
    heading: str  # the nearest heading line above it in the chunk, else ""


def question_type(question: str) -> str | None:
    """What the question asks for: "person", "date", "number", "place", "colour", "feeling", or None (what, why, how)."""
    folded = fold(question)
    found = [(match.start(), -len(match.group(0)), kind is None, kind) for kind, pattern in _QUESTION_TYPES
             for match in [pattern.search(folded)] if match]
    return min(found, key=lambda f: f[:3])[3] if found else None


def _without_question_words(question: str) -> str:
    """The question less the phrase that says what it asks for ("what year", 哪一年): not content."""
    folded = _ZH_LEADING_VERB.sub(" ", fold(question))
    if question_type(question) == "feeling":
        folded = _FEEL.sub(" ", folded)
    for _, pattern in _QUESTION_TYPES:
        folded = pattern.sub(" ", folded)
    return folded


def _breaks_here(line: str, match: re.Match) -> bool:
    """Whether a sentence-ending mark really ends a sentence (not "Mr.", "J.", "e.g." or '"Go!" he said')."""
    following = _NEXT_CHARACTER.match(line, match.end())
    if not following:
        return True
    if following.group(1).islower():
        return False
    if line[match.start()] == ".":
        token = _word_before(line, match.start() + 1).lower()
        if token in _ABBREVIATIONS or (len(token) == 1 and token.isalpha()):
            return False
    return True


def _word_before(line: str, end: int) -> str:
    """The run of letters, digits and dots that ends at ``end``, less its final dots ("e.g" of "e.g.").

    Read backwards from the mark: a search anchored at the line's end rescanned the
    whole line before every mark, which made splitting a long paragraph quadratic.
    """
    while end and line[end - 1] == ".":
        end -= 1
    start = end
    while start and (line[start - 1].isalnum() or line[start - 1] in "_."):
        start -= 1
    return line[start:end]


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of a chunk: headings and list markers left out, fragments joined.

    Lines wrapped inside a paragraph are read as one line; a fragment (a
    heading-like phrase, a two-word list item) is joined to the sentence after
    it on its line, or to the one before when it comes last; a line that is
    only a fragment is not quoted but heads the sentences below it.
    """
    return [(s.start, s.end) for s in _sentences(text)]


def _soft_wrap(line: str, following: str) -> bool:
    """Whether a line break only wraps a paragraph (the next line goes on with the same sentence)."""
    line, following = line.strip(), following.strip()
    if not line or not following or _HEADING_LINE.match(following) or _LIST_MARKER.match(following):
        return False
    return following[0].islower() or (len(line) >= 50 and not _SENTENCE_END.search(line[-3:] + " "))


def _lines(text: str) -> list[tuple[int, int]]:
    """(start, end) of each logical line: physical lines, with paragraph wraps undone."""
    spans, offset = [], 0
    physical = text.split("\n")
    for i, line in enumerate(physical):
        if spans and i and _soft_wrap(physical[i - 1], line):
            spans[-1] = (spans[-1][0], offset + len(line))
        else:
            spans.append((offset, offset + len(line)))
        offset += len(line) + 1
    return spans


def _sentences(text: str) -> list[_Sentence]:
    found: list[_Sentence] = []
    heading = ""
    for number, (begin, end) in enumerate(_lines(text)):
        line = text[begin:end]
        stripped = line.strip()
        if not stripped:
            continue
        if _HEADING_LINE.match(stripped):
            heading = stripped.lstrip("#").strip()
            continue
        lead = len(line) - len(line.lstrip())
        marker = _LIST_MARKER.match(line, lead)
        start = marker.end() if marker else lead
        pieces = []
        for match in _SENTENCE_END.finditer(line, start):
            if _breaks_here(line, match):
                pieces.append((start, match.end()))
                start = match.end()
                while start < len(line) and line[start].isspace():
                    start += 1
        if line[start:].strip():
            pieces.append((start, len(line.rstrip())))
        joined = _join_fragments(line, pieces)
        if len(joined) == 1 and is_fragment(line[joined[0][0]:joined[0][1]]):
            heading = line[joined[0][0]:joined[0][1]]  # a line too short to quote alone heads what follows
            continue
        for piece_start, piece_end in joined:
            found.append(_Sentence(begin + piece_start, begin + piece_end, number, heading))
    return found


class Terms:
    """A chunk's terms, and the same in sorted order, where every related form of a word sits beside it.

    The order is made on first use: only a question with a Latin word of four or more letters looks a form
    up, so a Chinese question never pays for it (an index by first four letters, built with the terms, was
    9% of what an answer added to a cmrc2018 search; sorting in C costs a fraction of building that index).
    """

    def __init__(self, held) -> None:
        self.held = frozenset(held)

    @functools.cached_property
    def in_order(self) -> list[str]:
        return sorted(self.held)


Analysis = tuple[tuple[_Sentence, frozenset[str]], ...]
_remembered: dict[str, Analysis] = {}  # chunk text -> its analysis read back from the index, the oldest first
_remembered_lock = threading.Lock()


def analysed(text: str) -> Analysis:
    """A chunk's sentences with their terms: as stored when the chunk was indexed (``remember``), else
    worked out and kept for a while (the relevance check and the sentence choice both read them)."""
    found = _remembered.get(text)
    return found if found is not None else _worked_out(text)


def _analyse(text: str) -> Analysis:
    return tuple((s, frozenset(tokens(text[s.start:s.end]))) for s in _sentences(text))


_worked_out = functools.lru_cache(maxsize=KEPT_ANALYSES)(_analyse)


def stored_analysis(text: str) -> str:
    """A chunk's analysis as JSON text, worked out once when the chunk is indexed: splitting and tokenizing
    the cited chunks' sentences was a third of what an extractive answer added to a search."""
    sentences = _analyse(text)
    headings = list(dict.fromkeys(s.heading for s, _ in sentences))
    return json.dumps([ANALYSIS_VERSION, len(text), headings,
                       [[s.start, s.end, s.line, headings.index(s.heading), " ".join(sorted(terms))]
                        for s, terms in sentences]], ensure_ascii=False)


def remember(text: str, stored: str) -> None:
    """Take a chunk's analysis from what ``stored_analysis`` gave when it was indexed (one of another
    version of this module, of another text or damaged is ignored: ``analysed`` works it out instead)."""
    try:
        version, length, headings, rows = json.loads(stored)
        if version != ANALYSIS_VERSION or length != len(text):
            return
        analysis = tuple((_Sentence(start, end, line, headings[heading]), frozenset(terms.split()))
                         for start, end, line, heading, terms in rows)
    except (ValueError, TypeError, IndexError, AttributeError):
        return  # damaged: worked out again
    with _remembered_lock:
        if len(_remembered) >= KEPT_ANALYSES:
            del _remembered[next(iter(_remembered))]
        _remembered[text] = analysis


@functools.lru_cache(maxsize=KEPT_ANALYSES)
def passage_terms(text: str, title: str) -> Terms:
    """A whole chunk's terms, its title and headings counted as its words."""
    sentences = analysed(text)
    terms = set(tokens("\n".join({title, *(s.heading for s, _ in sentences)})))
    terms.update(*(sentence_terms for _, sentence_terms in sentences))
    return Terms(terms)


def forget_analyses() -> None:
    """Empty the caches of analysed chunks, so a benchmark's timed call pays for its own analysis."""
    with _remembered_lock:
        _remembered.clear()
    _worked_out.cache_clear()
    passage_terms.cache_clear()


def passage_coverage(question: str, text: str, title: str, idf: Callable[[str], float]) -> float:
    """Share of the question's rare terms that a whole chunk holds, its headings counted as its words.

    The relevance check ("does the canon hold this at all?") reads this.
    """
    return chunk_coverage(question_terms(question, idf), text, title)


def chunk_coverage(asked: dict[str, float], text: str, title: str) -> float:
    """passage_coverage for question terms already weighed, so several chunks share that work."""
    terms = passage_terms(text, title)
    return coverage(asked, {term: term_credit(term, terms.held, related_forms(term, terms), f"{title}\n{text}")
                            for term in asked})


def _join_fragments(line: str, pieces: list[tuple[int, int]]) -> list[tuple[int, int]]:
    joined: list[tuple[int, int]] = []
    carry = None
    for start, end in pieces:
        if carry is not None:
            start, carry = carry, None
        if is_fragment(line[start:end]):
            carry = start
            continue
        joined.append((start, end))
    if carry is not None:
        if joined:
            joined[-1] = (joined[-1][0], pieces[-1][1])
        else:
            joined.append((carry, pieces[-1][1]))
    return joined


def is_fragment(sentence: str) -> bool:
    """Too short to say anything alone (a heading, a label, "Wardens wear grey"): fewer than FRAGMENT_WORDS
    words and numbers, a CJK character counting half; counted only as far as that, since most sentences pass."""
    count = 0.0
    for pattern, weight in ((_LATIN_WORD, 1.0), (_DIGITS, 1.0), (_CJK, 0.5)):
        for _ in pattern.finditer(sentence):
            count += weight
            if count >= FRAGMENT_WORDS:
                return False
    return True


def leans_on_previous(sentence: str) -> bool:
    """Whether a sentence opens with a pronoun, so it means little without the one before."""
    stripped = sentence.lstrip("\"'“‘(「『 ")
    if stripped.startswith(_ZH_PRONOUN_OPENERS):
        return True
    first = _LATIN_WORD.match(stripped)
    return bool(first) and first.group(0).lower() in _PRONOUN_OPENERS


def _one_word(stem: str, other: str) -> bool:
    """Two forms of the same word: one stem a prefix of the other (found/founder), or nearly so."""
    shorter = min(len(stem), len(other))
    common = 0
    while common < shorter and stem[common] == other[common]:
        common += 1
    return common == shorter or (common >= 5 and common >= shorter - 1)


def related_forms(stem: str, others: Terms) -> tuple[str, ...]:
    """The other forms of a (non-CJK) stem's word among a chunk's terms: those sharing its first four letters,
    found by bisection in the sorted terms (a scan of all the terms cost fairytaleqa 20% of ask)."""
    if len(stem) < 4 or _CJK.search(stem):
        return ()
    prefix, terms = stem[:4], others.in_order
    found = []
    for other in itertools.islice(terms, bisect.bisect_left(terms, prefix), None):
        if not other.startswith(prefix):
            break
        if other != stem and _one_word(stem, other):
            found.append(other)
    return tuple(found)


def term_credit(term: str, terms: frozenset[str], forms: tuple[str, ...], text: str = "") -> float:
    """How much of one question term a text holds: itself 1, one of its related ``forms`` (or, in Chinese,
    another word for the same thing in ``text``) RELATED_FORM, else 0."""
    if term in terms or (term in _ZH_FORMS and any(word in text for word in _ZH_FORMS[term])):
        return 1.0
    return RELATED_FORM if forms and any(form in terms for form in forms) else 0.0


def coverage(question_terms: dict[str, float], credits: dict[str, float]) -> float:
    """Share of the question's terms, weighted by rarity, that a sentence (with its context) holds.

    ``credits``: how much of each question term it holds (term_credit, or more from its context).
    """
    total = sum(question_terms.values())
    if not total:
        return 0.0
    return sum(weight * credits[term] for term, weight in question_terms.items()) / total


def names_the_doer(sentence: str, question: str) -> bool:
    """Whether a sentence names the doer of the question's act: "the poisoner" for who poisoned,
    "their founder" for who founded (an -er/-or noun on the stem of a word of the question)."""
    return doer_test(question)(sentence)


def doer_test(question: str) -> Callable[[str], bool]:
    """``names_the_doer`` for one question, its stems worked out once (not again for every sentence)."""
    stems = frozenset(tokens(question))

    def names_doer(sentence: str) -> bool:
        return any(word[:-2] in stems for word in _LATIN_WORD.findall(fold(sentence))
                   if len(word) > 5 and word.endswith(("er", "or")))
    return names_doer


def has_evidence(sentence: str, kind: str, question: str) -> bool:
    """Whether a sentence holds the kind of thing asked for, beyond what the question already says."""
    return evidence_test(kind, question)(sentence)


def evidence_test(kind: str, question: str) -> Callable[[str], bool]:
    """``has_evidence`` for one question, what it needs of the question worked out once: every sentence of
    the context is tested, and a who-question was stemmed again for each (and each name in it as often)."""
    if kind == "person":
        known = set(tokens(question))

        @functools.cache
        def new_name(run: str) -> bool:
            return bool(set(tokens(run)) - known)

        def names_someone(sentence: str) -> bool:
            return ("·" in sentence or "‧" in sentence
                    or any(new_name(m.group(0)) for m in _CAPITALISED_RUN.finditer(sentence)))
        return names_someone
    asked, pattern = fold(question), _evidence(kind)
    if kind in _EVIDENCE_WORDS:
        words = _EVIDENCE_WORDS[kind]

        def holds_new_word(sentence: str) -> bool:
            return any((word.lower() in words if word.isascii() else pattern.fullmatch(word)) and fold(word) not in asked
                       for word in _WORD_RUN.findall(sentence))
        return holds_new_word

    def holds_new(sentence: str) -> bool:
        return any(fold(m.group(0)) not in asked for m in pattern.finditer(sentence))
    return holds_new


def question_terms(question: str, idf: Callable[[str], float], all_words: bool = False) -> dict[str, float]:
    """The question's content terms (less its question words and the CJK bigrams that hold a
    function character, like 鹿的 or 贯是), each weighted by its rarity in the canon.

    ``all_words`` keeps the CJK bigrams spaCy's Chinese stopword list drops for retrieval (kb.lexical): that
    list holds content words (应用, 出现, 才能, 特点, 经过) that tell the sentence answering a question apart.
    """
    pick = tokens if all_words else query_tokens
    terms = pick(_without_question_words(question)) or pick(question)
    return {term: idf(term) for term in dict.fromkeys(terms) if not _ZH_FUNCTION.search(term)}


def answer_kinds(question: str) -> set[str]:
    """The character pairs a Chinese question's question words pick out (哪个政权, 什么官职): they name the kind
    of the answer, which the answering sentence names instead ("后来雍闿降东吴。"), so the sentence choice does
    not look for them; except a word the canon says in other words (用途: 用于), whose forms are the answer."""
    return {m.group(1) for m in _ZH_ASKING.finditer(fold(question))} - _ZH_FORMS.keys()


def article_subject(first: str) -> frozenset[str]:
    """The terms of the name a Chinese chunk's first sentence opens with, which the sentences after it drop
    ("浙江省宁波镇海县小港村人。" in an article that opens "唐爱陆（1872年—1944年），…"): each of them names it.

    None for an opening that is a time or a linking phrase ("商朝時期，", "在歐洲，", "島嶼之間距離比較近的，"):
    one that holds a digit, a function character or a date word, or ends in a word of time or place (时, 后, 中).
    """
    match = _ZH_SUBJECT.match(first.lstrip())
    if not match:
        return frozenset()
    name = match.group(1)
    if (not _CJK.search(name) or _ZH_FUNCTION.search(name) or _evidence("date").search(name)
            or name[-1] in "时時后後外中前间間内內"):
        return frozenset()
    return frozenset(tokens(name))


def _shape(text: str) -> tuple[str, frozenset[str]]:
    """A text as near-copies are compared: its folded letters and digits, and their character trigrams."""
    bare = _NOT_WORD.sub("", fold(text))
    return bare, frozenset(map("".join, zip(bare, bare[1:], bare[2:])))


def _same(a: tuple[str, frozenset[str]], b: tuple[str, frozenset[str]]) -> bool:
    """Near-identical texts, by their ``_shape`` (the same line copied into several loc-table rows or chunks):
    trigrams shared by at least 0.8 of those either holds (sets of sizes apart by more than that share fewer)."""
    (bare_a, grams_a), (bare_b, grams_b) = a, b
    if bare_a == bare_b:
        return True
    fewer, more = sorted((len(grams_a), len(grams_b)))
    if 5 * fewer < 4 * more:
        return False
    shared = len(grams_a & grams_b)
    union = len(grams_a) + len(grams_b) - shared
    return bool(union) and shared / union >= 0.8


@dataclass(slots=True)
class _Candidate:
    """One sentence of the context, where it stands and what it scored."""

    n: int  # the chunk's citation number
    rank: int  # the chunk's place in the ranking, from 1
    order: int  # the sentence's place in its chunk
    sentence: _Sentence
    text: str
    terms: frozenset[str]
    own: dict[str, float]  # how much of each question term the sentence itself holds (term_credit)
    context: list[tuple[set[str], float]] = field(default_factory=list)  # (heading, the sentence leaned on) terms
    credits: dict[str, float] = field(default_factory=dict)  # own, or more from the context
    held: list[tuple[str, float]] = field(default_factory=list)  # the scored terms it holds, with their credits
    typed: int = 0  # holds the kind of thing the question asks for (2: and names the doer of the act asked about)
    score: float = 0.0

    def credit(self, term: str) -> float:
        """How much of any term the sentence holds, its context counted (the question's are worked out ahead)."""
        if term in self.credits:
            return self.credits[term]
        own = term_credit(term, self.terms, related_forms(term, Terms(self.terms)), self.text)
        return max([own, *(weight for held, weight in self.context if term in held)])

    def rescore(self, asked: dict[str, float], total: float) -> None:
        """The score for the terms' weights ``asked`` (their sum ``total``): coverage summed over the terms
        the sentence holds only, which adds up to the same float, since every other term adds 0.0."""
        held = sum([asked[term] * credit for term, credit in self.held]) / total if total else 0.0
        self.score = held + RANK_BONUS / self.rank + TYPE_BONUS * self.typed


def _local_rarity(asked: dict[str, float], sentences: list[_Candidate]) -> dict[str, float]:
    """Question terms weighted again by how few of the context's sentences hold them; terms none holds dropped.

    The subject of a passage is in most of its sentences, so it cannot tell them
    apart; the words that set the answering sentence apart are the rarer ones here.
    """
    count = len(sentences)
    weights = {}
    for term, weight in asked.items():
        holding = sum([s.own[term] > 0 for s in sentences])
        if holding:
            weights[term] = weight * max(LOCAL_FLOOR, math.log((count - holding + 0.5) / (holding + 0.5)))
    return weights


def candidates(question: str, chunks: list[tuple[int, str, str]],
               idf: Callable[[str], float]) -> tuple[list[_Candidate], dict[str, float]]:
    """Every sentence of the chunks ((n, text, heading), in rank order), scored, best first, and
    the question's terms with the weights they were scored by."""
    kinds = answer_kinds(question)
    everyone = {term: weight for term, weight in question_terms(question, idf, all_words=True).items()
                if term not in kinds and not (len(term) == 1 and _CJK.match(term))}  # a lone character: below
    forms = {term: [form for _, text, title in chunks for form in related_forms(term, passage_terms(text, title))]
             for term in everyone}
    characters = _unheld_characters(question, kinds, everyone, forms, chunks)
    by_chunk = []
    nothing = dict.fromkeys(everyone | characters, 0.0)  # copied for each sentence: 6x faster than making it anew
    for rank, (n, text, title) in enumerate(chunks, start=1):
        possible = [(term, forms[term])
                    for term in _terms_it_may_hold(everyone, forms, passage_terms(text, title).held, text)]
        sentences = []
        for order, (s, terms) in enumerate(analysed(text)):
            sentence = text[s.start:s.end]
            own = nothing.copy()
            for term, term_forms in possible:
                own[term] = term_credit(term, terms, term_forms, sentence)
            for char in characters:
                own[char] = float(char in sentence)
            sentences.append(_Candidate(n, rank, order, s, sentence, terms, own, [], {}, []))
        by_chunk.append((title, sentences))
    everything = [c for _, sentences in by_chunk for c in sentences]
    asked = _local_rarity(everyone | characters, everything)
    total = sum(asked.values())
    kind = question_type(question)
    evident = evidence_test(kind, question) if kind else None
    names_doer = doer_test(question) if kind == "person" else None
    for title, sentences in by_chunk:
        heading_terms: dict[str, set[str]] = {}
        subject = article_subject(sentences[0].text) if sentences else frozenset()
        for candidate in sentences:
            heading = candidate.sentence.heading
            if heading not in heading_terms:
                heading_terms[heading] = set(tokens(f"{title}\n{heading}"))
            candidate.context = [(heading_terms[heading], HEADING)]
            if candidate.order and leans_on_previous(candidate.text):
                candidate.context.append((sentences[candidate.order - 1].terms, LEANED_ON))
            if candidate.order and subject:
                candidate.context.append((subject, SUBJECT))
            candidate.credits = credits = candidate.own.copy()  # each term: the most the sentence or its context gives
            for held, weight in candidate.context:
                for term in held.intersection(credits):
                    if weight > credits[term]:
                        credits[term] = weight
            candidate.typed = int(evident is not None and evident(candidate.text))
            if candidate.typed and names_doer is not None and names_doer(candidate.text):
                candidate.typed += 1
            candidate.held = [(term, credits[term]) for term in asked if credits[term] > 0]
            candidate.rescore(asked, total)
    return sorted(everything, key=lambda c: (-c.score, c.rank, c.order)), asked


def _unheld_characters(question: str, kinds: set[str], everyone: dict[str, float], forms: dict[str, list[str]],
                       chunks: list[tuple[int, str, str]]) -> dict[str, float]:
    """The characters of a Chinese question that no term the context holds covers, each a term of its own: 卵 in
    鱼的卵 and 卒 in 卒于 stand between function characters, and 下颚骨 is written 下腭骨 in the canon. Together they
    weigh CHARACTER times the question's mean term, enough to tell apart sentences that hold the same terms."""
    content = _without_question_words(question)
    for kind in kinds:
        content = content.replace(kind, " ")
    if not everyone or not _CJK.search(content):
        return {}
    held = set().union(*(passage_terms(text, title).held for _, text, title in chunks))
    covered = {term for term in everyone
               if term in held or any(form in held for form in forms[term])
               or any(word in text for word in _ZH_FORMS.get(term, ()) for _, text, _ in chunks)}
    weight = CHARACTER * sum(everyone.values()) / len(everyone)
    found = {}
    for run in _CJK_RUN.findall(content):
        for i, char in enumerate(run):
            if _ZH_FUNCTION.match(char) or run[max(0, i - 1):i + 1] in covered or run[i:i + 2] in covered:
                continue
            if any(char in text for _, text, _ in chunks):
                found[char] = weight
    return {char: weight / len(found) for char in found}


def _terms_it_may_hold(everyone: dict[str, float], forms: dict[str, list[str]], held: frozenset[str],
                       text: str) -> list[str]:
    """The question terms some sentence of a chunk may get credit for: those the whole chunk holds (itself,
    a related form or, in Chinese, another word for it); the others score 0 in every sentence unlooked at."""
    return [term for term in everyone
            if term in held or any(form in held for form in forms[term])
            or any(word in text for word in _ZH_FORMS.get(term, ()))]


def _with_antecedents(candidate: _Candidate, sentences: list[_Candidate]) -> list[_Candidate]:
    """The sentence, after up to two before it that it leans on through an opening pronoun."""
    unit = [candidate]
    while len(unit) < 3 and unit[0].order and leans_on_previous(unit[0].text):
        unit.insert(0, sentences[unit[0].order - 1])
    return unit


def asks_what_followed(question: str) -> bool:
    """Whether a question asks what came of an event ("What happened when …?", "What did she do after …?"):
    the sentence that best matches it tells the event, and narrative tells what followed in the next one."""
    return bool(_WHAT_FOLLOWED.search(question))


def _runs(unit: list[_Candidate], text: str) -> list[Quote]:
    """Consecutive sentences of one line as one quote (whitespace made single spaces)."""
    quotes: list[Quote] = []
    first = last = unit[0]
    for candidate in unit[1:]:
        if candidate.sentence.line == last.sentence.line and candidate.order == last.order + 1:
            last = candidate
            continue
        quotes.append(Quote(" ".join(text[first.sentence.start:last.sentence.end].split()), first.n))
        first = last = candidate
    quotes.append(Quote(" ".join(text[first.sentence.start:last.sentence.end].split()), first.n))
    return quotes


def choose(question: str, chunks: list[tuple[int, str, str]], idf: Callable[[str], float],
           max_sentences: int = MAX_QUOTES) -> list[Quote]:
    """The quotes that answer the question best, best first: at most max_sentences sentences chosen,
    each after the sentences it leans on (and, where the question asks what followed an event, before
    the sentence after it), none said twice.

    Args:
        chunks: (citation number, text, heading) of each chunk in the context, in rank order.
        idf: how rare a term is in the canon (kb.retrieve.Corpus.idf).
    """
    ranked, asked = candidates(question, chunks, idf)
    texts = {n: text for n, text, _ in chunks}
    sentences_of: dict[int, list[_Candidate]] = {}
    for candidate in sorted(ranked, key=lambda c: (c.n, c.order)):
        sentences_of.setdefault(candidate.n, []).append(candidate)
    said: list[_Candidate] = []
    quotes: list[Quote] = []
    picked = 0
    shape = functools.cache(_shape)  # a sentence is compared with each one said: shaped once
    follows = asks_what_followed(question)
    while ranked and picked < max_sentences:
        candidate = ranked.pop(0)
        unit = [c for c in _with_antecedents(candidate, sentences_of[candidate.n])
                if not any(c is old or _same(shape(c.text), shape(old.text)) for old in said)]
        if not unit or unit[-1] is not candidate:
            continue
        following = sentences_of[candidate.n][candidate.order + 1:candidate.order + 2]
        if follows and following and not any(following[0] is old or _same(shape(following[0].text), shape(old.text))
                                              for old in said):
            unit.append(following[0])
        said.extend(unit)
        quotes.extend(_runs(unit, texts[candidate.n]))
        picked += 1
        if picked == max_sentences:
            break
        # what is said already counts less: the next pick is the one that adds most of the rest
        asked = {term: weight * (SAID if any(term in c.terms for c in unit) else 1.0) for term, weight in asked.items()}
        total = sum(asked.values())
        for other in ranked:
            if other.held:  # a sentence that holds no question term keeps its score: only its bonuses
                other.rescore(asked, total)
        ranked.sort(key=lambda c: (-c.score, c.rank, c.order))
    return quotes


def render(quotes: list[Quote]) -> str:
    """Quotes as answer text: each followed by its [n] citation."""
    return " ".join(f"{q.text} [{q.n}]" for q in quotes)
