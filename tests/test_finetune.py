"""The fine-tune path: build training data from small scripts, check it, cost it, submit and follow a job
against a loopback server, and score answers with and without retrieval."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from ingest.tokens import encoding
from kb.answer import NO_CANON_INSTRUCTION
from kb.answer_eval import answer_tokens, contains_answer, exact_match, token_f1
from kb.finetune.check import chat_problems, check_file, completion_problems
from kb.finetune.dataset import SEPARATOR, STOP
from kb.finetune.prices import load_prices, training_cost
from tests.conftest import invoke, invoke_json

FERRY = """
title: Crossing
tags: chapter:1 region:Saltreach
---
The ferry rocks at Lantern Quay.
Maren: Step in. Mind the bilge.
Wren: Is this the ferry to Greyhithe?
Maren: Only ferry there is, tidewalker. Three copper bits.
-> Pay the fare.
    Maren: Good. Sit low.
Maren: Mind the bilge.
Wren: I will.
Maren: Mind the bilge.
===
title: Quay
tags: chapter:1 region:Saltreach
---
Maren: There. Lantern Quay.
Idris: You there, off the ferry.
Wren: Only the ferrywoman and me.
===
"""

ROOST = {"scene": "The Roost", "chapter": 2, "region": "Mirewood", "turns": [
    {"speaker": "Nessa", "text": "This is the Roost. No blades up here."},
    {"speaker": "Dace", "text": "I'm Dace Harrow."},
    {"speaker": None, "text": "Rain drums on the reeds."},
    {"speaker": "Wren", "text": "Who paid you?"},
    {"speaker": "Dace", "text": "A hood with a voice inside it. Three hundred salt marks."},
    {"speaker": "Dace", "text": "And that was THE END of it."},
    {"speaker": "Nessa", "text": "Drink your tea, surveyor."},
]}

MAREN_CARD = """
name: Maren
role: Ferrywoman of the Saltreach crossing
speaker: Maren
persona: Gruff and superstitious. Calls everyone "tidewalker".
knows:
  chapter: 1
"""

MAREN_SYSTEM = ('You are Maren, Ferrywoman of the Saltreach crossing, a character in a game. '
                'Stay in character.\n\nPersona:\nGruff and superstitious. Calls everyone "tidewalker".')
CROSSING = "Specific information: title: Crossing; chapter: 1; region: Saltreach"
ROOST_INFO = "Specific information: title: The Roost; chapter: 2; region: Mirewood"
# every line a character speaks, in script order (the menu choice "Pay the fare." is not one)
SPOKEN = [
    ("Maren", "Step in. Mind the bilge."), ("Wren", "Is this the ferry to Greyhithe?"),
    ("Maren", "Only ferry there is, tidewalker. Three copper bits."), ("Maren", "Good. Sit low."),
    ("Maren", "Mind the bilge."), ("Wren", "I will."), ("Maren", "Mind the bilge."),
    ("Maren", "There. Lantern Quay."), ("Idris", "You there, off the ferry."),
    ("Wren", "Only the ferrywoman and me."),
    ("Nessa", "This is the Roost. No blades up here."), ("Dace", "I'm Dace Harrow."),
    ("Wren", "Who paid you?"), ("Dace", "A hood with a voice inside it. Three hundred salt marks."),
    ("Dace", "And that was THE END of it."), ("Nessa", "Drink your tea, surveyor."),
]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def _dialogue_kb(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dialogue")
    write(root / "scripts" / "ferry.yarn", FERRY)
    write(root / "scripts" / "roost.json", json.dumps(ROOST, indent=1))
    write(root / "npcs" / "maren.yaml", MAREN_CARD)
    result = invoke("ingest", root / "scripts", root / "npcs", "--kb", root / "kb")
    assert result.exit_code == 0, result.output
    return root / "kb"


@pytest.fixture
def dialogue_kb(_dialogue_kb, monkeypatch) -> Path:
    """A store with two small scripts (Yarn, dialogue JSON) and Maren's card; KB_DIR points at it."""
    monkeypatch.setenv("KB_DIR", str(_dialogue_kb))
    return _dialogue_kb


def build(tmp_path: Path, *args) -> tuple[dict, Path]:
    out = tmp_path / "train.jsonl"
    result, report = invoke_json("finetune", "build", "--out", out, *args)
    assert result.exit_code == 0, result.output
    return report, out


# --- build ------------------------------------------------------------------


