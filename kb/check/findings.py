"""What `kb check` reports: one Finding per slip, the rules that raise them, and the four output formats."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

SEVERITIES = ("error", "warning", "note")


@dataclass(frozen=True)
class Rule:
    """A check a studio can switch off or re-grade in its config."""

    id: str
    family: str
    severity: str
    summary: str


RULES = {rule.id: rule for rule in (
    Rule("unreadable", "files", "error", "A file that cannot be decoded or parsed."),
    Rule("spoiler", "spoilers", "error",
         "A name that the rest of the canon introduces in a later chapter."),
    Rule("npc-knowledge", "spoilers", "error",
         "An NPC names something that no canon within its card's limits mentions."),
    Rule("term-mismatch", "terminology", "error",
         "A Chinese rendering that differs from the termbase."),
    Rule("name-spelling", "terminology", "warning",
         "A rare proper name one or two letters from a common one."),
    Rule("term-dropped", "terminology", "warning",
         "A translation that leaves out a term its source string has."),
    Rule("unknown-speaker", "speakers", "warning",
         "A speaker with no NPC card and no character entry in the canon."),
    Rule("silent-card", "speakers", "warning", "An NPC card whose speaker never speaks."),
    Rule("speaker-out-of-bounds", "speakers", "error",
         "A line spoken where its speaker's card limits say they are not."),
    Rule("uncomparable-limit", "metadata", "error",
         "A chapter (or other numeric limit) that is not a number."),
    Rule("key-typo", "metadata", "error", "A metadata key one edit from a key the canon uses."),
    Rule("missing-chapter", "metadata", "warning",
         "A file without `chapter` where every other file of its kind in the folder has one."),
    Rule("continuity", "continuity", "warning",
         "One entity and attribute stated with different numbers in different files."),
)}


@dataclass
class Location:
    """A place in a file, as printed: the path relative to the working directory and a 1-based line."""

    path: str
    line: int


@dataclass
class Finding:
    """One slip: which rule, how bad, where, what, and how to fix it."""

    rule: str
    severity: str
    path: str
    line: int
    message: str
    hint: str
    related: list[Location] = field(default_factory=list)

    def to_json(self) -> dict:
        data = asdict(self)
        if not self.related:
            del data["related"]
        return data


def sort_key(finding: Finding) -> tuple:
    return finding.path, finding.line, finding.rule, finding.message


def counts(findings: list[Finding]) -> dict[str, int]:
    return {severity: sum(f.severity == severity for f in findings) for severity in SEVERITIES}


def as_text(findings: list[Finding], files: int) -> str:
    """`path:line: severity: message [rule]` lines, each with its hint, and a closing tally."""
    lines = []
    for f in findings:
        lines.append(f"{f.path}:{f.line}: {f.severity}: {f.message} [{f.rule}]")
        lines.extend(f"  see {r.path}:{r.line}" for r in f.related)
        lines.append(f"  hint: {f.hint}")
    tally = counts(findings)
    lines.append(f"{tally['error']} error(s), {tally['warning']} warning(s), {tally['note']} note(s) "
                 f"in {files} file(s) checked")
    return "\n".join(lines)


def as_json(findings: list[Finding], files: int) -> str:
    return json.dumps({"findings": [f.to_json() for f in findings], **counts(findings), "files": files},
                      ensure_ascii=False, indent=2)


def _sarif_location(path: str, line: int) -> dict:
    region = {"startLine": line} if line > 0 else {}
    physical = {"artifactLocation": {"uri": path.replace("\\", "/")}}
    if region:
        physical["region"] = region
    return {"physicalLocation": physical}


def as_sarif(findings: list[Finding], version: str) -> str:
    """A SARIF 2.1.0 log with one run, every rule described, every finding a result."""
    rule_ids = list(RULES)
    results = []
    for f in findings:
        result = {
            "ruleId": f.rule,
            "ruleIndex": rule_ids.index(f.rule),
            "level": f.severity,
            "message": {"text": f"{f.message} Hint: {f.hint}"},
            "locations": [_sarif_location(f.path, f.line)],
        }
        if f.related:
            result["relatedLocations"] = [{"id": n, **_sarif_location(r.path, r.line)}
                                          for n, r in enumerate(f.related)]
        results.append(result)
    log = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "kb check",
                "version": version,
                "rules": [{"id": r.id, "name": r.id,
                           "shortDescription": {"text": r.summary},
                           "properties": {"family": r.family},
                           "defaultConfiguration": {"level": r.severity}} for r in RULES.values()],
            }},
            "results": results,
        }],
    }
    return json.dumps(log, ensure_ascii=False, indent=2)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def as_github(findings: list[Finding]) -> str:
    """GitHub Actions workflow commands: `::error file=…,line=…,title=…::message`."""
    lines = []
    for f in findings:
        command = "notice" if f.severity == "note" else f.severity
        props = f"file={_escape_property(f.path)},line={max(f.line, 1)},title={_escape_property(f.rule)}"
        lines.append(f"::{command} {props}::{_escape_data(f'{f.message} Hint: {f.hint}')}")
    return "\n".join(lines)
