"""`kb ask`: extractive answers with real citations, "not in the canon", and the LLM path.

The LLM path runs against tests/fake_openai.py, a loopback OpenAI-compatible
server that records what it receives.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

import kb.answer
from kb.answer import NOT_IN_CANON
from kb.store import Store
from tests.conftest import invoke, invoke_json

CAPITAL = "What is the capital of the Corrandine Shallows?"
ABSENT = "What is the airspeed of a jet engine?"


def ask(kb_dir, question, *args):
    result, data = invoke_json("ask", question, "--kb", kb_dir, *args)
    assert result.exit_code == 0, result.output
    return data


def quoted(answer: str) -> list[tuple[str, int]]:
    """The (sentence, n) pairs of an extractive answer: 'sentence [n] sentence [m]'."""
    pairs = re.findall(r"\s*(.+?) \[(\d+)\](?=\s|$)", answer)
    assert " ".join(f"{s} [{n}]" for s, n in pairs) == answer
    return [(s, int(n)) for s, n in pairs]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- extractive ------------------------------------------------------------------


def test_extractive_answer_quotes_the_retrieved_canon_with_citations(corpora_kb):
    data = ask(corpora_kb, CAPITAL)
    assert set(data) >= {"answer", "citations", "mode"}
    assert data["mode"] == "extractive"
    assert "Greyhithe" in data["answer"]

    citations = data["citations"]
    assert [c["n"] for c in citations] == list(range(1, len(citations) + 1))
    for c in citations:
        assert set(c) == {"n", "source", "id", "text"}
        assert isinstance(c["n"], int) and isinstance(c["text"], str)
    # the citations are the chunks retrieval returned for the question, in rank order
    _, found = invoke_json("search", CAPITAL, "--kb", corpora_kb)
    assert [c["id"] for c in citations] == [r["id"] for r in found["results"]]
    ids, texts, metas = Store(corpora_kb).all_chunks()
    stored = {cid: (text, meta["source"]) for cid, text, meta in zip(ids, texts, metas)}
    for c in citations:
        assert stored[c["id"]] == (c["text"], c["source"])

    # every [n] points at a citation, and the sentence before it is that chunk's own words
    pairs = quoted(data["answer"])
    assert 1 <= len(pairs) <= 3
    by_n = {c["n"]: c for c in citations}
    for sentence, n in pairs:
        assert n in by_n
        assert sentence in by_n[n]["text"]


def test_extractive_answer_in_chinese(corpora_kb):
    data = ask(corpora_kb, "浅海的首都是哪里？")
    assert data["mode"] == "extractive"
    assert "灰港" in data["answer"]
    by_n = {c["n"]: c for c in data["citations"]}
    for sentence, n in quoted(data["answer"]):
        assert sentence in by_n[n]["text"]


def test_k_limits_the_citations(corpora_kb):
    data = ask(corpora_kb, CAPITAL, "-k", "2")
    assert len(data["citations"]) == 2
    assert all(n in (1, 2) for _, n in quoted(data["answer"]))


def test_the_canon_not_holding_the_answer_is_said_not_guessed(corpora_kb):
    data = ask(corpora_kb, ABSENT)
    assert data == {"answer": NOT_IN_CANON, "citations": [], "mode": "extractive"}
    plain = invoke("ask", ABSENT, "--kb", corpora_kb)
    assert plain.exit_code == 0
    assert plain.stdout.strip() == NOT_IN_CANON


def test_ask_prints_the_answer_then_numbered_sources(corpora_kb):
    data = ask(corpora_kb, CAPITAL)
    result = invoke("ask", CAPITAL, "--kb", corpora_kb)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0] == data["answer"]
    for line, c in zip(lines[1:], data["citations"]):
        assert line.startswith(f"  [{c['n']}] {c['source']}")
    assert len(lines) == 1 + len(data["citations"])


def test_ask_without_a_store_fails_with_one_line(tmp_path):
    result = invoke("ask", CAPITAL, "--kb", tmp_path / "none")
    assert result.exit_code == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "kb ingest" in result.stderr


# --- the LLM path -----------------------------------------------------------------


def test_llm_request_carries_the_numbered_canon_the_instruction_and_the_question(corpora_kb, fake_openai):
    fake_openai.reply = "Greyhithe is the capital [1]."
    data = ask(corpora_kb, CAPITAL, "--base-url", fake_openai.base_url, "--model", "lore-test")

    assert data["mode"] == "llm"
    assert data["answer"] == "Greyhithe is the capital [1]."
    assert [c["n"] for c in data["citations"]] == [1]  # only what the reply cites
    [request] = fake_openai.chat_requests()
    assert request["model"] == "lore-test"
    assert not request.get("stream")
    system, user = request["messages"]
    assert system["role"] == "system" and user["role"] == "user"
    assert "only" in system["content"] and "[1]" in system["content"]
    assert "Cite" in system["content"] or "cite" in system["content"]
    assert NOT_IN_CANON in system["content"]
    assert user["content"].rstrip().endswith(f"Question: {CAPITAL}")

    _, found = invoke_json("search", CAPITAL, "--kb", corpora_kb)
    canon = user["content"]
    for n, hit in enumerate(found["results"], start=1):
        block = canon.index(f' id="{n}" source="{hit["source"]}')
        assert canon.index(hit["text"], block) > block
    assert canon.index(' id="1" ') < canon.index(' id="2" ') < canon.index(f' id="{len(found["results"])}" ')
    assert data["citations"][0]["id"] == found["results"][0]["id"]


def test_llm_answer_streams_token_by_token(corpora_kb, fake_openai, monkeypatch):
    fake_openai.reply = "Greyhithe, on Saltreach, is the capital [1][2]."
    pieces: list[str] = []
    real_chat = kb.answer.chat

    def recording_chat(messages, settings, model=None, on_token=None):
        assert on_token is not None

        def record(piece):
            pieces.append(piece)
            on_token(piece)
        return real_chat(messages, settings, model, record)

    monkeypatch.setattr(kb.answer, "chat", recording_chat)
    result = invoke("ask", CAPITAL, "--kb", corpora_kb, "--base-url", fake_openai.base_url)

    assert result.exit_code == 0, result.output
    assert fake_openai.chat_requests()[0]["stream"] is True
    assert pieces == ["Greyhithe,", " on", " Saltreach,", " is", " the", " capital", " [1][2]."]
    lines = result.stdout.splitlines()
    assert lines[0] == fake_openai.reply  # rendered once, as it streamed
    assert [line.split("]")[0] for line in lines[1:]] == ["  [1", "  [2"]
    assert fake_openai.reply not in "\n".join(lines[1:])


def test_llm_base_url_from_the_environment(corpora_kb, fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    data = ask(corpora_kb, CAPITAL)
    assert data["mode"] == "llm"
    assert len(fake_openai.chat_requests()) == 1


def test_extractive_flag_never_calls_the_model(corpora_kb, fake_openai):
    data = ask(corpora_kb, CAPITAL, "--base-url", fake_openai.base_url, "--extractive")
    assert data["mode"] == "extractive"
    assert fake_openai.requests == []


def test_llm_mode_also_says_when_the_canon_does_not_hold_the_answer(corpora_kb, fake_openai):
    data = ask(corpora_kb, ABSENT, "--base-url", fake_openai.base_url)
    assert data == {"answer": NOT_IN_CANON, "citations": [], "mode": "llm"}


def test_a_model_that_finds_nothing_in_the_canon_cites_nothing(corpora_kb, fake_openai):
    fake_openai.reply = NOT_IN_CANON
    data = ask(corpora_kb, "What colour is the heron on the salt mark?", "--base-url", fake_openai.base_url)
    assert len(fake_openai.chat_requests()) == 1
    assert data == {"answer": NOT_IN_CANON, "citations": [], "mode": "llm"}
    # streamed to the terminal, it is shown once, with no sources under it
    result = invoke("ask", "What colour is the heron on the salt mark?", "--kb", corpora_kb,
                    "--base-url", fake_openai.base_url)
    assert result.exit_code == 0
    assert fake_openai.chat_requests()[-1]["stream"] is True
    assert result.stdout == NOT_IN_CANON + "\n"


@pytest.mark.parametrize("as_json", [False, True])
def test_an_unreachable_model_fails_with_one_line(corpora_kb, as_json):
    url = f"http://127.0.0.1:{free_port()}/v1"
    args = ["ask", CAPITAL, "--kb", corpora_kb, "--base-url", url] + (["--json"] if as_json else [])
    result = invoke(*args)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach") and url in line
    if as_json:  # --json still prints one document, naming the error
        assert json.loads(result.stdout) == {"error": line.removeprefix("error: ")}
    else:
        assert result.stdout == ""
    assert "Traceback" not in result.output


def test_a_model_that_refuses_the_key_fails_with_one_line(corpora_kb, fake_openai):
    fake_openai.add_route("POST", "/v1/chat/completions", lambda http, record: http._send(
        401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}))
    result = invoke("ask", CAPITAL, "--kb", corpora_kb, "--base-url", fake_openai.base_url, "--json")
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and fake_openai.base_url in line and "API key" in line