def test_chat_build_makes_one_example_per_spoken_line(dialogue_kb, tmp_path):
    report, out = build(tmp_path)
    examples = read_jsonl(out)
    assert report["examples"] == len(examples) == 16
    assert report["speakers"] == {"Maren": 6, "Wren": 4, "Dace": 3, "Nessa": 2, "Idris": 1}
    assert (report["scenes"], report["duplicates"], report["skipped"]) == (3, 0, 0)
    assert [e["messages"][2]["content"] for e in examples] == [text for _, text in SPOKEN]
    for (speaker, _), item in zip(SPOKEN, examples):
        system, user, assistant = item["messages"]
        assert [m["role"] for m in item["messages"]] == ["system", "user", "assistant"]
        assert all(m["content"].strip() for m in item["messages"])
        assert system["content"] == (MAREN_SYSTEM if speaker == "Maren" else
                                     f"You are {speaker}, a character in a game. Stay in character.")
        assert user["content"].startswith(CROSSING if "Crossing" in user["content"] else "Specific information: ")
    # the input is the scene's information and the turns before the line, narration and choices included
    assert examples[0]["messages"][1]["content"] == f"{CROSSING}\n\nThe ferry rocks at Lantern Quay."
    assert examples[3]["messages"][1]["content"] == "\n".join([
        CROSSING, "", "The ferry rocks at Lantern Quay.", "Maren: Step in. Mind the bilge.",
        "Wren: Is this the ferry to Greyhithe?",
        "Maren: Only ferry there is, tidewalker. Three copper bits.", "(choice) Pay the fare."])
    assert examples[7]["messages"][1]["content"] == ("Specific information: title: Quay; chapter: 1; "
                                                     "region: Saltreach\n\n(The scene opens.)")
    assert examples[12]["messages"][1]["content"] == "\n".join([
        ROOST_INFO, "", "Nessa: This is the Roost. No blades up here.", "Dace: I'm Dace Harrow.",
        "Rain drums on the reeds."])
    report = check_file(out)
    assert report.ok and report.errors == [] and report.examples == 16


def test_completion_build_follows_the_legacy_rules(dialogue_kb, tmp_path):
    report, out = build(tmp_path, "--format", "completion")
    examples = read_jsonl(out)
    assert report["examples"] == len(examples) == 15
    assert report["skipped"] == 1  # "THE END of it." holds the stop sequence
    kept = [(s, t) for s, t in SPOKEN if STOP not in t]
    for (speaker, text), item in zip(kept, examples, strict=True):
        assert set(item) == {"prompt", "completion"}
        prompt, completion = item["prompt"], item["completion"]
        assert prompt.startswith("Specific information: ")
        assert prompt.count(SEPARATOR) == 1 and prompt.endswith(f"\n{speaker}:{SEPARATOR}")
        assert completion == f" {text}{STOP}"
        assert completion.count(STOP) == 1 and not completion[1].isspace()
        assert completion_problems(item) == ([], [])
    assert examples[1]["prompt"] == (f"{CROSSING}\n\nThe ferry rocks at Lantern Quay.\n"
                                     f"Maren: Step in. Mind the bilge.\nWren:{SEPARATOR}")
    report = check_file(out)
    assert report.ok and report.format == "completion" and report.model == "davinci-002"
    assert [w.message for w in report.warnings] == [
        "15 examples; at least 500 are recommended (quality rises roughly with each doubling)"]


def test_context_turns_limit_the_input(dialogue_kb, tmp_path):
    _, out = build(tmp_path, "--context-turns", "2")
    examples = read_jsonl(out)
    assert examples[3]["messages"][1]["content"] == (
        f"{CROSSING}\n\nMaren: Only ferry there is, tidewalker. Three copper bits.\n(choice) Pay the fare.")
    assert all(len(e["messages"][1]["content"].split("\n\n", 1)[1].split("\n")) <= 2 for e in examples)


def test_speaker_filter_takes_speaker_or_card_names(dialogue_kb, tmp_path):
    report, out = build(tmp_path, "--speaker", "maren", "--speaker", "Dace")
    assert report["speakers"] == {"Maren": 6, "Dace": 3}
    systems = {e["messages"][0]["content"] for e in read_jsonl(out)}
    assert systems == {MAREN_SYSTEM, "You are Dace, a character in a game. Stay in character."}
    result = invoke("finetune", "build", "--out", tmp_path / "x.jsonl", "--speaker", "Bob")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: no lines by 'Bob' in the ingested dialogue; "
                                     "speakers there: Dace, Idris, Maren, Nessa, Wren")
    assert not (tmp_path / "x.jsonl").exists()


def test_build_is_deterministic_deduplicated_and_splits_validation(dialogue_kb, tmp_path):
    _, first = build(tmp_path / "first")
    again = tmp_path / "again.jsonl"
    assert invoke("finetune", "build", "--out", again).exit_code == 0
    assert first.read_bytes() == again.read_bytes()
    # without context, Maren's two identical "Mind the bilge." in one scene are one example
    report, out = build(tmp_path, "--context-turns", "0")
    assert (report["examples"], report["duplicates"]) == (15, 1)
    lines = out.read_text().splitlines()
    assert len(set(lines)) == 15
    report, out = build(tmp_path, "--validation-split", "0.25")
    held = Path(report["validation_out"])
    assert held.name == "train.validation.jsonl"
    assert (report["examples"], report["validation"]) == (12, 4)
    train_lines, held_lines = out.read_text().splitlines(), held.read_text().splitlines()
    assert sorted(train_lines + held_lines) == sorted(first.read_text().splitlines())
    assert not set(train_lines) & set(held_lines)
    assert build(tmp_path / "b", "--validation-split", "0.25")[0]["validation"] == 4
    assert (tmp_path / "b" / "train.validation.jsonl").read_bytes() == held.read_bytes()


