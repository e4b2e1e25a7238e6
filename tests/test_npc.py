"""NPCs answer in character from only the canon their card lets them know."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb.retrieve import within_limits
from kb.store import Store
from tests.conftest import CORPORA, invoke, invoke_json

LATE_QUESTION = "Who commissioned the theft of the Kessel Glass?"
KESSEL_QUESTION = "What happened to the Kessel Glass on the first night of the festival?"  # later chapters say more
ABSENT_QUESTION = "What is the price of a railway ticket to Paris?"


def hidden_chunks(kb: Path, limits: dict) -> list[dict]:
    """Every stored chunk the limits must hide (chapter too late or region not allowed)."""
    return [{"text": t, **m} for _, t, m in Store(kb).scan_chunks() if not within_limits(m, limits)]


def cited_metadata(kb: Path, answer: dict) -> list[dict]:
    """The stored metadata of the chunks an answer cites."""
    cited = {c["id"] for c in answer["citations"]}
    return [meta for cid, _, meta in Store(kb).scan_chunks() if cid in cited]


MAREN = {"chapter": 1, "region": ["Saltreach"]}


def test_limits_semantics():
    assert within_limits({"chapter": 1, "region": "Saltreach"}, MAREN)
    assert within_limits({"title": "common knowledge"}, MAREN)
    assert not within_limits({"chapter": 3}, MAREN)
    assert not within_limits({"chapter": 1, "region": "Fellstack"}, MAREN)
    assert within_limits({"region": ["Fellstack", "Saltreach"]}, MAREN)


def test_npc_list_and_show(corpora_kb):
    result, data = invoke_json("npc", "list", "--kb", corpora_kb)
    assert result.exit_code == 0
    by_name = {c["name"]: c for c in data["npcs"]}
    assert set(by_name) == {"Maren", "Sefa Orrin", "Ysolde Penhallow"}
    assert by_name["Maren"]["knows"] == MAREN
    assert by_name["Ysolde Penhallow"]["knows"] == {}
    result, card = invoke_json("npc", "show", "maren", "--kb", corpora_kb)
    assert card["speaker"] == "Maren"
    assert card["voice"] and all(line in (CORPORA / "scripts" / "harbour-arrival.yarn").read_text()
                                 + (CORPORA / "scripts" / "market-day.twee").read_text()
                                 for line in card["voice"])


def test_unknown_npc_is_a_clear_error(corpora_kb):
    result = invoke("npc", "ask", "Nobody", "hello?", "--kb", corpora_kb)
    assert result.exit_code == 1
    assert "no NPC named 'Nobody'" in result.stderr and "Maren" in result.stderr


def test_chapter_one_npc_never_cites_later_canon_extractive(corpora_kb):
    hidden_ids = {(c["source"], c["chunk_index"]) for c in hidden_chunks(corpora_kb, MAREN)}
    assert hidden_ids, "the sample world must hold canon Maren may not know"
    _, unknown = invoke_json("npc", "ask", "Maren", LATE_QUESTION, "-k", "10", "--kb", corpora_kb)
    assert unknown["answer"] == "The tide hasn't brought me word of that, tidewalker." and not unknown["citations"]
    result, data = invoke_json("npc", "ask", "Maren", KESSEL_QUESTION, "-k", "10", "--kb", corpora_kb)
    assert result.exit_code == 0
    assert data["npc"] == "Maren" and data["mode"] == "extractive"
    assert "Aurel Thane" not in data["answer"]
    assert data["citations"]  # she answers from what she may know, so the check below is not vacuous
    for meta in cited_metadata(corpora_kb, data):
        assert within_limits(meta, MAREN), meta


def test_unlimited_npc_can_cite_later_chapters(corpora_kb):
    result, data = invoke_json("npc", "ask", "Ysolde", LATE_QUESTION, "-k", "10", "--kb", corpora_kb)
    assert any(m.get("chapter", 0) >= 3 for m in cited_metadata(corpora_kb, data))


def test_generative_request_carries_persona_voice_and_no_hidden_canon(corpora_kb, fake_openai):
    fake_openai.reply = "Saw the lights, tidewalker [1]."
    result, data = invoke_json("npc", "ask", "Maren", LATE_QUESTION, "-k", "10",
                               "--base-url", fake_openai.base_url, "--kb", corpora_kb)
    assert result.exit_code == 0, result.output
    assert data["mode"] == "llm" and data["answer"] == "Saw the lights, tidewalker [1]."
    sent = fake_openai.chat_requests()[-1]
    prompt = "\n".join(m["content"] for m in sent["messages"])
    assert "Gruff, superstitious and past sixty" in prompt          # persona
    voice = invoke_json("npc", "show", "Maren", "--kb", corpora_kb)[1]["voice"]
    assert voice and all(line in prompt for line in voice)           # her own lines as examples
    assert "The tide hasn't brought me word of that, tidewalker." in prompt
    assert 'id="1"' in prompt                                        # numbered canon
    for chunk in hidden_chunks(corpora_kb, MAREN):
        assert chunk["text"] not in prompt, f"leaked {chunk['source']} chunk {chunk['chunk_index']}"


@pytest.mark.parametrize("generative", [False, True])
def test_in_character_i_dont_know(corpora_kb, fake_openai, generative):
    args = ["--base-url", fake_openai.base_url] if generative else []
    result, data = invoke_json("npc", "ask", "Sefa", ABSENT_QUESTION, *args, "--kb", corpora_kb)
    assert result.exit_code == 0
    assert data["answer"] == "That is not in my logbook, and I do not guess."
    assert data["citations"] == []
    assert fake_openai.chat_requests() == []  # nothing relevant: no model call, no invention


def test_where_speaker_finds_one_characters_lines(corpora_kb):
    result, data = invoke_json("search", "tide", "--where", "speaker=Maren", "-k", "20",
                               "--kb", corpora_kb)
    assert data["results"]
    for hit in data["results"]:
        assert "Maren" in hit["metadata"]["speaker"]
        assert "Maren:" in hit["text"]


def test_cards_come_from_the_manifest_not_the_disk(tmp_path, kb_dir):
    npcs = tmp_path / "world" / "npcs"
    npcs.mkdir(parents=True)
    (tmp_path / "world" / "lore.md").write_text("# Lore\nThe bell tolls at dusk in Varn.\n")
    card = npcs / "oska.yaml"
    card.write_text("name: Oska\nrole: bell-ringer\npersona: Solemn and slow.\n")
    assert invoke("ingest", tmp_path / "world", "--kb", kb_dir).exit_code == 0
    card.write_text("name: Oska\nrole: bell-ringer\npersona: Cheerful now.\n")
    _, shown = invoke_json("npc", "show", "Oska", "--kb", kb_dir)
    assert shown["persona"] == "Solemn and slow."
    assert shown["knows"] == {} and shown["unknown_answer"]


@pytest.mark.parametrize("text, field", [
    ("role: x\npersona: y\n", "name"),
    ("name: A\npersona: y\n", "role"),
    ("name: A\nrole: x\npersona: y\nknows: [1, 2]\n", "knows"),
    ("name: A\nrole: x\npersona: y\nknows:\n  chapter: {a: 1}\n", "knows.chapter"),
    ("name: A\nrole: x\npersona: y\nknows:\n  chapter: .nan\n", "knows.chapter"),
    ("name: A\nrole: x\npersona: y\nknows:\n  chapter: true\n", "knows.chapter"),
    ("name: A\nrole: x\npersona: y\nknows:\n  chapter: -.inf\n", "knows.chapter"),
    ("name: A\nrole: x\npersona: y\nknows:\n  Chapter: four\n", "knows.chapter"),
    ("name: A\nrole: x\npersona: y\nknows:\n  region: [Saltreach, .inf]\n", "knows.region"),
    ("name: A\nrole: x\npersona: y\nspeaker: [a, b]\n", "speaker"),
])
def test_invalid_card_names_the_field_and_the_rest_ingests(tmp_path, kb_dir, text, field):
    (tmp_path / "w" / "npcs").mkdir(parents=True)
    (tmp_path / "w" / "npcs" / "bad.yaml").write_text(text)
    (tmp_path / "w" / "lore.md").write_text("# Lore\nThe bell tolls at dusk.\n")
    result, data = invoke_json("ingest", tmp_path / "w", "--kb", kb_dir)
    assert result.exit_code == 1
    assert data["added"] == ["lore.md"]
    [failure] = data["failed"]
    assert failure["path"] == "npcs/bad.yaml" and f"'{field}'" in failure["error"]
    assert f"npcs/bad.yaml: NPC card field '{field}'" in result.stderr


def test_a_second_card_with_a_name_already_taken_names_both_files(tmp_path, kb_dir):
    (tmp_path / "w" / "npcs").mkdir(parents=True)
    (tmp_path / "w" / "npcs" / "a.yaml").write_text("name: Oska\nrole: bell-ringer\npersona: Solemn.\n")
    (tmp_path / "w" / "npcs" / "b.yaml").write_text("name: oska\nrole: smuggler\npersona: Sly.\n")
    result, data = invoke_json("ingest", tmp_path / "w", "--kb", kb_dir)
    assert result.exit_code == 1
    assert data["added"] == ["npcs/a.yaml"]
    [failure] = data["failed"]
    assert failure["path"] == "npcs/b.yaml"
    assert failure["error"].startswith("NPC card field 'name': 'oska' is already the name of the card in npcs/a.yaml")
    assert invoke_json("npc", "show", "Oska", "--kb", kb_dir)[1]["persona"] == "Solemn."
    # the card stays refused on the next run, and the first one is still the one stored
    result, data = invoke_json("ingest", tmp_path / "w", "--kb", kb_dir)
    assert [f["path"] for f in data["failed"]] == ["npcs/b.yaml"] and data["unchanged"] == ["npcs/a.yaml"]
