"""`kb mcp` spoken to by the official MCP SDK's own client, over stdio, as a desktop client would."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from kb import KnowledgeBase
from kb.sqlite_files import remove_database
from tests.conftest import invoke
from tests.small_canon import BELL_QUESTION, HIDDEN_WORDS, chunk_ids_by_source, write_canon

KB_COMMAND = str(Path(sys.executable).parent / "kb")  # the console script of this environment
READ_TOOLS = {"search", "ask", "npc_ask", "status"}


@pytest.fixture(scope="module")
def canon_kb(tmp_path_factory) -> tuple[Path, Path, KnowledgeBase]:
    """(canon folder, kb dir, the KnowledgeBase) for tests/small_canon.py, ingested once for this module."""
    root = tmp_path_factory.mktemp("mcp")
    kb = KnowledgeBase.open(root / "kb")
    canon = write_canon(root / "canon")
    assert not kb.ingest([str(canon)]).failed
    return canon, root / "kb", kb


def session(tmp_path: Path, *args, calls):
    """Spawn `kb mcp ARGS`, initialize a ClientSession, run ``await calls(session)`` and return its result."""

    async def run():
        # The SDK passes a desktop client's few variables; the model cache stays in the run's folder (conftest.py).
        params = StdioServerParameters(command=KB_COMMAND, args=["mcp", *map(str, args)], cwd=str(tmp_path),
                                       env={"XDG_CACHE_HOME": os.environ["XDG_CACHE_HOME"]})
        with open(tmp_path / "mcp-stderr.log", "w") as errlog:
            async with stdio_client(params, errlog=errlog) as (read, write):
                async with ClientSession(read, write) as client:
                    await client.initialize()
                    return await calls(client)

    return asyncio.run(run())


def text_of(result) -> str:
    return "".join(block.text for block in result.content)


def test_read_only_tools_search_ask_npc_ask_status(canon_kb, tmp_path):
    canon, kb_dir, kb = canon_kb
    ids = chunk_ids_by_source(kb)

    async def calls(client):
        tools = await client.list_tools()
        return ({t.name: t for t in tools.tools},
                await client.call_tool("search", {"query": BELL_QUESTION, "k": 3}),
                await client.call_tool("search", {"query": BELL_QUESTION, "where": {"chapter": 1}}),
                await client.call_tool("ask", {"question": BELL_QUESTION}),
                await client.call_tool("npc_ask", {"name": "Pell", "question": BELL_QUESTION, "k": 10}),
                await client.call_tool("status", {}),
                await client.call_tool("npc_ask", {"name": "Nobody", "question": "hello?"}),
                await client.call_tool("ingest", {"paths": [str(canon)]}))

    tools, search, filtered, ask, npc, status, nobody, ingest = session(tmp_path, "--kb", kb_dir, calls=calls)

    assert set(tools) == READ_TOOLS
    assert all(t.annotations.read_only_hint for t in tools.values())
    assert "where" in tools["search"].input_schema["properties"]

    assert not search.is_error
    results = search.structured_content["results"]
    assert results[0]["source"] == "world/betrayal.md" and "Grey Fleet" in results[0]["text"]
    assert all(r["id"] in ids[r["source"]] for r in results)
    assert json.loads(text_of(search)) == search.structured_content  # clients without structured output get the same
    assert {r["source"] for r in filtered.structured_content["results"]} == {"world/harbour.md"}

    answer = ask.structured_content
    assert answer["mode"] == "extractive" and "[1]" in answer["answer"]
    assert answer["citations"][0]["source"] == "world/betrayal.md"
    assert all(c["id"] in ids[c["source"]] for c in answer["citations"])

    told = npc.structured_content
    assert told["npc"] == "Pell"
    assert not any(word in told["answer"] for word in HIDDEN_WORDS)
    assert all(c["source"] != "world/betrayal.md" for c in told["citations"])

    assert status.structured_content["files"] == 2 and status.structured_content["cards"] == 1  # what write_canon wrote
    assert status.structured_content["chunks"] == sum(map(len, ids.values()))

    assert nobody.is_error and "no NPC named 'Nobody'" in text_of(nobody) and "Pell" in text_of(nobody)
    assert ingest.is_error and "ingest" in text_of(ingest)
    assert kb.status()["chunks"] == status.structured_content["chunks"]  # the refused ingest changed nothing


def test_the_server_warms_up_while_the_client_connects(canon_kb, tmp_path):
    """As kb serve does, the store and its indexes are loaded before the first call: here the BM25 index, which
    the first load of the corpus builds again, appears while the client has called nothing."""
    _, kb_dir, _ = canon_kb
    shutil.copytree(kb_dir, tmp_path / "kb")
    index = tmp_path / "kb" / "cache" / "bm25.sqlite"
    remove_database(index)  # made again by the first load of the corpus

    async def calls(client):
        await client.list_tools()
        deadline = time.monotonic() + 60
        while not index.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return index.exists()

    assert session(tmp_path, "--kb", tmp_path / "kb", calls=calls), "no corpus was loaded without a call"


def test_allow_ingest_adds_an_ingest_tool_confined_to_the_roots(tmp_path):
    root = write_canon(tmp_path / "canon")
    (root / "world" / "lantern.md").write_text("# The Lantern\nThe lantern of Cinder Quay burns whale oil.\n",
                                               encoding="utf-8")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.md").write_text("# Secret\nNot for the canon.\n", encoding="utf-8")
    kb_dir = tmp_path / "kb"

    async def calls(client):
        tools = await client.list_tools()
        return ({t.name for t in tools.tools},
                await client.call_tool("ingest", {"paths": [str(root)]}),
                await client.call_tool("search", {"query": "What does the lantern of Cinder Quay burn?", "k": 1}),
                await client.call_tool("ingest", {"paths": [str(outside)]}),
                await client.call_tool("ingest", {"paths": ["world/../../outside"]}))

    names, ingested, found, escaped, dotdot = session(
        tmp_path, "--kb", kb_dir, "--allow-ingest", "--root", root, calls=calls)

    assert names == READ_TOOLS | {"ingest"}
    report = ingested.structured_content
    assert sorted(report["added"]) == ["npcs/pell.yaml", "world/betrayal.md", "world/harbour.md", "world/lantern.md"]
    assert report["failed"] == []
    assert found.structured_content["results"][0]["source"] == "world/lantern.md"
    for refused in (escaped, dotdot):
        assert refused.is_error and "outside the ingest roots" in text_of(refused)
    sources = {r.source for r in KnowledgeBase.open(kb_dir).store.files().values()}
    assert "secret.md" not in sources and len(sources) == 4


def test_allow_ingest_needs_a_root():
    result = invoke("mcp", "--allow-ingest")
    assert result.exit_code == 2 and "--root" in result.stderr


def test_a_read_only_server_over_no_knowledge_base_fails_at_once(tmp_path):
    result = invoke("mcp", "--kb", tmp_path / "none")
    assert result.exit_code == 1 and "no knowledge base at" in result.stderr