def test_build_without_dialogue_says_what_to_do(tmp_path):
    write(tmp_path / "docs" / "a.md", "# Tides\n\nThe tide turns twice a day.\n")
    assert invoke("ingest", tmp_path / "docs", "--kb", tmp_path / "kb").exit_code == 0
    result = invoke("finetune", "build", "--out", tmp_path / "t.jsonl", "--kb", tmp_path / "kb")
    assert result.exit_code == 1
    assert "no dialogue lines in the knowledge base" in result.stderr
    assert "kb ingest scripts/" in result.stderr


# --- check ------------------------------------------------------------------


def chat(user: str = "Hello", reply: str = "Aye.", system: str | None = "You are Maren.") -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    return {"messages": messages + [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def completion(prompt: str = "Specific information: x\n\nWren: Hi\nMaren:", reply: str = "Aye.") -> dict:
    return {"prompt": prompt + SEPARATOR, "completion": f" {reply}{STOP}"}


def jsonl(path: Path, rows: list) -> Path:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else
                               (r if isinstance(r, str) else json.dumps(r)).encode()) + b"\n" for r in rows))
    return path


def errors_of(report) -> list[tuple[int | None, str]]:
    return [(p.line, p.message) for p in report.errors]


def test_check_accepts_a_good_chat_file_and_counts_its_tokens(tmp_path):
    rows = [chat(f"Question {i}?", f"Answer {i}.") for i in range(12)]
    path = jsonl(tmp_path / "good.jsonl", rows)
    report = check_file(path, model="gpt-3.5-turbo-0125", epochs=3)
    assert report.ok and report.examples == 12 and report.format == "chat"
    enc = encoding("cl100k_base")

    def count(text):
        return len(enc.encode(text))

    expected = [3 + sum(3 + count(m["role"]) + count(m["content"]) for m in r["messages"]) for r in rows]
    assert report.tokens["total"] == sum(expected)
    assert (report.tokens["min"], report.tokens["max"]) == (min(expected), max(expected))
    assert report.cost["billed_tokens"] == 3 * sum(expected)
    assert report.cost["usd"] == pytest.approx(sum(expected) * 3 * 0.008 / 1000)
    assert [w.message for w in report.warnings] == [
        "12 examples; at least 50 are recommended (quality rises roughly with each doubling)"]


def test_check_reports_every_chat_error_with_its_line(tmp_path):
    good = [chat(f"Question {i}?") for i in range(10)]
    broken = [
        "{not json",                                                           # 11
        "[1, 2]",                                                              # 12
        {"text": "hello"},                                                     # 13
        {"messages": []},                                                      # 14
        {"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]},  # 15
        chat(reply="   "),                                                     # 16
        {"messages": [{"role": "assistant", "content": "y"}, {"role": "user", "content": "x"}]},  # 17
        {"messages": [{"role": "user", "content": "x"}]},                      # 18
        {"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "s"},
                      {"role": "assistant", "content": "y"}]},                 # 19
        chat("Question 3?"),                                                   # 20: same as line 4
        {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "y"}]},  # 21
        "",                                                                    # 22
        b"\xff\xfe not utf-8",                                                 # 23
        completion(),                                                          # 24
    ]
    report = check_file(jsonl(tmp_path / "bad.jsonl", good + broken))
    assert not report.ok
    assert errors_of(report) == [
        (11, "invalid JSON: Expecting property name enclosed in double quotes (column 2)"),
        (12, "not a JSON object"),
        (13, "neither a chat example ('messages') nor a prompt/completion example"),
        (14, "'messages' must be a non-empty list"),
        (15, "message 1: role 'bot' is not system, user or assistant"),
        (16, "message 3 (assistant): empty content"),
        (17, "message 1: expected user, got assistant (user and assistant must alternate, starting with user)"),
        (18, "the last message must be the assistant's (the line to learn)"),
        (19, "message 2: a system message may only come first"),
        (20, "duplicate of line 4"),
        (21, "message 1 (user): content must be text"),
        (22, "empty line"),
        (23, "not UTF-8 text"),
        (24, "a completion example in a chat file"),
    ]
    assert report.examples == 18  # lines 11-13 and 22-24 hold no chat example


