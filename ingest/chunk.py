"""Sections to chunks: structure first (one section never shares a chunk), then tokens.

Splitting is langchain's recursive splitter measured in tiktoken tokens, with
separators that know Chinese sentence punctuation, so CJK text never yields an
oversized chunk. Dialogue is split only between lines, never inside one.
"""

from __future__ import annotations

import functools
import hashlib
import re

from langchain_text_splitters import RecursiveCharacterTextSplitter

from ingest.text import detect_lang
from ingest.tokens import ENCODING, encoding
from ingest.types import Chunk, Section

PROSE_SEPARATORS = ["\n\n", "\n", "。", "！", "？", "；", ". ", "! ", "? ", "; ", "，", ", ", " ", ""]
DIALOGUE_SEPARATORS = ["\n"]


@functools.cache
def _splitter(size: int, overlap: int, dialogue: bool) -> RecursiveCharacterTextSplitter:
    encoding()  # seeds the offline tiktoken cache before langchain loads the encoding
    return RecursiveCharacterTextSplitter.from_tiktoken_encoder(
        encoding_name=ENCODING,
        disallowed_special=(),
        chunk_size=size,
        chunk_overlap=0 if dialogue else overlap,
        separators=DIALOGUE_SEPARATORS if dialogue else PROSE_SEPARATORS,
        keep_separator="end",
    )


def _pieces(text: str, size: int, overlap: int, dialogue: bool) -> list[str]:
    """The text cut to ``size`` tokens; a text of at most ``size`` UTF-8 bytes (so tokens) is one piece as it is.

    The shortcut keeps a million-row localization table from paying a tokenizer pass per string.
    """
    if len(text) <= size and len(text.encode()) <= size:
        return [text]
    return _splitter(size, overlap, dialogue).split_text(text)


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
    chunks can be written before its old ones are dropped. A dialogue
    chunk's meta["line_ids"] lists the recorded ids of the lines inside it.
    """
    chunks: list[Chunk] = []
    for section in sections:
        section_size = cjk_size if cjk_size and detect_lang(section.text) == "zh" else size
        next_line = 0  # dialogue pieces are runs of whole lines, in order, without overlap
        for piece in _pieces(section.text, section_size, overlap, section.dialogue):
            piece = piece.strip()
            if not piece:
                continue
            meta = {**section.meta}
            if section.dialogue and "speaker" in meta:
                meta["speaker"] = _speakers_in(piece, meta["speaker"])
                if not meta["speaker"]:
                    del meta["speaker"]
            if section.line_ids:
                line_count = piece.count("\n") + 1
                ids = [i for i in section.line_ids[next_line:next_line + line_count] if i]
                next_line += line_count
                if ids:
                    meta["line_ids"] = ids
            meta.setdefault("lang", detect_lang(piece))
            meta.update(
                source=source,
                chunk_index=len(chunks),
                hash=hashlib.sha1(piece.encode()).hexdigest()[:16],
                file_key=file_key,
                file_hash=file_hash,
            )
            chunks.append(Chunk(f"{file_key}-{file_hash[:12]}-{len(chunks)}", piece, meta))
    return chunks
