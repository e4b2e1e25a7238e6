"""Bounded work per file (issue 11, part 2): a hostile file is one failed entry naming the bound; the rest goes in.

Each bomb is built small, at a size that still proves its bound: an alias
bomb just past the alias cap, zips just past the ratio cap, a limit set low
through the environment. bench/bombs.py measures them at the issue's sizes.
"""

from __future__ import annotations

import io
import resource
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import openpyxl
import pytest

from ingest.errors import IngestError, ParseError
from ingest.load import load_chunks
from ingest.tokens import count_tokens
from kb import ConfigError, KnowledgeBase, Settings
from kb.parse_worker import run_bounded
from tests.dying_worker import closes_its_pipe_then_exits

ROOT = Path(__file__).resolve().parent.parent
HERONS = "# Herons\n\nGrey herons nest in the reed beds.\n"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def alias_bomb(levels: int) -> str:
    """YAML whose last alias stands for 9**levels values (a billion laughs at levels=9)."""
    names = "abcdefghi"[:levels]
    lines = [f"{names[0]}: &{names[0]} [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{name}: &{name} [{', '.join([f'*{previous}'] * 9)}]" for previous, name in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


def docx_bomb(inflated_mb: float) -> bytes:
    """A Word file whose document.xml is one paragraph repeated to ``inflated_mb`` MB (about 300:1)."""
    out = io.BytesIO()
    paragraph = b"<w:p><w:r><w:t>lol</w:t></w:r></w:p>"
    body = paragraph * int(inflated_mb * 2**20 / len(paragraph))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>')
        z.writestr("word/document.xml", b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/'
                   b'2006/main"><w:body>' + body + b"</w:body></w:document>")
    return out.getvalue()


def xlsx_bomb(path: Path, padding_mb: float) -> Path:
    """A real workbook with one more member: ``padding_mb`` MB of zeros."""
    workbook = openpyxl.Workbook()
    workbook.active.append(["key", "en"])
    workbook.active.append(["item.glass", "The Kessel Glass"])
    workbook.save(path)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:
        z.writestr("xl/padding.bin", bytes(int(padding_mb * 2**20)))
    return path


@pytest.fixture
def open_kb(tmp_path, fake_embedder, monkeypatch):
    """A KnowledgeBase with the fake embedder, opened after the given KB_* variables are set."""
    def opener(**env) -> KnowledgeBase:
        for name, value in env.items():
            monkeypatch.setenv(name, str(value))
        return KnowledgeBase.open(tmp_path / "kb", Settings(embed_model=fake_embedder))
    return opener


def failures(report) -> dict[str, str]:
    return {entry["path"]: entry["error"] for entry in report.failed}


# --- cheap checks before the work ------------------------------------------------


def test_yaml_alias_bombs_in_front_matter_and_cards_are_refused(tmp_path, open_kb):
    docs = tmp_path / "docs"
    write(docs / "herons.md", HERONS)
    write(docs / "bomb.md", "---\n" + alias_bomb(7) + "lore: {bomb: *g}\n---\nThe tide.\n")
    write(docs / "loop.md", "---\nlore: &a [*a]\n---\nThe tide.\n")
    write(docs / "npcs/bomb.yaml", "name: Bomb\nrole: r\npersona: p\n" + alias_bomb(7) + "speaker: *g\n")

    report = open_kb().ingest([str(docs)])

    assert report.added == ["herons.md"]
    assert failures(report) == {
        "bomb.md": "YAML front matter refused: its aliases expand to over 10,000 values",
        "loop.md": "YAML front matter refused: an alias refers to the collection it is in",
        "npcs/bomb.yaml": "NPC card refused: its aliases expand to over 10,000 values",
    }


def test_front_matter_aliases_within_the_cap_still_read(tmp_path):
    text = "---\nbase: &base [Saltreach, Mirewood]\nregion: *base\n---\nThe tide.\n"
    [chunk] = load_chunks(text.encode(), "a.md", "k", "h" * 40, 300, 40)
    assert chunk.meta["region"] == ["Saltreach", "Mirewood"]


def test_zip_bombs_are_refused_from_their_directory_before_a_parser_opens_them(tmp_path, open_kb):
    docs = tmp_path / "docs"
    write(docs / "herons.md", HERONS)
    write(docs / "bomb.docx", docx_bomb(1.5))
    xlsx_bomb(docs / "bomb.xlsx", 1.5)

    report = open_kb().ingest([str(docs)])

    assert report.added == ["herons.md"]
    errors = failures(report)
    assert sorted(errors) == ["bomb.docx", "bomb.xlsx"]
    assert errors["bomb.docx"].startswith("DOCX refused: word/document.xml unzips to 2 MB from")
    assert errors["bomb.xlsx"].startswith("XLSX refused: xl/padding.bin unzips to 2 MB from")
    assert all(error.endswith("over 100:1 (a zip bomb?)") for error in errors.values())


def test_a_zip_over_the_unzipped_cap_is_refused_whatever_its_ratio(tmp_path, monkeypatch):
    from ingest import zipcheck

    data = io.BytesIO()
    with zipfile.ZipFile(data, "w", zipfile.ZIP_STORED) as z:
        z.writestr("word/document.xml", b"x" * (2 * 2**20))
    monkeypatch.setattr(zipcheck, "MAX_UNZIPPED_MB", 1)
    with pytest.raises(ParseError, match=r"DOCX refused: it unzips to 2 MB, over the 1 MB cap"):
        zipcheck.check_zip(data.getvalue(), "a.docx", "DOCX")


def test_an_overlong_dialogue_line_is_cut_into_bounded_chunks_that_keep_its_id_and_speaker():
    words = " ".join(f"tide{i}" for i in range(3000))
    text = f"title: Dock\n---\nMaren: Hello. #line:a1\nJon: {words} #line:b2\nMaren: Bye. #line:c3\n===\n"

    chunks = load_chunks(text.encode(), "dock.yarn", "k", "h" * 40, 64, 8)

    assert max(count_tokens(c.text) for c in chunks) <= 64
    first, *middle, last = chunks
    assert len(middle) > 10
    assert (first.text, first.meta["line_ids"]) == ("Maren: Hello.", ["a1"])
    assert (last.text, last.meta["line_ids"]) == ("Maren: Bye.", ["c3"])
    assert all(c.meta["line_ids"] == ["b2"] and c.meta["speaker"] == ["Jon"] for c in middle)
    assert " ".join(c.text for c in middle).split() == f"Jon: {words}".split()  # nothing lost


def test_unclosed_comment_and_command_openers_parse_in_linear_time(tmp_path):
    """Forty thousand `/*` (ink) or `<<` (Yarn) on a line: quadratic regexes took minutes; the CPU cap is 100x the need."""
    script = textwrap.dedent("""
        from ingest.errors import ParseError
        from ingest.parse import parse_sections
        try:
            parse_sections(b"x /*" * 40000, "a.ink")
        except ParseError as exc:
            print(exc)
        [section] = parse_sections(b"title: A\\n---\\nMaren: " + b"<<" * 40000 + b"\\n===\\n", "a.yarn")
        print(len(section.text))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CPU, (20, 20)))
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.splitlines() == ["a.ink:1: comment opened with /* is never closed with */",
                                          str(len("Maren: " + "<<" * 40000))]


# --- the backstop: a worker process under a memory limit and a timeout ------------------


@pytest.mark.parametrize("name, make_text, bound, error", [
    pytest.param("a-table.csv", lambda: "key,en\n" + "".join(f"k{i},w{i}\n" for i in range(300_000)),
                 {"KB_PARSE_TIMEOUT_S": 1}, "parse took over 1 s (KB_PARSE_TIMEOUT_S)", id="timeout"),
    pytest.param("a-objects.json", lambda: "[" + ",".join(["{}"] * 4_000_000) + "]",  # 11 MB of text, 280 MB as objects
                 {"KB_PARSE_MEMORY_MB": 256}, "parse needed over 256 MB of memory (KB_PARSE_MEMORY_MB)", id="memory"),
    pytest.param("a-table.csv", lambda: "key,en\n" + "".join(f"k{i},w{i}\n" for i in range(100)),
                 {"KB_MAX_FILE_CHUNKS": 50}, "file makes over 50 chunks (KB_MAX_FILE_CHUNKS)", id="chunks"),
])
def test_a_file_over_a_bound_fails_alone_naming_it_and_the_next_file_goes_in(tmp_path, open_kb, name, make_text,
                                                                               bound, error):
    """The next file after a killed worker gets a fresh one; a file over the chunk cap is never embedded."""
    docs = tmp_path / "docs"
    write(docs / name, make_text())
    write(docs / "b-herons.md", HERONS)

    report = open_kb(**bound).ingest([str(docs)])

    assert failures(report) == {name: error}
    assert report.added == ["b-herons.md"]


def test_a_worker_that_dies_is_named_by_its_exit_status_not_taken_for_a_timeout():
    with pytest.raises(IngestError, match=r"^a.md: parse process died \(exit status 3\)$"):
        run_bounded(closes_its_pipe_then_exits, (3,), "a.md", 600, 2048)


def test_bombs_among_good_files_keep_what_was_stored_and_let_the_rest_in(tmp_path, open_kb):
    docs = tmp_path / "docs"
    write(docs / "herons.md", HERONS)
    write(docs / "lore.md", "# Lore\n\nThe Kessel Glass was stolen in spring.\n")
    kb = open_kb()
    assert kb.ingest([str(docs)]).failed == []
    before = kb.search("Kessel Glass stolen", k=1, mode="bm25")[0]

    write(docs / "lore.md", "---\n" + alias_bomb(7) + "lore: {bomb: *g}\n---\nNew text.\n")
    write(docs / "bomb.docx", docx_bomb(1.5))
    write(docs / "kilns.md", "# Kilns\n\nThe kilns of Cinderholm burn black sand.\n")
    report = kb.ingest([str(docs)])

    assert sorted(failures(report)) == ["bomb.docx", "lore.md"]
    assert report.added == ["kilns.md"] and report.unchanged == ["herons.md"] and report.removed == []
    after = kb.search("Kessel Glass stolen", k=1, mode="bm25")[0]
    assert (after.source, after.text) == (before.source, before.text) == ("lore.md", before.text)
    assert kb.search("kilns black sand", k=1, mode="bm25")[0].source == "kilns.md"


@pytest.mark.parametrize("name, value, message", [
    ("KB_PARSE_TIMEOUT_S", "abc", "is not a whole number"),
    ("KB_PARSE_TIMEOUT_S", "0", "must be at least 1"),
    ("KB_PARSE_MEMORY_MB", "100", "must be at least 256"),
    ("KB_MAX_FILE_CHUNKS", "0", "must be at least 1"),
])
def test_a_bad_bound_is_one_error_naming_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name}=.*{message}"):
        Settings()
