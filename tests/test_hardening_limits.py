"""Spoiler limits fail closed: a key spelled `Chapter:`, a chapter written `four` or `ch4`, and strict cards."""

from __future__ import annotations

import math

from kb.api import KnowledgeBase
from kb.limits import within_limits
from tests.conftest import invoke, invoke_json
from tests.small_canon import BELL_QUESTION, BETRAYAL, HIDDEN_WORDS, PELL, write_canon

# the chapter-4 secret more ways: a capitalised key, a word, a code, NaN, a bool; and a script tag
SPELLINGS = {
    "world/betrayal-key.md": BETRAYAL.replace("chapter: 4", "Chapter: 4"),
    "world/betrayal-word.md": BETRAYAL.replace("chapter: 4", "chapter: four"),
    "world/betrayal-code.md": BETRAYAL.replace("chapter: 4", "chapter: ch4"),
    "world/betrayal-nan.md": BETRAYAL.replace("chapter: 4", "chapter: .nan"),  # chromadb drops a NaN
    "world/betrayal-bool.md": BETRAYAL.replace("chapter: 4", "chapter: true"),
    "scripts/betrayal.ink": "# Chapter: 4\nThe harbourmaster sold the brass bell Old Gull to the Grey Fleet "
                            "smugglers for forty crowns.\n",
}
RUMOUR = "# Dockside Rumour\nThe harbourmaster hides a smuggling ledger under the brass bell Old Gull.\n"


def world(tmp_path, card: str = PELL):
    """The small canon plus the secret spelled every way, a key-less rumour, and Pell's card as given."""
    folder = write_canon(tmp_path / "canon")
    for source, text in SPELLINGS.items():
        (folder / source).parent.mkdir(exist_ok=True)
        (folder / source).write_text(text, encoding="utf-8")
    (folder / "world" / "rumour.md").write_text(RUMOUR, encoding="utf-8")
    (folder / "npcs" / "pell.yaml").write_text(card, encoding="utf-8")
    return folder


def visible_sources(kb: KnowledgeBase, npc: str) -> set[str]:
    """Every file an NPC's retrieval can reach for the question, as far down as the store goes."""
    card = kb.npc(npc).card
    hits = kb.search(BELL_QUESTION, k=50, limits=card.knows, strict=card.strict)
    return {hit.source for hit in hits}


def test_limits_compare_only_what_they_can():
    pell = {"chapter": 1}
    assert within_limits({"chapter": 1}, pell) and within_limits({"title": "common"}, pell)
    for odd in ("four", "ch4", True, math.nan, math.inf, [1, "four"]):
        assert not within_limits({"chapter": odd}, pell), odd
    assert not within_limits({"title": "common"}, pell, strict=True)
    assert within_limits({"chapter": 1}, pell, strict=True)


def test_a_chapter_one_npc_never_quotes_a_chapter_four_secret_however_it_is_written(tmp_path):
    kb_dir = tmp_path / "kb"
    result, _ = invoke_json("ingest", world(tmp_path), "--kb", kb_dir)
    assert result.exit_code == 0, result.output
    result, answer = invoke_json("npc", "ask", "Pell", BELL_QUESTION, "-k", "10", "--kb", kb_dir)
    assert result.exit_code == 0, result.output
    assert not any(word in answer["answer"] for word in HIDDEN_WORDS), answer["answer"]
    assert not {c["source"] for c in answer["citations"]} & {"world/betrayal.md", *SPELLINGS}
    kb = KnowledgeBase.open(kb_dir)
    reached = visible_sources(kb, "Pell")
    assert "world/harbour.md" in reached and not reached & {"world/betrayal.md", *SPELLINGS}
    # a writer without limits still finds every spelling: nothing was dropped at ingest
    assert {"world/betrayal.md", *SPELLINGS} <= {h.source for h in kb.search(BELL_QUESTION, k=50)}


def test_a_chapter_numeric_limits_cannot_compare_is_a_warning_naming_the_file(tmp_path):
    kb_dir = tmp_path / "kb"
    result, report = invoke_json("ingest", world(tmp_path), "--kb", kb_dir)
    assert result.exit_code == 0, result.output
    expected = {"world/betrayal-word.md": "chapter is 'four'", "world/betrayal-code.md": "chapter is 'ch4'",
                "world/betrayal-nan.md": "chapter is 'nan'", "world/betrayal-bool.md": "chapter is 'True'"}
    for data in (report, invoke_json("status", "--kb", kb_dir)[1]):
        assert {w["path"] for w in data["warnings"]} == set(expected), data["warnings"]
        for warning in data["warnings"]:
            assert warning["warning"].startswith(expected[warning["path"]])
    assert {"added", "updated", "unchanged", "removed", "failed", "chunks"} <= set(report)
    text = invoke("status", "--kb", kb_dir)
    assert "warning: world/betrayal-word.md: chapter is 'four'" in text.stderr
    _, found = invoke_json("search", BELL_QUESTION, "--where", "Chapter=4", "-k", "20", "--kb", kb_dir)
    assert {h["source"] for h in found["results"]} == {"world/betrayal.md", "world/betrayal-key.md",
                                                       "scripts/betrayal.ink"}


def test_a_strict_card_hides_canon_without_the_limited_key(tmp_path):
    kb_dir = tmp_path / "kb"
    strict = PELL + "unknown: hidden\n"
    folder = world(tmp_path, strict)
    (folder / "npcs" / "wren.yaml").write_text(PELL.replace("Pell", "Wren"), encoding="utf-8")
    result, _ = invoke_json("ingest", folder, "--kb", kb_dir)
    assert result.exit_code == 0, result.output
    question = "Where does the harbourmaster hide the smuggling ledger?"
    _, answer = invoke_json("npc", "ask", "Pell", question, "--kb", kb_dir)
    assert "ledger" not in answer["answer"] and not answer["citations"]
    _, answer = invoke_json("npc", "ask", "Wren", question, "--kb", kb_dir)
    assert "ledger" in answer["answer"]                            # common knowledge by default
    kb = KnowledgeBase.open(kb_dir)
    assert "world/rumour.md" in visible_sources(kb, "Wren")
    assert visible_sources(kb, "Pell") == {"world/harbour.md"}    # strict: only canon within chapter 1


def test_a_card_with_an_unknown_strictness_names_the_field(tmp_path):
    folder = world(tmp_path, PELL + "unknown: secret\n")
    result, report = invoke_json("ingest", folder, "--kb", tmp_path / "kb")
    assert result.exit_code == 1
    [failure] = report["failed"]
    assert failure["path"] == "npcs/pell.yaml" and "'unknown'" in failure["error"]
