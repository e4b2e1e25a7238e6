"""Sections to chunks: structure first (one section never shares a chunk), then tokens.

Splitting is langchain's recursive splitter measured in tiktoken tokens, with
separators that know Chinese sentence punctuation, so CJK text never yields an
oversized chunk. Dialogue is split only between lines, never inside one.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import TYPE_CHECKING

from ingest.text import detect_lang
from ingest.tokens import ENCODING, count_tokens, encoding
from ingest.types import Chunk, Section, chunk_id

if TYPE_CHECKING:
    from langchain_text_splitters import RecursiveCharacterTextSplitter

PROSE_SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", ". ", "! ", "? ", "; ", "，", ", ", " ", ""]
DIALOGUE_SEPARATORS = ["\n"]
LONG_LINE_CHARS = 100_000  # a prose line longer than this is cut in windows, not measured word by word
WINDOW_CUTS = [sep for sep in PROSE_SEPARATORS if sep.strip()] + [" "]  # where a window prefers to end


@functools.cache
def _splitter(size: int, overlap: int, dialogue: bool) -> RecursiveCharacterTextSplitter:
    from langchain_text_splitters import RecursiveCharacterTextSplitter  # ~0.2 s: a `kb search` does not split

    encoding()  # seeds the offline tiktoken cache before langchain loads the encoding
    return RecursiveCharacterTextSplitter.from_tiktoken_encoder(
        encoding_name=ENCODING,
        disallowed_special=(),
        chunk_size=size,
        chunk_overlap=0 if dialogue else overlap,
        separators=DIALOGUE_SEPARATORS if dialogue else PROSE_SEPARATORS,
        keep_separator="end",
    )


def _pieces(text: str, size: int, overlap: int, dialogue: bool) -> list[list[str]]:
    """The text cut to ``size`` tokens, in groups: one group per splitter piece, or a long line's windows.

    A text of at most ``size`` UTF-8 bytes (so tokens) is one piece as it is, which keeps a
    million-row localization table from paying a tokenizer pass per string.
    """
    if len(text) <= size and len(text.encode()) <= size:
        return [[text]]
    if dialogue:
        return [_windows(piece, size) if "\n" not in piece.strip() and _over(piece, size) else [piece]
                for piece in _splitter(size, overlap, dialogue).split_text(text)]
    groups: list[list[str]] = []
    ordinary: list[str] = []
    for line in text.split("\n"):
        if len(line) <= LONG_LINE_CHARS:
            ordinary.append(line)
            continue
        groups.extend([piece] for piece in _splitter(size, overlap, dialogue).split_text("\n".join(ordinary)))
        ordinary = []
        groups.extend([window] for window in _windows(line, size))
    groups.extend([piece] for piece in _splitter(size, overlap, dialogue).split_text("\n".join(ordinary)))
    return groups


def _over(text: str, size: int) -> bool:
    """Whether a text holds more than ``size`` tokens (a token is at least one UTF-8 byte, so short texts are not counted)."""
    return len(text.encode()) > size and count_tokens(text) > size


def _windows(line: str, size: int) -> list[str]:
    """A line cut into windows of at most ``size`` tokens, in time linear in its length.

    A window starts at four characters a token and narrows while it holds too many
    (Chinese, symbols); it ends after the strongest sentence mark or space in its
    second half, else where it ends.
    """
    windows = []
    width = size * 4
    start = 0
    while start < len(line):
        end = min(len(line), start + width)
        if end < len(line):
            end = next((cut + len(sep) for sep in WINDOW_CUTS
                        if (cut := line.rfind(sep, start + width // 2, end)) > start), end)
        if end - start > 1 and _over(line[start:end], size):
            width = max(1, (end - start) // 2)
            continue
        windows.append(line[start:end])
        start = end
    return windows


def _speakers_in(text: str, speakers: list[str]) -> list[str]:
    """The speakers of a dialogue section whose lines made it into this piece."""
    return [s for s in speakers if re.search(rf"^{re.escape(s)}:", text, re.MULTILINE)]


def chunk_sections(sections: list[Section], file_key: str, file_hash: str, source: str,
                   size: int, overlap: int, cjk_size: int | None = None) -> list[Chunk]:
    """Cut sections into chunks with stable ids and the metadata a citation needs.

    Sections whose text is mostly Chinese are cut at ``cjk_size`` tokens when
    given (a CJK character costs about one token, a word of English about 1.3,
    so the same token budget holds less Chinese prose). Ids are
    `<file key>-<file hash>-<n>`: a changed file gets new ids, so its new
    chunks can be written before its old ones are dropped (a chunk it left
    as it was keeps its id: kb/sync.py). A dialogue
    chunk's meta["line_ids"] lists the recorded ids of the lines inside it.
    """
    chunks: list[Chunk] = []
    for section in sections:
        section_size = cjk_size if cjk_size and detect_lang(section.text) == "zh" else size
        next_line = 0  # dialogue groups are runs of whole lines (or one line's windows), in order, without overlap
        for group in _pieces(section.text, section_size, overlap, section.dialogue):
            group = [piece.strip() for piece in group if piece.strip()]
            if not group:
                continue
            line_count = group[0].count("\n") + 1 if len(group) == 1 else 1
            ids = [i for i in section.line_ids[next_line:next_line + line_count] if i]
            next_line += line_count
            speakers = _speakers_in(group[0], section.meta.get("speaker", [])) if section.dialogue else None
            for piece in group:
                chunks.append(_chunk(piece, section, speakers, ids, len(chunks), file_key, file_hash, source))
    return chunks


def _chunk(piece: str, section: Section, speakers: list[str] | None, line_ids: list[str], index: int,
           file_key: str, file_hash: str, source: str) -> Chunk:
    """One piece of a section as the file's ``index``-th chunk, with its metadata."""
    meta = {**section.meta}
    if section.dialogue and "speaker" in meta:
        meta["speaker"] = speakers
        if not meta["speaker"]:
            del meta["speaker"]
    if line_ids:
        meta["line_ids"] = line_ids
    meta.setdefault("lang", detect_lang(piece))
    meta.update(
        source=source,
        chunk_index=index,
        hash=hashlib.sha1(piece.encode()).hexdigest()[:16],
        file_key=file_key,
        file_hash=file_hash,
    )
    return Chunk(chunk_id(file_key, file_hash, index), piece, meta)