def test_check_reports_every_completion_error_with_its_line(tmp_path):
    good = [completion(reply=f"Line {i}.") for i in range(10)]
    base = "Specific information: x\n\nMaren:"
    broken = [
        {"prompt": base, "completion": " Aye. END"},                                         # 11
        {"prompt": base + SEPARATOR + "more" + SEPARATOR, "completion": " Aye. END"},       # 12
        {"prompt": "Specific" + SEPARATOR + "information", "completion": " Aye. END"},       # 13
        {"prompt": base + SEPARATOR, "completion": "Aye. END"},                              # 14
        {"prompt": base + SEPARATOR, "completion": "  Aye. END"},                            # 15
        {"prompt": base + SEPARATOR, "completion": " Aye."},                                 # 16
        {"prompt": base + SEPARATOR, "completion": " The END of days. END"},                 # 17
        {"prompt": base + SEPARATOR, "completion": " END"},                                  # 18
        {"prompt": SEPARATOR, "completion": " Aye, then. END"},                              # 19
        {"prompt": base + SEPARATOR, "completion": 7},                                       # 20
        completion(reply="Line 2."),                                                          # 21
        chat(),                                                                               # 22
        {"prompt": base + SEPARATOR, "completion": " Aye \n END"},                          # 23 (warning)
    ]
    report = check_file(jsonl(tmp_path / "bad.jsonl", good + broken), model="curie")
    assert errors_of(report) == [
        (11, "the prompt does not end with the separator '\\n\\n###\\n\\n'"),
        (12, "the separator '\\n\\n###\\n\\n' appears 2 times in the prompt; it must appear once, at the end"),
        (13, "the separator '\\n\\n###\\n\\n' is not at the end of the prompt"),
        (14, "the completion does not start with a space"),
        (15, "the completion starts with more than one whitespace character"),
        (16, "the completion does not end with the stop sequence ' END'"),
        (17, "the stop sequence ' END' also appears inside the completion (generation would stop there)"),
        (18, "empty completion"),
        (19, "empty prompt"),
        (20, "'completion' must be text"),
        (21, "duplicate of line 3"),
        (22, "a chat example in a completion file"),
    ]
    assert [(p.line, p.message) for p in report.warnings] == [
        (23, "whitespace before the stop sequence ' END'"),
        (None, "22 examples; at least 500 are recommended (quality rises roughly with each doubling)")]


def test_check_flags_examples_over_the_token_limit_and_small_files(tmp_path):
    long_prompt = "Specific information: x\n\n" + "Maren: Mind the bilge.\n" * 400 + "Maren:"
    rows = [completion(reply=f"Line {i}.") for i in range(10)] + [completion(long_prompt)]
    report = check_file(jsonl(tmp_path / "long.jsonl", rows), model="curie")
    tokens = len(encoding("cl100k_base").encode(long_prompt + SEPARATOR)) + len(
        encoding("cl100k_base").encode(f" Aye.{STOP}"))
    assert tokens > 2048
    assert errors_of(report) == [(11, f"{tokens} tokens, over the 2048-token limit of curie")]
    few = jsonl(tmp_path / "few.jsonl", [chat(f"Q{i}") for i in range(3)])
    assert errors_of(check_file(few)) == [(None, "3 examples; the fine-tuning API needs at least 10")]
    result = invoke("finetune", "check", few, "--validation")  # a validation file may be small
    assert result.exit_code == 0 and "ok: fit to upload" in result.stdout
    report = check_file(jsonl(tmp_path / "chat.jsonl", [chat(f"Q{i}") for i in range(10)]), model="davinci-002")
    assert errors_of(report) == [(None, "davinci-002 is trained on completion files; this is a chat file")]


