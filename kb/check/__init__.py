"""`kb check`: lint a script drop against the canon on disk, with no store, fast enough for a pre-commit hook.

run_check loads every file under the paths (the canon), mines its entities
and termbase once, runs each rule family over it, and keeps the findings in
the files being checked: all of them, or those changed since a git revision.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from kb.check import continuity, metadata, speakers, spoilers, terms
from kb.check.changes import changed_files
from kb.check.config import CheckConfig
from kb.check.entities import Canon, build_canon
from kb.check.findings import RULES, Finding, as_github, as_json, as_sarif, as_text, sort_key
from kb.check.termbase import sorted_terms, termbase_csv
from kb.check.world import SourceFile, load_world
from kb.config import Settings

FAMILIES = (spoilers, terms, speakers, metadata)


@dataclass
class CheckReport:
    findings: list[Finding]
    files: int

    @property
    def errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)


def load_canon(paths: list[str]) -> Canon:
    """Read and index every file under ``paths``; a path that does not exist is a KBError."""
    return build_canon(load_world(paths))


def run_check(paths: list[str], config: CheckConfig, changed_since: str | None = None,
              llm_settings: Settings | None = None) -> CheckReport:
    """Every finding in the checked files, sorted by file and line, filtered and graded by ``config``.

    With ``llm_settings`` the chat model judges each suspected contradiction.

    Raises:
        KBError: a path does not exist, git cannot list the changes, or the model cannot be reached.
    """
    canon = load_canon(paths)
    checked = canon.files
    if changed_since is not None:
        changed = changed_files(changed_since, Path(paths[0]).resolve())
        checked = [f for f in canon.files if f.path.resolve() in changed]
    shown = {f.shown for f in checked}
    findings = [_unreadable(f) for f in checked if f.error]
    for family in FAMILIES:
        findings += family.check(canon)
    if config.enabled("continuity"):
        confirm = continuity.model_judge(llm_settings) if llm_settings else None
        findings += continuity.check(canon, confirm, shown)
    findings = [f for f in findings if f.path in shown]
    return CheckReport(sorted(config.apply(findings), key=sort_key), len(checked))


def _unreadable(file: SourceFile) -> Finding:
    return Finding("unreadable", RULES["unreadable"].severity, file.shown, file.error.line or 1,
                   file.error.reason, "fix the file so `kb ingest` can read it")


def format_report(report: CheckReport, fmt: str) -> str:
    """The report as text, json, sarif or github (workflow commands)."""
    if fmt == "json":
        return as_json(report.findings, report.files)
    if fmt == "sarif":
        return as_sarif(report.findings, version("lore-kb"))
    if fmt == "github":
        return as_github(report.findings)
    return as_text(report.findings, report.files)


def termbase(paths: list[str], json_document: bool = False) -> str:
    """The termbase of the canon under ``paths`` as CSV (en, zh, source), or as one JSON document."""
    pairs = load_canon(paths).terms
    if json_document:
        return json.dumps({"terms": [{"en": t.en, "zh": t.zh, "source": f"{t.path}:{t.line}"}
                                     for t in sorted_terms(pairs)]}, ensure_ascii=False, indent=2) + "\n"
    return termbase_csv(pairs)

