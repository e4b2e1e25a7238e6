"""NPCs that follow the player: game state, quest-flag canon, conversations, line ids, first person.

A small world of the test's own: a keeper whose card allows chapter 2 of the
Harbour and the Isles, canon beyond that, and a secret that `requires:` a flag.
It is exercised through the CLI, the real server, the official openai client
and a loopback model that records what it is sent.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from kb.api import KnowledgeBase
from kb.asked import holds_rarest_term
from kb.context import Citation
from kb.conversation import bounded_history, carried_terms, split_messages
from kb.gamestate import InvalidState, StateBeyondCard, state_from_pairs, visibility
from kb.in_character import HE, first_person, quoted_line_ids
from kb.retrieve import Hit
from kb.server import create_app
from kb.store import Store
from tests.conftest import invoke, invoke_json
from tests.test_mcp_server import session
from tests.test_server import running, settings_for

CARD = """\
name: Oska Brine
role: Keeper of the harbour bell
speaker: Oska
persona: Slow, solemn, counts everything twice.
knows:
  chapter: 2
  region: [Harbour, Isles]
unknown_answer: "That is not in my bell log."
"""
SECRET = "The bell tower key hangs behind the tide chart in the keeper's cottage."
LATE = "The smuggler queen Vela Marr hid the stolen crown inside the drowned bell of Corran."
FENS = "The fen witch Morwa brews reed-sleep from marsh poppies and river mud."
WORLD = {
    "npcs/oska.yaml": CARD,
    "world/harbour.md": "---\nregion: Harbour\nchapter: 1\n---\n# The harbour bell\n"
                        "Oska Brine has rung the harbour bell of Varn every dusk since 390 TC. "
                        "Oska keeps a bell log of every ship that enters the harbour.\n",
    "world/crown.md": f"---\nregion: Isles\nchapter: 3\n---\n# The stolen crown\n{LATE}\n",
    "world/fens.md": f"---\nregion: Fens\nchapter: 1\n---\n# The fen witch\n{FENS}\n",
    "world/key.md": f"---\nregion: Harbour\nchapter: 1\nrequires: {{flag: met_oska}}\n---\n"
                    f"# The bell tower key\n{SECRET}\n",
    "world/varn.md": "# Varn\nVarn is a grey harbour town on the Narrows. The surveyor Wren Tally came to "
                     "Varn to measure the salt pans of the Kelp Flats.\n",
    "world/census.md": "---\nregion: Harbour\nchapter: 1\n---\n# Census of Varn\nAbout 900 people live in Varn, "
                       "most of them on the quays. Traders from the Fens sell reed mats on the quays every market day.\n",
    "world/fen-census.md": "---\nregion: Fens\nchapter: 1\n---\n# Census of the Fens\n"
                           "About forty people live in the Fens, in stilt houses.\n",
    "world/people.md": "# People of Varn\n## Oska Brine\nThe bell-ringer of Varn harbour, past seventy.\n"
                       "She eats only smoked eel and counts every gull on the breakwater twice before supper.\n",
    "npcs/tam.yaml": "name: Tam Reed\nrole: Night-boat rower of Varn\nspeaker: Tam\n"
                     "persona: Quiet; he keeps his own counsel and his own tally.\nknows:\n  chapter: 1\n"
                     "unknown_answer: \"Not on my tally.\"\n",
    "world/tam.md": "---\nchapter: 1\n---\n# Tam Reed\nTam Reed rows the night boat of Varn.\n"
                    "He counts the lanterns on the breakwater and keeps the tally in his coat.\n",
    "world/zh-bell.md": "# 港钟\n敲钟人奥斯卡（Oska Brine）每天黄昏敲响瓦恩港的铜钟，已经敲了三十年。\n",
    "world/anchors.md": "---\nline_ids: [bell_cast_01]\n---\n# Anchors\n"
                        "Oska: The bell was cast from seven melted anchors, and it remembers the sea.\n",
    "scripts/dusk.yarn": "title: Dusk\ntags: chapter:1 region:Harbour\n---\n"
                         "Wren: Why do you ring the bell at dusk? #line:dusk_01\n"
                         "Oska: I ring it at dusk so the night boats can count their way home. #line:dusk_02\n"
                         "===\n"
                         "title: Tower\ntags: chapter:1 region:Harbour requires:met_oska\n---\n"
                         "Oska: Climb the tower at low tide, when the gulls are asleep.\n===\n",
}
KEY_QUESTION = "Where does the bell tower key hang?"


@pytest.fixture(scope="module")
def world_kb(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bellworld")
    for name, text in WORLD.items():
        (root / "world-root" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "world-root" / name).write_text(text, encoding="utf-8")
    kb_dir = root / "kb"
    result = invoke("ingest", root / "world-root", "--kb", kb_dir)
    assert result.exit_code == 0, result.output
    return kb_dir


def metadata_of(kb_dir: Path, source: str) -> list[dict]:
    return [meta for _, _, meta in Store(kb_dir).scan_chunks() if meta["source"] == source]


# -- state: pure rules -------------------------------------------------------------

def test_state_narrows_the_card_and_refuses_to_widen_it():
    card = {"chapter": 2, "region": ["Harbour", "Isles"]}
    seen = visibility(card, {"chapter": 1, "region": "Isles", "flags": {"met_oska": True, "other": False}})
    assert seen.limits == {"chapter": 1, "region": "Isles"} and seen.flags == frozenset({"met_oska"})
    assert visibility(card, None).flags == frozenset()           # an NPC never sees flag-locked canon
    assert visibility({}, None, gate_flags=False).flags is None  # a writer's plain `kb ask` does
    for widening in ({"chapter": 3}, {"region": "Fens"}, {"region": ["Isles", "Fens"]}):
        with pytest.raises(StateBeyondCard) as caught:
            visibility(card, widening, "Oska Brine")
        assert caught.value.http_status == 403 and caught.value.exit_code == 1
        assert "beyond Oska Brine's card" in str(caught.value)
    with pytest.raises(InvalidState) as caught:
        visibility(card, {"flags": {"met_oska": "yes"}})
    assert caught.value.http_status == 400
    assert state_from_pairs(["chapter=2", "region=Harbour", "region=Isles", "flag=a", "flags.b=false"]) == \
        {"chapter": 2, "region": ["Harbour", "Isles"], "flags": {"a": True, "b": False}}


def test_requires_is_stored_as_a_list_of_flags(world_kb):
    assert all(m["requires_flags"] == ["met_oska"] for m in metadata_of(world_kb, "world/key.md"))
    tower = [m for m in metadata_of(world_kb, "scripts/dusk.yarn") if m.get("node") == "Tower"]
    assert tower and tower[0]["requires_flags"] == ["met_oska"]
    assert all("requires_flags" not in m for m in metadata_of(world_kb, "world/harbour.md"))


# -- state through the CLI ------------------------------------------------------------

def test_the_same_question_before_and_after_the_flag(world_kb):
    _, before = invoke_json("npc", "ask", "Oska", KEY_QUESTION, "--kb", world_kb)
    result, after = invoke_json("npc", "ask", "Oska", KEY_QUESTION, "--state", "flag=met_oska", "--kb", world_kb)
    assert result.exit_code == 0
    assert "tide chart" not in before["answer"] and not any("key.md" in c["source"] for c in before["citations"])
    assert "tide chart" in after["answer"] and any(c["source"] == "world/key.md" for c in after["citations"])
    # a writer's question sees the locked canon; with a state it is locked again
    assert "tide chart" in invoke_json("ask", KEY_QUESTION, "--kb", world_kb)[1]["answer"]
    assert "tide chart" not in invoke_json("ask", KEY_QUESTION, "--state", "chapter=1", "--kb", world_kb)[1]["answer"]


def test_a_widening_state_is_refused_on_the_cli(world_kb):
    result = invoke("npc", "ask", "Oska", "Who hid the crown?", "--state", "chapter=3", "--kb", world_kb)
    assert result.exit_code == 1
    assert "state chapter=3 is beyond Oska Brine's card" in result.stderr
    result = invoke("npc", "ask", "Oska", "hi", "--state", "nonsense", "--kb", world_kb)
    assert result.exit_code == 1 and "is not KEY=VALUE" in result.stderr


def test_terminal_chat_follows_up_and_takes_state(world_kb):
    lines = "\n".join(["Who rings the harbour bell of Varn?", "/state chapter=5", "/state flag=met_oska",
                       "/state", KEY_QUESTION, "/quit", "never asked"]) + "\n"
    from click.testing import CliRunner

    from kb.cli import cli
    result = CliRunner().invoke(cli, ["npc", "chat", "Oska", "--kb", str(world_kb)], input=lines)
    assert result.exit_code == 0, result.output
    assert "I have rung the harbour bell" in result.output
    assert "refused: state chapter=5 is beyond" in result.output
    assert '"flags": {"met_oska": true}' in result.output
    assert "tide chart" in result.output
    refused = CliRunner().invoke(cli, ["npc", "chat", "Oska", "--state", "region=Fens", "--kb", str(world_kb)],
                                 input="hello\n")
    assert refused.exit_code == 1 and "state region=Fens is beyond Oska Brine's card" in refused.stderr


# -- offline voice ------------------------------------------------------------------

def test_own_line_first_then_canon_in_the_first_person(world_kb):
    _, own = invoke_json("npc", "ask", "Oska", "Why do you ring the bell at dusk?", "--kb", world_kb)
    assert own["answer"].startswith("I ring it at dusk so the night boats can count their way home.")
    assert [c["source"] for c in own["citations"]] == ["scripts/dusk.yarn"]
    assert own["citations"][0]["line_ids"] == ["dusk_02"]  # the Yarn #line: of the line quoted, not the scene's
    _, canon = invoke_json("npc", "ask", "Oska", "Since when has the harbour bell of Varn been rung at dusk?",
                           "--kb", world_kb)
    assert "I have rung the harbour bell of Varn every dusk since 390 TC" in canon["answer"]
    assert "Oska Brine has" not in canon["answer"]


def test_first_person_rule():
    names, others = ["Sefa Orrin", "Sefa"], {"Wren", "Aurel"}
    assert first_person("Since the spring of 412 TC Sefa has received written orders, telling her to dim "
                        "the Light. [1] She obeyed them on nine nights. [1]", names, others) == \
        ("Since the spring of 412 TC I have received written orders, telling me to dim the Light. [1] "
         "I obeyed them on nine nights. [1]")
    assert first_person("Sefa Orrin is exact and keeps her logbook. [2]", names, others) == \
        "I am exact and keep my logbook. [2]"
    unsure = "Sefa opens her logbook and shows Wren the entries she did not read. [3]"
    assert first_person(unsure, names, others) == unsure          # "her" could be Wren's
    assert first_person("Wren finds Sefa waiting. [1] She smiles. [1]", names, others) == \
        "Wren finds Sefa waiting. [1] She smiles. [1]"             # neither sentence's subject is Sefa


def test_a_she_under_the_npcs_own_heading_is_the_npc(world_kb):
    _, data = invoke_json("npc", "ask", "Oska", "What does the bell-ringer of Varn eat?", "--kb", world_kb)
    assert "I eat only smoked eel and count every gull on the breakwater twice" in data["answer"]
    assert "She eats" not in data["answer"]


def test_canon_about_another_subject_is_not_an_answer(world_kb):
    # Oska may not know the Fens: the census of Varn gives people who live somewhere else, and the
    # Fens are named only beside reed mats, so no sentence says how many people live in the Fens
    _, fens = invoke_json("npc", "ask", "Oska", "How many people live in the Fens?", "--kb", world_kb)
    assert fens["answer"] == "That is not in my bell log." and fens["citations"] == []
    _, varn = invoke_json("npc", "ask", "Oska", "How many people live in Varn?", "--kb", world_kb)
    assert "About 900 people live in Varn" in varn["answer"]


def test_the_rarest_term_check_takes_every_term_of_a_tie(world_kb):
    corpus = KnowledgeBase.open(world_kb).corpus
    question = "Does the bell-ringer feed poppies to the eel?"
    assert corpus.doc_freq("eel") == corpus.doc_freq("poppi") == 1   # as rare as each other
    cited = [Citation(1, Hit("a", "He eats smoked eel.", 1.0, {})), Citation(2, Hit("b", "Red poppies.", 1.0, {}))]
    assert holds_rarest_term(question, cited[:1], corpus) and holds_rarest_term(question, cited[1:], corpus)
    assert not holds_rarest_term(question, [Citation(1, Hit("c", "The bell rings.", 1.0, {}))], corpus)


def test_chinese_canon_that_names_the_npc_is_said_as_wo(world_kb):
    _, data = invoke_json("npc", "ask", "Oska", "瓦恩港的铜钟敲了多少年？", "--kb", world_kb)
    assert "我每天黄昏敲响瓦恩港的铜钟，已经敲了三十年。" in data["answer"] and "奥斯卡" not in data["answer"]
    names, others = ["Maren"], {"Wren"}
    assert first_person("玛伦（Maren）的船叫耐心号。 [1]", names, others) == "我的船叫耐心号。 [1]"
    unsure = "冠军雷恩（Wren）打败了玛伦（Maren）。 [1]"           # Maren is not the subject
    assert first_person(unsure, names, others) == unsure


def test_a_male_npc_says_he_as_i_and_leaves_her_alone(world_kb):
    _, data = invoke_json("npc", "ask", "Tam", "Where does Tam keep the tally of the lanterns?", "--kb", world_kb)
    assert "I count the lanterns on the breakwater and keep the tally in my coat." in data["answer"]
    names, others = ["Tam Reed", "Tam"], set()
    assert first_person("Tam keeps the tally and tells her nothing of his plan. [1]", names, others,
                        pronouns=HE) == "I keep the tally and tell her nothing of my plan. [1]"   # "her" is not Tam


def test_first_person_reads_whom_a_she_follows_in_the_cited_chunk():
    names, others = ["Sefa Orrin", "Sefa"], {"Wren", "Aurel"}
    logbook = "Since spring Sefa has received orders to dim the Light. She obeyed them on nine nights."
    betrayal = "Aurel Thane is the betrayer. He hired the Ebb Hands."
    chunks = {1: (logbook, "Chapter 3 > The logbook"), 2: (betrayal, "Chapter 3 > The betrayal")}
    # the answer quotes another chunk between the two: "She" still follows Sefa in her own chunk
    assert first_person("Since spring Sefa has received orders to dim the Light. [1] Aurel Thane is the betrayer. "
                        "[2] She obeyed them on nine nights. [1]", names, others, chunks) == \
        ("Since spring I have received orders to dim the Light. [1] Aurel Thane is the betrayer. [2] "
         "I obeyed them on nine nights. [1]")
    entry = "The keeper of the Light. She keeps her logbook in a tiny hand. Wren visits her. She smiles."
    assert first_person("The keeper of the Light. She keeps her logbook in a tiny hand. [1] She smiles. [1]",
                        names, others, {1: (entry, "Characters > Sefa Orrin")}) == \
        "The keeper of the Light. I keep my logbook in a tiny hand. [1] She smiles. [1]"  # after Wren: unsure
    other = "The bell-ringer of Varn. She counts gulls."
    assert first_person("She counts gulls. [1]", names, others, {1: (other, "Characters > Oska")}) == \
        "She counts gulls. [1]"                                    # someone else's entry
    assert first_person("Warmed in Sefa's palm, the glass sings. [1] Wren and Sefa find the glass. [1]",
                        names, others) == "Warmed in my palm, the glass sings. [1] Wren and I find the glass. [1]"
    assert first_person("**404 TC** — Sefa Orrin becomes keeper. [1] Sefa's not here. [2]", names, others) == \
        "**404 TC** — I become keeper. [1] Sefa's not here. [2]"


def test_citations_carry_line_ids_and_only_the_quoted_line(world_kb):
    _, data = invoke_json("npc", "ask", "Oska", "What was the bell cast from?", "--kb", world_kb)
    cited = [c for c in data["citations"] if c["source"] == "world/anchors.md"]
    assert cited and cited[0]["line_ids"] == ["bell_cast_01"]
    hit = Hit("x", "Oska: One.\nWren: Two.\nOska: Three.", 1.0, {"line_ids": ["a1", "a2", "a3"]})
    assert quoted_line_ids(Citation(1, hit), "Three.") == ["a3"]
    assert quoted_line_ids(Citation(1, Hit("y", "One.\nTwo.", 1.0, {"line_ids": ["b1"]})), "Two.") is None


# -- conversation: pure rules ----------------------------------------------------

def test_follow_up_carries_the_subject(world_kb):
    idf = KnowledgeBase.open(world_kb).corpus.idf
    history = [{"role": "user", "content": "Who is the fen witch Morwa?"},
               {"role": "assistant", "content": "Morwa brews reed-sleep [1]."}]
    carried = carried_terms("And what does she brew it from?", history, idf)
    assert "Morwa" in carried and "brew" not in [c.lower() for c in carried]
    older = [{"role": "user", "content": "Tell me about Vela Marr."}, *history]
    assert carried_terms("And?", older, idf).index("Morwa") < carried_terms("And?", older, idf).index("Vela")
    long = [{"role": "user", "content": "word " * 400}] * 4 + history
    kept = bounded_history(long)
    assert kept[-1] == {"role": "assistant", "content": "Morwa brews reed-sleep ."} and len(kept) < len(long)
    question, turns = split_messages([{"role": "system", "content": "be nice"}, *history,
                                      {"role": "user", "content": [{"type": "text", "text": "And then?"}]}])
    assert question == "And then?" and turns == history


# -- the server, the openai client and a loopback model ------------------------------

@pytest.fixture(scope="module")
def served(world_kb):
    with running(create_app(settings_for(world_kb))) as url:
        yield url


def test_chat_route_takes_state_and_refuses_widening(served):
    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0)
    ask = [{"role": "user", "content": KEY_QUESTION}]
    before = client.chat.completions.create(model="npc:Oska Brine", messages=ask)
    after = client.chat.completions.create(model="npc:Oska Brine", messages=ask,
                                           extra_body={"state": {"flags": {"met_oska": True}}})
    assert "tide chart" not in before.choices[0].message.content
    assert "tide chart" in after.choices[0].message.content
    streamed = client.chat.completions.create(model="npc:Oska Brine", messages=ask, stream=True,
                                              extra_body={"state": {"flags": {"met_oska": True}}})
    assert "tide chart" in "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="npc:Oska Brine", messages=ask, extra_body={"state": {"chapter": 4}})
    assert "beyond Oska Brine's card" in str(caught.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="kb", messages=ask, extra_body={"state": {"flags": ["x", 1]}})


def test_chat_route_reads_the_whole_conversation(served):
    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0)
    follow_up = {"role": "user", "content": "And what is she known for?"}

    def first_source(subject: str) -> str:
        messages = [{"role": "user", "content": f"Who is {subject}?"},
                    {"role": "assistant", "content": f"{subject}? Ask around the harbour."}, follow_up]
        reply = client.chat.completions.create(model="kb", messages=messages)
        return reply.model_extra["citations"][0]["source"]

    assert first_source("the fen witch Morwa") == "world/fens.md"
    assert first_source("the smuggler queen Vela Marr") == "world/crown.md"
    cast = client.chat.completions.create(model="npc:Oska Brine",
                                          messages=[{"role": "user", "content": "What was the bell cast from?"}])
    assert any(c.get("line_ids") == ["bell_cast_01"] for c in cast.model_extra["citations"])


def test_json_npc_route_takes_history_messages_and_state(served):
    with httpx.Client(base_url=served) as http:
        history = [{"role": "user", "content": "Who hid the stolen crown?"},
                   {"role": "assistant", "content": "That is not in my bell log."}]
        ok = http.post("/npc/oska/ask", json={"question": KEY_QUESTION, "history": history,
                                               "state": {"chapter": 1, "flags": {"met_oska": True}}})
        assert ok.status_code == 200 and "tide chart" in ok.json()["answer"]
        same = http.post("/npc/oska/ask", json={"messages": [*history, {"role": "user", "content": KEY_QUESTION}],
                                                 "state": {"flags": {"met_oska": True}}})
        assert same.status_code == 200 and "tide chart" in same.json()["answer"]
        cited = http.post("/npc/oska/ask", json={"question": "What was the bell cast from?"}).json()
        assert any(c.get("line_ids") == ["bell_cast_01"] for c in cited["citations"])
        refused = http.post("/npc/oska/ask", json={"question": "hi", "state": {"region": "Fens"}})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "state_beyond_card"
        both = http.post("/npc/oska/ask", json={"question": "hi", "messages": history + history[:1]})
        assert both.status_code == 422


def test_mcp_npc_ask_takes_state_and_history(world_kb, tmp_path):
    flag = {"flags": {"met_oska": True}}
    history = [{"role": "user", "content": KEY_QUESTION}, {"role": "assistant", "content": "Ask me later."}]

    async def calls(client):
        def ask(question, **more):
            return client.call_tool("npc_ask", {"name": "Oska", "question": question, **more})
        return (await ask(KEY_QUESTION), await ask(KEY_QUESTION, state=flag),
                await ask("And where is it kept?", state=flag), await ask("And where is it kept?", state=flag,
                                                                            history=history),
                await ask(KEY_QUESTION, state={"chapter": 4}))

    before, after, alone, followed, widened = session(tmp_path, "--kb", world_kb, calls=calls)
    assert "tide chart" not in before.structured_content["answer"]
    assert "tide chart" in after.structured_content["answer"]
    assert "tide chart" not in alone.structured_content["answer"]  # no subject without the conversation
    assert "tide chart" in followed.structured_content["answer"]
    assert widened.is_error and "beyond Oska Brine's card" in widened.content[0].text


def test_no_hidden_byte_reaches_the_model(world_kb, fake_openai):
    fake_openai.reply = "I ring the bell [1]."
    app = create_app(settings_for(world_kb, base_url=fake_openai.base_url))
    history = [{"role": "user", "content": "Do you know the fen witch?"},
               {"role": "assistant", "content": "Only by the smoke of her fire."}]
    with running(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        for question in ("Who rings the harbour bell of Varn, and where does the bell tower key hang?",
                         "Who rings the harbour bell of Varn, and who hid the crown in the drowned bell?",
                         "Who rings the harbour bell of Varn, and what does the fen witch brew?"):
            client.chat.completions.create(model="npc:Oska Brine", extra_body={"state": {"chapter": 1}},
                                           messages=[*history, {"role": "user", "content": question}])
        client.chat.completions.create(model="npc:Oska Brine", extra_body={"state": {"flags": {"met_oska": True}}},
                                       messages=[{"role": "user", "content": KEY_QUESTION}])
    sent = fake_openai.chat_requests()
    assert len(sent) == 4  # every question reached the model, so the checks below are not vacuous
    locked = [json.dumps(r) for r in sent[:-1]]
    for hidden in (SECRET, LATE, FENS, "Climb the tower at low tide"):
        assert not any(hidden in request for request in locked), hidden
    assert any(m["content"] == "Only by the smoke of her fire." for m in sent[0]["messages"])  # the history
    assert SECRET in json.dumps(sent[-1])  # unlocked, it does reach the model


def test_npc_eval_reports_no_leak_on_its_own_questions(world_kb, tmp_path):
    questions = tmp_path / "npc.jsonl"
    questions.write_text("\n".join(json.dumps(q) for q in [
        {"npc": "Oska", "question": KEY_QUESTION, "expected": {"hidden": True}},
        {"npc": "Oska", "question": KEY_QUESTION, "state": {"flags": {"met_oska": True}},
         "expected": {"fact": "tide chart"}},
        {"npc": "Oska", "question": "Who hid the stolen crown?", "expected": {"hidden": True}},
        {"npc": "Oska", "question": "Since when has the harbour bell of Varn been rung at dusk?",
         "expected": {"fact": "390 TC"}},
    ]) + "\n", encoding="utf-8")
    result, data = invoke_json("eval", "--npc", questions, "--kb", world_kb)
    assert result.exit_code == 0
    assert data["n"] == 4 and data["leak_rate"] == 0.0
    assert data["fact_accuracy"] == 1.0 and data["first_person_rate"] is not None
    assert data["p95_ms"] >= data["p50_ms"] > 0
    questions.write_text('{"npc": "Oska", "question": "hi"}\n')
    result = invoke("eval", "--npc", questions, "--kb", world_kb)
    assert result.exit_code == 1 and ":1: expected must be" in result.stderr


def test_model_condenses_a_follow_up_when_asked_to(world_kb, fake_openai, monkeypatch):
    monkeypatch.setenv("KB_CONDENSE", "model")
    fake_openai.reply = "What does the fen witch Morwa brew reed-sleep from?"
    history = [{"role": "user", "content": "Who is Morwa?"}, {"role": "assistant", "content": "A witch."}]
    kb = KnowledgeBase.open(world_kb)
    kb.settings.base_url = fake_openai.base_url
    kb.ask("And what does she brew?", history=history)
    condense_request, answer_request = fake_openai.chat_requests()
    assert "Rewrite the player's last question" in condense_request["messages"][0]["content"]
    assert "user: Who is Morwa?" in condense_request["messages"][1]["content"]
    assert FENS in answer_request["messages"][-1]["content"]          # retrieval searched the rewrite
    assert answer_request["messages"][1:3] == history                  # and the model sees the turns
    assert answer_request["messages"][-1]["content"].endswith("Question: And what does she brew?")
