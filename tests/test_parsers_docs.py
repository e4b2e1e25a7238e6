"""Document parsers: write a small real file in each format, load it as ingestion does, check the chunks."""

from __future__ import annotations

import codecs
import json
import random
import re
import textwrap
from pathlib import Path

import docx
import pytest
from fpdf import FPDF

from ingest.discover import file_hash
from ingest.errors import IngestError
from ingest.load import load_chunks
from ingest.tokens import count_tokens
from ingest.types import Chunk
from tests.conftest import invoke_json


def write(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(textwrap.dedent(text).lstrip("\n").encode(encoding))
    return path


def load(path: Path, size: int = 300, overlap: int = 40) -> list[Chunk]:
    """Decode, parse and chunk one file exactly as `kb ingest` does."""
    data = path.read_bytes()
    return load_chunks(data, path.name, "filekey", file_hash(data), size, overlap)


def make_docx(path: Path) -> Path:
    document = docx.Document()
    document.add_heading("Tideglass Manual", level=1)
    document.add_paragraph("Tideglass keeps a spoken voice for a hundred years.")
    document.add_heading("Firing", level=2)
    document.add_paragraph("The kilns burn black sand from Cinderholm.")
    document.add_heading("Care", level=1)
    document.add_paragraph("Never wash tideglass in salt water.")
    document.save(path)
    return path


def make_pdf(path: Path, pages: list[str]) -> Path:
    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    path.write_bytes(bytes(pdf.output()))
    return path


# --- Markdown and plain text ---------------------------------------------------


def test_markdown_front_matter_goes_into_metadata_and_headings_into_title(tmp_path):
    path = write(tmp_path, "harbour.md", """
        ---
        title: Greyhithe Harbour
        chapter: 2
        region: Saltreach
        era: late tide
        ---
        Intro before any heading.

        # Docks

        The docks of Greyhithe smell of tar and brine.

        ## Night Watch

        Two watchmen walk the quay after the bell.

        ```
        # not a heading, inside a code fence
        ```

        # Market

        Salt marks change hands at the fish stalls.
        """)
    chunks = load(path)
    assert [c.meta["title"] for c in chunks] == [
        "Greyhithe Harbour", "Docks", "Docks > Night Watch", "Market"]
    assert [c.text for c in chunks][1] == "The docks of Greyhithe smell of tar and brine."
    assert "# not a heading, inside a code fence" in chunks[2].text
    for index, chunk in enumerate(chunks):
        assert chunk.meta["chapter"] == 2          # a number, so `chapter <= 2` compares numbers
        assert chunk.meta["region"] == "Saltreach"
        assert chunk.meta["era"] == "late tide"
        assert chunk.meta["source"] == "harbour.md"
        assert chunk.meta["lang"] == "en"
        assert chunk.meta["chunk_index"] == index
        assert chunk.meta["file_hash"] == file_hash(path.read_bytes())
        assert len(chunk.meta["hash"]) == 16
    assert len({c.id for c in chunks}) == len(chunks)
    assert "---" not in chunks[0].text and "chapter" not in chunks[0].text


def test_markdown_without_front_matter_is_titled_by_its_file_name(tmp_path):
    chunks = load(write(tmp_path, "tidecraft-notes.md", "Saltbinding holds back water.\n"))
    assert [(c.text, c.meta["title"]) for c in chunks] == [
        ("Saltbinding holds back water.", "tidecraft-notes")]
    assert "chapter" not in chunks[0].meta


def test_broken_front_matter_is_named_with_its_line(tmp_path):
    path = write(tmp_path, "broken.md", """
        ---
        chapter: [2
        ---
        Body.
        """)
    with pytest.raises(IngestError) as caught:
        load(path)
    assert caught.value.path == "broken.md"
    assert "front matter" in caught.value.reason


def test_plain_text_with_front_matter_splits_on_paragraphs(tmp_path):
    paragraph = "The reedsingers of Mirewood sing to the herbs before they cut them. " * 12
    path = write(tmp_path, "reedsong.txt",
                 "---\nregion: Mirewood\nchapter: 1\n---\n" + "\n\n".join([paragraph] * 4))
    chunks = load(path, size=200, overlap=20)
    assert len(chunks) >= 4
    assert all(count_tokens(c.text) <= 200 for c in chunks)
    assert {c.meta["title"] for c in chunks} == {"reedsong"}
    assert {c.meta["region"] for c in chunks} == {"Mirewood"}
    assert {c.meta["chapter"] for c in chunks} == {1}


@pytest.mark.parametrize("encoding,bom", [("utf-8", codecs.BOM_UTF8), ("utf-16-le", codecs.BOM_UTF16_LE),
                                          ("utf-16-be", codecs.BOM_UTF16_BE)])
def test_text_with_a_byte_order_mark_decodes(tmp_path, encoding, bom):
    path = tmp_path / "bom.txt"
    path.write_bytes(bom + "Le héron gris — 灰鹭 — wades at dawn.".encode(encoding))
    assert [c.text for c in load(path)] == ["Le héron gris — 灰鹭 — wades at dawn."]


# --- HTML, DOCX, PDF, JSON -----------------------------------------------------


def test_html_headings_become_the_heading_path(tmp_path):
    path = write(tmp_path, "fens.html", """
        <html><head><title>ignored</title><script>var x = 1;</script></head><body>
        <h1>Mirewood Fens</h1><p>Reeds grow taller than a rider.</p>
        <h2>Birds</h2><p>Grey herons wade at dawn.</p>
        <h1>Creeks</h1><p>Smugglers know every creek.</p>
        </body></html>
        """)
    chunks = load(path)
    assert [(c.meta["title"], c.text) for c in chunks] == [
        ("Mirewood Fens", "Reeds grow taller than a rider."),
        ("Mirewood Fens > Birds", "Grey herons wade at dawn."),
        ("Creeks", "Smugglers know every creek."),
    ]
    assert all("var x" not in c.text for c in chunks)


def test_docx_headings_become_the_heading_path(tmp_path):
    chunks = load(make_docx(tmp_path / "manual.docx"))
    assert [(c.meta["title"], c.text) for c in chunks] == [
        ("Tideglass Manual", "Tideglass keeps a spoken voice for a hundred years."),
        ("Tideglass Manual > Firing", "The kilns burn black sand from Cinderholm."),
        ("Care", "Never wash tideglass in salt water."),
    ]
    assert {c.meta["source"] for c in chunks} == {"manual.docx"}


def test_pdf_pages_carry_their_page_number(tmp_path):
    path = make_pdf(tmp_path / "logbook.pdf", [
        "The Orrin Light burned green on the first night.",
        "",  # a blank page yields nothing, and the numbering does not shift
        "The Kessel Glass was carried north by boat.",
    ])
    chunks = load(path)
    assert [(c.meta["page"], c.meta["title"], c.text) for c in chunks] == [
        (1, "logbook > page 1", "The Orrin Light burned green on the first night."),
        (3, "logbook > page 3", "The Kessel Glass was carried north by boat."),
    ]


def test_pdf_without_a_text_layer_is_refused(tmp_path):
    path = make_pdf(tmp_path / "scan.pdf", [""])
    with pytest.raises(IngestError) as caught:
        load(path)
    assert caught.value.path == "scan.pdf"
    assert "no text layer" in caught.value.reason


def test_generic_json_becomes_key_path_lines(tmp_path):
    path = write(tmp_path, "shop.json", json.dumps({
        "shop": "The Gull and Anchor",
        "items": [{"name": "Reed-whistle", "price": 3}, {"name": "Salt lamp", "lit": True}],
        "owner": None,
    }, ensure_ascii=False))
    chunks = load(path)
    assert len(chunks) == 1
    assert chunks[0].text.split("\n") == [
        "shop: The Gull and Anchor",
        "items[0].name: Reed-whistle",
        "items[0].price: 3",
        "items[1].name: Salt lamp",
        "items[1].lit: true",
        "owner: null",
    ]
    assert chunks[0].meta["title"] == "shop"


def test_invalid_json_is_named_with_its_line(tmp_path):
    path = write(tmp_path, "bad.json", '{\n  "a": 1,\n  "b": \n}\n')
    with pytest.raises(IngestError) as caught:
        load(path)
    assert (caught.value.path, caught.value.line) == ("bad.json", 4)
    assert "invalid JSON" in caught.value.reason


# --- CJK chunk sizes -----------------------------------------------------------


def chinese(seed: int, sentences: int, punctuation: str = "。！？；，") -> str:
    rng = random.Random(seed)
    chars = "潮汐玻璃保存声音盐沼群岛灰港城议会九桨守夜人灯塔芦苇歌者走私者黑沙窑炉"
    return "".join("".join(rng.choice(chars) for _ in range(rng.randint(8, 40))) + rng.choice(punctuation)
                   for _ in range(sentences))


@pytest.mark.parametrize("size,overlap", [(300, 40), (64, 8)])
def test_long_chinese_text_without_newlines_stays_within_the_token_limit(tmp_path, size, overlap):
    text = chinese(1, 600)
    assert "\n" not in text and count_tokens(text) > 20 * size
    path = write(tmp_path, "zh-long.txt", text)
    chunks = load(path, size=size, overlap=overlap)
    counts = [count_tokens(c.text) for c in chunks]
    assert max(counts) <= size
    assert len(chunks) >= count_tokens(text) // size
    assert {c.meta["lang"] for c in chunks} == {"zh"}
    # nothing is lost: every sentence that fits a chunk lands whole in some chunk
    joined = "\u0000".join(c.text for c in chunks)
    sentences = [s for s in re.split(r"(?<=[。！？；，])", text) if s and count_tokens(s) <= size]
    assert len(sentences) > 100
    assert all(s in joined for s in sentences)
    # cuts fall after Chinese punctuation unless a sentence is longer than a chunk
    assert sum(c.text[-1] in "。！？；，" for c in chunks) >= 0.8 * len(chunks)


def test_chinese_without_any_punctuation_still_fits(tmp_path):
    text = chinese(2, 200, punctuation="潮")
    chunks = load(write(tmp_path, "zh-run.md", text), size=300, overlap=40)
    assert len(chunks) > 5
    assert max(count_tokens(c.text) for c in chunks) <= 300


# --- every format through the real CLI ---------------------------------------


def test_every_format_ingests_with_the_metadata_a_citation_needs(tmp_path, kb_dir):
    docs = tmp_path / "canon"
    write(docs, "lore/harbour.md", "---\nchapter: 2\nregion: Saltreach\n---\n# Docks\n\nTar and brine.\n")
    write(docs, "notes.txt", "Herons wade in the Wendle Flats.\n")
    write(docs, "fens.html", "<h1>Fens</h1><p>Reeds grow tall.</p>")
    make_docx(docs / "manual.docx")
    make_pdf(docs / "logbook.pdf", ["The Orrin Light burned green."])
    write(docs, "shop.json", '{"shop": "The Gull and Anchor"}')
    write(docs, "zh/潮汐.md", "---\nregion: 盐沼\n---\n# 潮汐节\n\n潮汐节在盐月的第一天开始。\n")
    result, report = invoke_json("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 0, result.output
    assert sorted(report["added"]) == ["fens.html", "logbook.pdf", "lore/harbour.md", "manual.docx",
                                       "notes.txt", "shop.json", "zh/潮汐.md"]
    assert report["failed"] == []

    from kb.store import Store

    _, texts, metas = Store(kb_dir).all_chunks()
    by_source: dict[str, list[dict]] = {}
    for meta in metas:
        by_source.setdefault(meta["source"], []).append(meta)
        for key in ("source", "title", "lang", "chunk_index", "hash", "ingested_at"):
            assert key in meta, (meta["source"], key)
        assert isinstance(meta["ingested_at"], float)
    assert len(metas) == report["chunks"] == 9
    assert by_source["lore/harbour.md"][0]["chapter"] == 2
    assert by_source["lore/harbour.md"][0]["title"] == "Docks"
    assert by_source["logbook.pdf"][0]["page"] == 1
    assert by_source["zh/潮汐.md"][0]["lang"] == "zh"
    assert by_source["zh/潮汐.md"][0]["region"] == "盐沼"
    assert by_source["zh/潮汐.md"][0]["title"] == "潮汐节"
    assert sorted(m["title"] for m in by_source["manual.docx"]) == [
        "Care", "Tideglass Manual", "Tideglass Manual > Firing"]
