"""Metadata: limits that cannot be compared, keys one edit from a known key, a chapter missing among peers."""

from __future__ import annotations

from collections import Counter, defaultdict

from rapidfuzz.distance import OSA

from ingest.parsers.loctable import METADATA_COLUMNS
from kb.check.entities import Canon
from kb.check.findings import RULES, Finding
from kb.check.world import SourceFile
from kb.limits import is_number, numeric_keys

STANDARD_KEYS = {"chapter", "region", "title", "speaker", "scene", "node", "knot", "stitch", "tags",
                 "lang", "locale", "key", "page", "sheet"}
MIN_PEERS = 2  # other files of the same kind in the folder before a missing chapter is odd


def check(canon: Canon) -> list[Finding]:
    return uncomparable(canon) + key_typos(canon) + missing_chapters(canon)


def _keys(file: SourceFile) -> dict:
    """A file's metadata keys with their values (card: its `knows`), first value of each key."""
    if file.card_data is not None:
        knows = file.card_data.get("knows")
        return dict(knows) if isinstance(knows, dict) else {}
    values: dict = {}
    for meta in file.metas:
        for key, value in meta.items():
            values.setdefault(key, value)
    return values


def uncomparable(canon: Canon) -> list[Finding]:
    numeric = numeric_keys(f.card.knows for f in canon.files if f.card)
    findings = []
    for file in canon.files:
        metas = [_keys(file)] if file.card_data is not None else file.metas
        bad = {key: value for meta in metas for key, value in meta.items()
               if key in numeric and not _is_number(value)}
        findings.extend(Finding(
            "uncomparable-limit", RULES["uncomparable-limit"].severity, file.shown, file.key_line(key),
            f"{key} is {value!r}, which cannot be compared with a number",
            f"write {key} as a number, e.g. `{key}: 4`") for key, value in bad.items())
    return findings


def _is_number(value) -> bool:
    return all(is_number(v) for v in (value if isinstance(value, list) else [value]))


def key_typos(canon: Canon) -> list[Finding]:
    """A key used by fewer files than a key one edit away (case counts as an edit: `Chapter`)."""
    usage = Counter(key for file in canon.files for key in _keys(file))
    findings = []
    for file in canon.files:
        for key in _keys(file):
            if key in STANDARD_KEYS or key in METADATA_COLUMNS:  # `note` and `node`, `tag` and `tags` are all real
                continue
            near = [k for k in set(usage) | STANDARD_KEYS if k != key and OSA.distance(k, key) <= 1
                    and (k in STANDARD_KEYS or usage[k] > usage[key])]
            if near:
                findings.append(Finding(
                    "key-typo", RULES["key-typo"].severity, file.shown, file.key_line(key),
                    f"metadata key '{key}' is one edit from '{near[0]}', which the canon uses; "
                    f"filters and NPC limits ignore '{key}'",
                    f"rename '{key}' to '{near[0]}'"))
    return findings


def missing_chapters(canon: Canon) -> list[Finding]:
    """A file without `chapter` in a folder where every other file of its kind (at least two) has one."""
    groups: dict[tuple, list[SourceFile]] = defaultdict(list)
    for file in canon.files:
        if not file.error and file.kind != "card":
            groups[(file.path.parent, file.kind)].append(file)
    findings = []
    for files in groups.values():
        has = {id(f): any("chapter" in meta for meta in f.metas) for f in files}
        lacking = [f for f in files if not has[id(f)]]
        if len(lacking) == 1 and len(files) - 1 >= MIN_PEERS:
            file = lacking[0]
            findings.append(Finding(
                "missing-chapter", RULES["missing-chapter"].severity, file.shown, 1,
                f"no `chapter` here, while the other {len(files) - 1} {file.kind}s in "
                f"{file.path.parent.name}/ all have one; it will read as common knowledge",
                "add the chapter it belongs to (front matter, tags or title page), or move it out "
                "of the folder"))
    return findings