def test_check_cli_prints_file_line_errors_and_exits_1(tmp_path):
    path = jsonl(tmp_path / "bad.jsonl", [chat(f"Q{i}") for i in range(10)] + ["{oops", chat("Q1")])
    result = invoke("finetune", "check", path)
    assert result.exit_code == 1
    assert f"{path}:11: error: invalid JSON" in result.stdout
    assert f"{path}:12: error: duplicate of line 2" in result.stdout
    assert "not fit to upload: 2 error(s)" in result.stdout
    result, report = invoke_json("finetune", "check", path)
    assert result.exit_code == 1 and report["ok"] is False
    assert [e["line"] for e in report["errors"]] == [11, 12]
    good = jsonl(tmp_path / "good.jsonl", [chat(f"Q{i}") for i in range(10)])
    result = invoke("finetune", "check", good, "--model", "gpt-4o-mini-2024-07-18", "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert "x 2 epochs x $0.003/1K tokens" in result.stdout and "ok: fit to upload" in result.stdout


def test_cost_arithmetic_on_known_token_counts(tmp_path):
    prices = load_prices()
    # the studio's notes: 1M tokens x 4 epochs on curie is about $12
    assert training_cost(1_000_000, 4, prices["models"]["curie"]["training_per_1k"]) == pytest.approx(12.0)
    assert training_cost(250_000, 3, prices["models"]["davinci"]["training_per_1k"]) == pytest.approx(22.5)
    assert prices["defaults"] == {"chat": "gpt-4o-mini-2024-07-18", "completion": "davinci-002", "epochs": 4}
    # an edited copy of the table is honoured, including its token limit
    table = tmp_path / "prices.toml"
    table.write_text('[defaults]\nchat = "house-model"\nepochs = 2\n\n[models.house-model]\nformat = "chat"\n'
                     'training_per_1k = 0.5\nmax_tokens = 30\nencoding = "cl100k_base"\nsource = "ours"\n')
    rows = [chat(f"Q{i}", system=None) for i in range(10)]
    path = jsonl(tmp_path / "t.jsonl", rows)
    # each example: 3 + (3 + 1 "user" + 2 "Q0") + (3 + 1 "assistant" + 3 "Aye.") = 16 tokens
    result, report = invoke_json("finetune", "check", path, "--prices", table)
    assert result.exit_code == 0, result.output
    assert report["tokens"]["total"] == 160 and report["tokens"]["max"] == 16
    assert report["cost"] == {"model": "house-model", "epochs": 2, "tokens_per_epoch": 160, "billed_tokens": 320,
                              "training_per_1k": 0.5, "usd": 0.16, "price_source": "ours"}
    result = invoke("finetune", "check", path, "--prices", table, "--model", "nope")
    assert result.exit_code == 1 and "no price for model 'nope'" in result.stderr


@pytest.mark.parametrize("content, complaint", [
    (b"\xff\xfe[models.x]\n", "not UTF-8"),
    (b"[models]\nx = 3\n", "models.x must be a table"),
    (b'[models.x]\nformat = "chat"\ntraining_per_1k = "cheap"\nmax_tokens = 10\n', "training_per_1k must be a number"),
    (b'[models.x]\nformat = "chat"\ntraining_per_1k = 1\nmax_tokens = 10\nencoding = "r50k_base"\n',
     "encoding must be one of"),
    (b'[defaults]\nepochs = "four"\n[models.x]\nformat = "chat"\ntraining_per_1k = 1\nmax_tokens = 10\n',
     "defaults.epochs"),
])
def test_a_broken_price_table_is_one_line(tmp_path, content, complaint):
    table = tmp_path / "prices.toml"
    table.write_bytes(content)
    path = jsonl(tmp_path / "t.jsonl", [chat(f"Q{i}") for i in range(10)])
    result = invoke("finetune", "check", path, "--prices", table)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {table}: ") and complaint in line


def test_chat_rules_in_isolation():
    assert chat_problems(chat()) == []
    assert chat_problems(chat(system=None)) == []
    assert chat_problems({"messages": "hi"}) == ["'messages' must be a non-empty list"]
    assert chat_problems({"messages": ["hi"]}) == ["message 1 is not an object"]


# --- jobs against a loopback server -----------------------------------------


class FineTuningAPI:
    """The files and fine-tuning endpoints, added to the fake OpenAI server; records what they receive."""

    def __init__(self, fake, statuses=("running", "succeeded")):
        self.fake = fake
        self.files: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.statuses = list(statuses)
        self.polls = 0
        fake.add_route("POST", "/v1/files", self.upload)
        fake.add_route("POST", "/v1/fine_tuning/jobs", self.post_job)
        fake.add_route("GET", "/v1/fine_tuning/jobs", self.get_job)

    def upload(self, http, record):
        content_type = header(record, "content-type")
        fields = multipart(record["raw"], content_type.split("boundary=")[1])
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = fields
        http._send(200, {"id": file_id, "object": "file", "bytes": len(fields["file"]), "created_at": 1,
                         "filename": fields["file.filename"], "purpose": fields["purpose"].decode(),
                         "status": "processed"})

    def job(self, job_id, status):
        body = self.jobs[job_id]
        done = status == "succeeded"
        return {"id": job_id, "object": "fine_tuning.job", "created_at": 1_700_000_000, "model": body["model"],
                "status": status, "training_file": body["training_file"],
                "validation_file": body.get("validation_file"),
                "fine_tuned_model": f"ft:{body['model']}:studio:{body.get('suffix')}:abc123" if done else None,
                "finished_at": 1_700_000_600 if done else None, "trained_tokens": 4242 if done else None,
                "hyperparameters": {"n_epochs": 2}, "organization_id": "org-test", "result_files": [],
                "seed": 0, "error": None}

    def post_job(self, http, record):
        path = record["path"]
        if path == "/v1/fine_tuning/jobs":
            job_id = f"ftjob-{len(self.jobs) + 1}"
            self.jobs[job_id] = record["json"]
            http._send(200, self.job(job_id, "validating_files"))
        elif path.endswith("/cancel"):
            http._send(200, self.job(path.split("/")[4], "cancelled"))
        else:
            http._send(404, {"error": {"message": f"no route {path}"}})

    def events(self, job_id):
        texts = ["Validating training file", "Fine-tuning job started", "Step 10/20: training loss=0.52",
                 "New fine-tuned model created", "The job has successfully completed"]
        shown = 2 if self.polls <= 1 else len(texts)
        listed = [{"id": f"ev-{i}", "object": "fine_tuning.job.event", "created_at": 1_700_000_000 + i,
                   "level": "info", "message": text, "type": "message"} for i, text in enumerate(texts[:shown])]
        return list(reversed(listed))  # the API lists newest first

    def get_job(self, http, record):
        path = record["path"].split("?")[0]
        parts = path.strip("/").split("/")
        if path == "/v1/fine_tuning/jobs":
            http._send(200, {"object": "list", "has_more": False,
                             "data": [self.job(j, "running") for j in sorted(self.jobs, reverse=True)]})
        elif len(parts) == 4 and parts[3] in self.jobs:
            self.polls += 1
            status = self.statuses[min(self.polls, len(self.statuses)) - 1]
            http._send(200, self.job(parts[3], status))
        elif len(parts) == 5 and parts[4] == "events":
            http._send(200, {"object": "list", "has_more": False, "data": self.events(parts[3])})
        else:
            http._send(404, {"error": {"message": "No such job", "type": "invalid_request_error"}})


def header(record: dict, name: str) -> str:
    return next((v for k, v in record["headers"].items() if k.lower() == name), "")


def multipart(raw: bytes, boundary: str) -> dict:
    """The fields of a multipart/form-data body (a file field also gives its filename)."""
    fields = {}
    for part in raw.split(b"--" + boundary.encode())[1:-1]:
        head, _, body = part[2:].partition(b"\r\n\r\n")
        disposition = next(line for line in head.decode().split("\r\n")
                           if line.lower().startswith("content-disposition"))
        name = disposition.split('name="')[1].split('"')[0]
        fields[name] = body[:-2]  # the CRLF before the next boundary
        if 'filename="' in disposition:
            fields[f"{name}.filename"] = disposition.split('filename="')[1].split('"')[0]
    return fields


@pytest.fixture
def api(fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    return FineTuningAPI(fake_openai)


def test_submit_uploads_the_built_file_and_creates_the_job(dialogue_kb, tmp_path, api):
    report, out = build(tmp_path, "--validation-split", "0.2")
    result, job = invoke_json("finetune", "submit", out, "--model", "gpt-4o-mini-2024-07-18",
                              "--suffix", "voices", "--epochs", "2", "--validation", report["validation_out"])
    assert result.exit_code == 0, result.output
    assert job["id"] == "ftjob-1" and job["status"] == "validating_files"
    assert (job["training_file"], job["validation_file"]) == ("file-1", "file-2")
    training, validation = api.files["file-1"], api.files["file-2"]
    assert training["file"] == out.read_bytes()
    assert validation["file"] == Path(report["validation_out"]).read_bytes()
    assert (training["file.filename"], training["purpose"]) == ("train.jsonl", b"fine-tune")
    assert api.jobs["ftjob-1"] == {
        "model": "gpt-4o-mini-2024-07-18", "training_file": "file-1", "validation_file": "file-2",
        "suffix": "voices", "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}}
    upload = next(r for r in api.fake.requests if r["path"] == "/v1/files")
    assert header(upload, "authorization") == "Bearer sk-test-key"
    # the human form prints the id and how to follow it
    result = invoke("finetune", "submit", out, "--model", "gpt-4o-mini-2024-07-18")
    assert result.stdout.strip() == ("submitted ftjob-2 (validating_files); "
                                     "follow it with: kb finetune follow ftjob-2")
    assert "suffix" not in api.jobs["ftjob-2"] and "method" not in api.jobs["ftjob-2"]


def test_status_follow_list_and_cancel(dialogue_kb, tmp_path, api):
    _, out = build(tmp_path)
    assert invoke("finetune", "submit", out, "--model", "gpt-4o-mini-2024-07-18", "--suffix", "voices").exit_code == 0
    result, job = invoke_json("finetune", "status", "ftjob-1")
    assert (job["status"], job["fine_tuned_model"]) == ("running", None)
    result = invoke("finetune", "follow", "ftjob-1", "--interval", "0")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split("  ", 2)[2] for line in lines[:-1]] == [
        "Validating training file", "Fine-tuning job started", "Step 10/20: training loss=0.52",
        "New fine-tuned model created", "The job has successfully completed"]
    assert lines[-1] == "succeeded: model ft:gpt-4o-mini-2024-07-18:studio:voices:abc123"
    api.polls = 0
    result, followed = invoke_json("finetune", "follow", "ftjob-1", "--interval", "0")
    assert followed["job"]["trained_tokens"] == 4242
    assert [e["id"] for e in followed["events"]] == ["ev-0", "ev-1", "ev-2", "ev-3", "ev-4"]
    result, listed = invoke_json("finetune", "list")
    assert [j["id"] for j in listed["jobs"]] == ["ftjob-1"]
    assert any(r["path"] == "/v1/fine_tuning/jobs?limit=20" for r in api.fake.requests)
    result, cancelled = invoke_json("finetune", "cancel", "ftjob-1")
    assert cancelled["status"] == "cancelled"
    assert api.fake.requests[-1]["method"] == "POST"
    assert api.fake.requests[-1]["path"] == "/v1/fine_tuning/jobs/ftjob-1/cancel"
    result = invoke("finetune", "status", "ftjob-9")
    assert result.exit_code == 1 and result.stderr.strip().endswith("answered 404: No such job")


def test_follow_exits_1_when_the_job_fails(fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai.base_url)
    api = FineTuningAPI(fake_openai, statuses=("failed",))
    api.jobs["ftjob-1"] = {"model": "davinci-002", "training_file": "file-1"}
    result = invoke("finetune", "follow", "ftjob-1", "--interval", "0")
    assert result.exit_code == 1 and result.stdout.strip().splitlines()[-1] == "failed"


def test_job_commands_fail_with_one_clear_line(dialogue_kb, tmp_path, fake_openai, monkeypatch):
    _, out = build(tmp_path)
    result = invoke("finetune", "submit", out, "--model", "gpt-4o-mini-2024-07-18")
    assert result.exit_code == 1
    assert result.stderr == ("error: no API key: set OPENAI_API_KEY, or point --base-url (OPENAI_BASE_URL) "
                             "at an OpenAI-compatible server\n")
    result = invoke("finetune", "list", "--base-url", "http://127.0.0.1:9/v1")
    assert result.exit_code == 1
    assert result.stderr == ("error: cannot reach the fine-tuning API at http://127.0.0.1:9/v1; "
                             "check --base-url or OPENAI_BASE_URL\n")
    fake_openai.add_route("POST", "/v1/files", lambda http, record: http._send(400, {"error": {
        "message": "Invalid file format for Fine-Tuning API. Must be .jsonl", "type": "invalid_request_error"}}))
    result = invoke("finetune", "submit", out, "--model", "gpt-4o-mini-2024-07-18", "--base-url", fake_openai.base_url)
    assert result.exit_code == 1
    assert result.stderr == (f"error: {fake_openai.base_url} rejected the file train.jsonl: "
                             "Invalid file format for Fine-Tuning API. Must be .jsonl\n")
    assert not any(r["path"].startswith("/v1/fine_tuning") for r in fake_openai.requests)
    # an unfit file is refused before anything is sent; a long suffix too
    before = len(fake_openai.requests)
    bad = jsonl(tmp_path / "bad.jsonl", [chat(f"Q{i}") for i in range(10)] + ["{oops"])
    result = invoke("finetune", "submit", bad, "--model", "gpt-4o-mini-2024-07-18", "--base-url", fake_openai.base_url)
    assert result.exit_code == 1
    assert "is not fit to upload (1 error(s): line 11: invalid JSON" in result.stderr
    result = invoke("finetune", "submit", out, "--model", "m", "--suffix", "x" * 41, "--base-url", fake_openai.base_url)
    assert result.exit_code == 1 and "--suffix must be 1 to 40 characters, not 41" in result.stderr
    assert len(fake_openai.requests) == before


# --- answers with and without retrieval -------------------------------------


def test_answer_scorer_on_hand_checked_pairs():
    assert answer_tokens("The Kessel Glass! [1]") == ["kessel", "glass"]
    assert answer_tokens("潮汐节在412年。") == ["潮", "汐", "节", "在", "412", "年"]
    assert answer_tokens("Ｇｒｅｙｈｉｔｈｅ, 2,000 salt-marks") == ["greyhithe", "2", "000", "salt", "marks"]
    assert exact_match("The Greyhithe. [2]", ["Greyhithe"]) == 1.0
    assert exact_match("Greyhithe harbour", ["Greyhithe"]) == 0.0
    assert exact_match("盐百合根。", ["brine-lily root", "盐百合根"]) == 1.0
    # "It is in Greyhithe": 4 tokens, 1 shared -> P 1/4, R 1 -> F1 0.4
    assert token_f1("It is in Greyhithe [2]", ["Greyhithe"]) == pytest.approx(0.4)
    # best gold wins: "Idris Callow, the Warden" vs "Idris Callow": P 2/3, R 1 -> 0.8
    assert token_f1("Idris Callow, the Warden", ["Nessa", "Idris Callow"]) == pytest.approx(0.8)
    # CJK by character: 潮汐节 vs 潮汐节日: P 1, R 3/4 -> 6/7
    assert token_f1("潮汐节", ["潮汐节日"]) == pytest.approx(6 / 7)
    assert token_f1("No idea.", ["Greyhithe"]) == 0.0
    assert contains_answer("She rows for twenty-eight years.", ["Twenty-eight years"]) == 1.0
    assert contains_answer("She rows for twenty eight-ish years.", ["twenty-eight years"]) == 0.0


def qa_file(tmp_path: Path) -> Path:
    rows = [{"id": "q1", "question": "Who says the ferry fare is three copper bits?", "answers": ["Maren"],
             "doc_id": "ferry"},
            {"id": "q2", "question": "How much did the hood pay Dace Harrow in salt marks?",
             "answers": ["Three hundred salt marks"], "doc_id": "roost"}]
    return jsonl(tmp_path / "qa.jsonl", rows)


def test_eval_answers_scores_a_model_with_and_without_retrieval(dialogue_kb, tmp_path, fake_openai):
    fake_openai.reply = "Maren says it [1]."
    qa = qa_file(tmp_path)
    result, scores = invoke_json("eval", qa, "--answers", "--model", "fake-model", "--base-url", fake_openai.base_url)
    assert result.exit_code == 0, result.output
    # q1: "maren says it" vs "maren": P 1/3, R 1 -> F1 0.5, contains 1; q2: nothing shared
    assert {k: scores[k] for k in ("n", "model", "retrieval", "mode", "exact_match", "f1", "contains")} == {
        "n": 2, "model": "fake-model", "retrieval": True, "mode": "llm", "exact_match": 0.0, "f1": 0.25,
        "contains": 0.5}
    assert [q["citation_hit"] for q in scores["questions"]] == [True, True]
    assert scores["citation_hit"] == 1.0
    asked = fake_openai.chat_requests()
    assert [r["model"] for r in asked] == ["fake-model", "fake-model"]
    assert "Canon:" in asked[0]["messages"][1]["content"]

    fake_openai.reply = "Three hundred salt marks."
    result, scores = invoke_json("eval", qa, "--answers", "--model", "ft:m", "--no-retrieval",
                                 "--base-url", fake_openai.base_url)
    assert (scores["exact_match"], scores["f1"], scores["contains"], scores["citation_hit"]) == (0.5, 0.5, 0.5, None)
    last = fake_openai.chat_requests()[-1]["messages"]
    assert last == [{"role": "system", "content": NO_CANON_INSTRUCTION},
                    {"role": "user", "content": "How much did the hood pay Dace Harrow in salt marks?"}]


def test_eval_compare_models_prints_one_table(dialogue_kb, tmp_path, fake_openai):
    qa = qa_file(tmp_path)
    result, compared = invoke_json("eval", qa, "--compare-models", "base,ft:base:voices",
                                   "--base-url", fake_openai.base_url)
    assert result.exit_code == 0, result.output
    assert [(r["model"], r["retrieval"]) for r in compared["runs"]] == [
        ("base", False), ("base", True), ("ft:base:voices", False), ("ft:base:voices", True)]
    assert [r["citation_hit"] for r in compared["runs"]] == [None, 1.0, None, 1.0]
    assert [r["model"] for r in fake_openai.chat_requests()] == ["base"] * 4 + ["ft:base:voices"] * 4
    result = invoke("eval", qa, "--compare-models", "base,ft:base:voices", "--no-retrieval",
                    "--base-url", fake_openai.base_url)
    header, *rows = [line for line in result.stdout.splitlines() if "│" in line or "┃" in line]
    assert [c.strip() for c in header.strip("┃").split("┃")] == [
        "model", "retrieval", "mode", "n", "exact match", "F1", "contains gold", "gold in its canon",
        "cites gold doc"]
    assert [[c.strip() for c in row.strip("│").split("│")][:4] for row in rows] == [
        ["base", "off", "llm", "2"], ["ft:base:voices", "off", "llm", "2"]]


def test_eval_answers_needs_a_model_for_no_retrieval_and_keeps_retrieval_eval(dialogue_kb, tmp_path):
    qa = qa_file(tmp_path)
    result = invoke("eval", qa, "--answers", "--no-retrieval")
    assert result.exit_code == 1 and "needs a chat model" in result.stderr
    result = invoke("eval", qa, "--model", "m")
    assert result.exit_code == 2 and "add --answers" in result.stderr
    result, figures = invoke_json("eval", qa)
    assert list(figures) == ["n", "recall@1", "recall@5", "recall@10", "mrr", "ndcg@10", "answer_recall@5"]


def test_ask_and_npc_ask_without_retrieval(dialogue_kb, tmp_path, fake_openai):
    fake_openai.reply = "Aye, tidewalker."
    result, answer = invoke_json("ask", "Who rows the ferry?", "--no-retrieval", "--model", "ft:x",
                                 "--base-url", fake_openai.base_url)
    assert answer == {"answer": "Aye, tidewalker.", "citations": [], "mode": "llm"}
    result = invoke("ask", "Who rows the ferry?", "--no-retrieval", "--base-url", fake_openai.base_url)
    assert result.stdout == "Aye, tidewalker.\n"  # streamed once, not printed twice
    result, answer = invoke_json("npc", "ask", "Maren", "Who rows the ferry?", "--no-retrieval",
                                 "--base-url", fake_openai.base_url)
    assert (answer["npc"], answer["mode"], answer["citations"]) == ("Maren", "llm", [])
    # the NPC is asked with exactly the system message her fine-tuning examples carry
    assert fake_openai.chat_requests()[-1]["messages"] == [
        {"role": "system", "content": MAREN_SYSTEM}, {"role": "user", "content": "Who rows the ferry?"}]
    result = invoke("ask", "Who rows the ferry?", "--no-retrieval")
    assert result.exit_code == 1 and result.stderr.startswith("error: answering without retrieval needs a chat model")
    result = invoke("npc", "ask", "Maren", "Who?", "--no-retrieval", "--extractive", "--base-url", fake_openai.base_url)
    assert result.exit_code == 1 and "cannot be combined with --no-retrieval" in result.stderr
