"""Zip containers (.docx, .xlsx) checked from their directory before a parser inflates them.

A 1.2 MB Word file can hold gigabytes of repeated XML, and python-docx,
unstructured and openpyxl inflate and parse it whole. The zip's central
directory states every member's size; Python's zipfile never inflates a member
past its stated size (a member that lies fails its CRC), so checking the
stated sizes bounds the work before any of it is done.
"""

from __future__ import annotations

import io
import zipfile

from ingest.errors import ParseError

MAX_UNZIPPED_MB = 1024  # all members together, inflated
MAX_RATIO = 100  # inflated : compressed, for a member over RATIO_FLOOR_MB inflated
RATIO_FLOOR_MB = 1


def check_zip(data: bytes, path: str, kind: str) -> None:
    """Refuse a zip whose members inflate past MAX_UNZIPPED_MB, or one member past MAX_RATIO times its size.

    A file that is not a zip passes: the parser says what is wrong with it.

    Raises:
        ParseError: the zip would inflate past a cap; the message names the member.
    """
    try:
        members = zipfile.ZipFile(io.BytesIO(data)).infolist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return
    total = sum(member.file_size for member in members)
    if total > MAX_UNZIPPED_MB * 2**20:
        raise ParseError(f"{kind} refused: it unzips to {total / 2**20:,.0f} MB, over the {MAX_UNZIPPED_MB:,} MB cap "
                         "(a zip bomb?)", path)
    for member in members:
        if (member.file_size > RATIO_FLOOR_MB * 2**20
                and member.file_size > MAX_RATIO * max(member.compress_size, 1)):
            raise ParseError(f"{kind} refused: {member.filename} unzips to {member.file_size / 2**20:,.0f} MB from "
                             f"{member.compress_size / 2**20:,.1f} MB, over {MAX_RATIO}:1 (a zip bomb?)", path)
