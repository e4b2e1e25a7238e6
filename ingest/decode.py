"""Bytes to text: the encodings studios actually save in, and a clear refusal otherwise."""

from __future__ import annotations

import codecs

from ingest.errors import IngestError

_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_ALLOWED_CONTROLS = set("\t\n\r\f\v")


def decode_text(data: bytes, path: str) -> str:
    """Decode UTF-8 (with or without BOM) or BOM-marked UTF-16/32; refuse anything else.

    Raises:
        IngestError: the file is empty, binary, or in an encoding we cannot know.
    """
    if not data.strip():
        raise IngestError("file is empty", path)
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                text = data.decode(codec)
            except UnicodeDecodeError as exc:
                raise IngestError(f"invalid {codec} at byte {exc.start}", path) from None
            break
    else:
        if b"\x00" in data[:8192]:
            raise IngestError("binary content (NUL bytes), not text", path)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise IngestError(
                f"not UTF-8 (bad byte at offset {exc.start}); save it as UTF-8 or UTF-16 with a BOM",
                path) from None
    sample = text[:8192]
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in _ALLOWED_CONTROLS)
    if controls > max(2, len(sample) // 100):
        raise IngestError("binary content (control characters), not text", path)
    return text
