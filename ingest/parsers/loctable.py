"""Localization tables (.csv, .tsv, .xlsx): one Section per row and language.

Supported:
- the first row is the header; the key column is the one named `key`, `id`
  or `string_id` (any case), else the first column;
- language columns: headers shaped like a language code (`en`, `fr`, `zh`,
  `zh-Hans`, `pt_BR`); meta["lang"] is the primary code, lower case (`zh`
  for zh, zh-Hans, zh-CN, zh-TW), meta["locale"] the header as written;
- every other column is metadata (lower-cased header), notably context,
  comment(s), note(s), description, speaker, character, chapter, region,
  scene, node, tags, status, max_length; those names are never languages,
  even when short (`tag`, `npc`); columns with an empty header are ignored;
- one language per row instead (Yarn Spinner's strings files): a `text`
  column beside a `language` (or `lang`, `locale`) column;
- text: `key: string` (the key's words, such as `item.kessel_glass.desc`,
  help retrieval and citations); a row with a `speaker` gives
  `Speaker: string` instead, a dialogue line with meta["speaker"], and the
  key only in metadata; meta["key"] always holds the key, and
  meta["line_ids"] too, so a citation names the recorded line;
- markup is stripped from the text (BBCode `[color=red]`, `[break]`,
  `[right]`, Unity rich text, HTML-like tags: ingest.parsers.markup);
- .csv: comma-separated, quoted fields may hold commas and newlines, read as
  leniently as Python's csv module and game engines (a space after a closing
  quote is part of the cell, then trimmed); .tsv: tab-separated, no quoting;
  both decoded as UTF-8 (with or without BOM) or UTF-16/32 with a BOM;
  .xlsx: every worksheet (meta["sheet"]), each with its own header row,
  formulas read as their cached values.
Skipped: blank rows; languages whose cell is empty; untranslated cells that
copy the row's first language (its source text), so one English string is
not indexed again under de, fr, ja.
Warnings (logged on the `ingest` logger, the row still indexed): a CSV/TSV
row with fewer fields than the header (missing cells read as empty) or more
(the extra ones ignored).
Skipped (NothingToIndex, by ingest.load): a table without any text column.
Errors: a row whose key is empty while it has text, an undecodable file,
an .xlsx that is not a workbook, an .xlsx value in a column without a
header (line = row number in its sheet).
"""

from __future__ import annotations

import csv
import io
import logging
import re
import zipfile
from pathlib import PurePath

import openpyxl
from openpyxl.utils.exceptions import InvalidFileException

from ingest.decode import decode_text
from ingest.errors import IngestError, ParseError
from ingest.parsers.dialogue import dialogue_section
from ingest.parsers.markup import strip_markup
from ingest.types import Section
from ingest.zipcheck import check_zip

log = logging.getLogger("ingest")

BINARY = True

KEY_COLUMNS = ("key", "id", "string_id")
ROW_LANGUAGE_COLUMNS = ("language", "lang", "locale")
ROW_TEXT_COLUMN = "text"
METADATA_COLUMNS = {
    "context", "comment", "comments", "note", "notes", "description", "speaker", "character",
    "chapter", "region", "scene", "node", "tags", "tag", "npc", "status", "max_length", "file", "lock",
}
_LANGUAGE_CODE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


def parse(data: bytes, path: str) -> list[Section]:
    """Read every row of every table in the file.

    Raises:
        ParseError: the file cannot be read as a table, or a row is malformed.
    """
    if PurePath(path).suffix.lower() == ".xlsx":
        tables = _xlsx_tables(data, path)
    else:
        tables = [({}, _delimited_rows(data, path))]
    sections: list[Section] = []
    for table_meta, rows in tables:
        sections.extend(_table_sections(rows, table_meta, path))
    return sections


def _delimited_rows(data: bytes, path: str) -> list[tuple[int, list[str]]]:
    """A CSV or TSV file's rows, each with the line number where it starts."""
    try:
        text = decode_text(data, path)
    except IngestError as exc:
        raise ParseError(exc.reason, path) from None
    if PurePath(path).suffix.lower() == ".tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
    rows = []
    start = 1
    for fields in reader:
        rows.append((start, fields))
        start = reader.line_num + 1
    return rows


