"""Which rules `kb check` runs, how severe each is and what it ignores: `.kbcheck.toml` or `[tool.kb.check]`.

    [tool.kb.check]                      # or the same keys at the top of .kbcheck.toml
    exclude = ["drafts/*"]               # paths never reported (globs on the printed path)
    [tool.kb.check.rules.name-spelling]
    enabled = false
    [tool.kb.check.rules.continuity]
    severity = "error"                   # error, warning or note
    ignore = ["world/legacy/*"]          # paths this rule never reports

The first folder from the working directory upwards holding a `.kbcheck.toml`,
or a pyproject.toml with a `[tool.kb.check]` table, gives the config.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from kb.check.findings import RULES, SEVERITIES, Finding
from kb.errors import KBError


@dataclass
class RuleConfig:
    enabled: bool = True
    severity: str | None = None
    ignore: list[str] = field(default_factory=list)


@dataclass
class CheckConfig:
    """The settings of one run; the default runs every rule at its own severity."""

    exclude: list[str] = field(default_factory=list)
    rules: dict[str, RuleConfig] = field(default_factory=dict)
    source: str | None = None

    def enabled(self, rule: str) -> bool:
        return self.rules.get(rule, RuleConfig()).enabled

    def apply(self, findings: list[Finding]) -> list[Finding]:
        """Drop disabled and ignored findings; give the rest their configured severity."""
        kept = []
        for finding in findings:
            rule = self.rules.get(finding.rule, RuleConfig())
            if not rule.enabled or _matches(finding.path, self.exclude + rule.ignore):
                continue
            if rule.severity and finding.severity != "note":  # a model's "no contradiction" stays a note
                finding.severity = rule.severity
            kept.append(finding)
        return kept


def _matches(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def find_config(start: Path) -> CheckConfig:
    """The config that governs ``start`` (a folder), or the default when there is none.

    Raises:
        KBError: the file is not valid TOML, or names an unknown rule or severity.
    """
    for folder in (start, *start.parents):
        dedicated = folder / ".kbcheck.toml"
        if dedicated.is_file():
            return parse_config(_read_toml(dedicated), str(dedicated))
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            table = _read_toml(pyproject).get("tool", {}).get("kb", {}).get("check")
            if table is not None:
                return parse_config(table, f"{pyproject} [tool.kb.check]")
    return CheckConfig()


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KBError(f"{path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise KBError(f"{path}: invalid TOML: {exc}") from None


def parse_config(table: dict, where: str) -> CheckConfig:
    """Validate a config table key by key; the error names the key that is wrong."""
    unknown = set(table) - {"exclude", "rules"}
    if unknown:
        raise KBError(f"{where}: unknown key '{sorted(unknown)[0]}' (expected exclude, rules)")
    config = CheckConfig(exclude=_strings(table.get("exclude", []), where, "exclude"), source=where)
    rules = table.get("rules", {})
    if not isinstance(rules, dict):
        raise KBError(f"{where}: 'rules' must be a table of rule ids")
    for rule_id, settings in rules.items():
        if rule_id not in RULES:
            raise KBError(f"{where}: unknown rule '{rule_id}'; rules are {', '.join(RULES)}")
        if not isinstance(settings, dict):
            raise KBError(f"{where}: rules.{rule_id} must be a table like {{enabled = false}}")
        extra = set(settings) - {"enabled", "severity", "ignore"}
        if extra:
            raise KBError(f"{where}: rules.{rule_id}: unknown key '{sorted(extra)[0]}' "
                          "(expected enabled, severity, ignore)")
        enabled = settings.get("enabled", True)
        if not isinstance(enabled, bool):
            raise KBError(f"{where}: rules.{rule_id}.enabled must be true or false")
        severity = settings.get("severity")
        if severity is not None and severity not in SEVERITIES:
            raise KBError(f"{where}: rules.{rule_id}.severity must be one of {', '.join(SEVERITIES)}")
        config.rules[rule_id] = RuleConfig(enabled, severity,
                                           _strings(settings.get("ignore", []), where, f"rules.{rule_id}.ignore"))
    return config


def _strings(value, where: str, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise KBError(f"{where}: '{key}' must be a list of path patterns")
    return value