def _xlsx_tables(data: bytes, path: str) -> list[tuple[dict, list[tuple[int, list[str]]]]]:
    """Each worksheet's metadata and rows, every row as wide as its header (zip sizes checked first)."""
    check_zip(data, path, "XLSX")
    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (zipfile.BadZipFile, InvalidFileException, KeyError, OSError) as exc:
        raise ParseError(f"not a readable .xlsx workbook ({exc.__class__.__name__})",
                         path) from None
    tables = []
    for sheet in workbook.worksheets:
        rows = [_without_trailing_blanks([_cell_text(value) for value in row])
                for row in sheet.iter_rows(values_only=True)]
        width = next((len(row) for row in rows if row), 0)
        numbered = []
        for number, row in enumerate(rows, start=1):
            if len(row) > width:
                raise ParseError(f"sheet '{sheet.title}': a value in column {len(row)}, "
                                 "which has no header", path, number)
            numbered.append((number, row + [""] * (width - len(row))))
        tables.append(({"sheet": sheet.title}, numbered))
    workbook.close()
    return tables


def _cell_text(value) -> str:
    """A cell as text: empty for None, `3` rather than `3.0` for whole numbers."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _without_trailing_blanks(row: list[str]) -> list[str]:
    """The row without the empty cells a spreadsheet pads it with."""
    while row and not row[-1].strip():
        row = row[:-1]
    return row


def _table_sections(rows: list[tuple[int, list[str]]], table_meta: dict,
                    path: str) -> list[Section]:
    """One Section per row and language of one table (header first)."""
    rows = [(number, fields) for number, fields in rows if any(field.strip() for field in fields)]
    if not rows:
        return []
    header = [name.strip() for name in rows[0][1]]
    key_index = _key_index(header)
    row_language = _row_language_columns(header)
    if row_language:
        languages = [row_language[1]]
    else:
        languages = [i for i, name in enumerate(header) if i != key_index and _is_language(name)]
    metadata = [i for i, name in enumerate(header)
                if name and i != key_index and i not in languages]
    width = len(header)
    sections = []
    for number, fields in rows[1:]:
        if len(fields) != width:
            log.warning("%s:%d: row has %d fields but the header has %d; %s", path, number, len(fields),
                        width, "missing cells read as empty" if len(fields) < width else "extra ones ignored")
            fields = (fields + [""] * width)[:width]
        key = fields[key_index].strip()
        texts = _translations(header, fields, languages, row_language)
        if texts and not key:
            raise ParseError(f"row has text but an empty '{header[key_index]}' column",
                             path, number)
        row_meta = {**table_meta, "key": key, "title": key}  # the key is the string's citation label
        row_meta.update({header[i].lower(): fields[i].strip()
                         for i in metadata if fields[i].strip()})
        speaker = row_meta.get("speaker")
        for locale, text in texts:
            meta = {**row_meta, "lang": re.split(r"[-_]", locale)[0].lower(), "locale": locale}
            turn = (speaker, text) if speaker else (None, f"{key}: {text}")
            sections.append(dialogue_section([turn], meta, [key]))
    return sections


def _translations(header: list[str], fields: list[str], languages: list[int],
                  row_language: tuple[int, int] | None) -> list[tuple[str, str]]:
    """A row's (locale, text) pairs, markup stripped, without empty cells or copies of the row's first text."""
    texts = []
    seen = set()
    for index in languages:
        text = " ".join(strip_markup(fields[index]).split())
        if text and text not in seen:
            locale = fields[row_language[0]].strip() if row_language else header[index]
            texts.append((locale or "und", text))
        seen.add(text)
    return texts


def _row_language_columns(header: list[str]) -> tuple[int, int] | None:
    """(language column, text column) of a table with one language per row, else None."""
    lowered = [name.lower() for name in header]
    language = next((lowered.index(name) for name in ROW_LANGUAGE_COLUMNS if name in lowered), None)
    if language is None or ROW_TEXT_COLUMN not in lowered:
        return None
    return language, lowered.index(ROW_TEXT_COLUMN)


def _key_index(header: list[str]) -> int:
    """The key column: named key, id or string_id, else the first."""
    for index, name in enumerate(header):
        if name.lower() in KEY_COLUMNS:
            return index
    return 0


def _is_language(name: str) -> bool:
    """Whether a column holds a translation, judged by its header."""
    return bool(_LANGUAGE_CODE.match(name)) and name.lower() not in METADATA_COLUMNS
