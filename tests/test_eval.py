"""`kb eval` on a tiny question set whose figures were worked out by hand (BM25, so they are exact)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import CORPORA, invoke, invoke_json

METRICS = {"n", "recall@1", "recall@5", "recall@10", "mrr", "ndcg@10", "answer_recall@5"}

# Six kiln sections say "salt" three times each; the tides note says it once. So for
# "Where is the salt?" BM25 ranks the six kiln chunks first and the tides chunk 7th.
KILN_SECTION = "## Kiln {n}\nKiln {n} glazes pots with salt: salt crust, salt smoke, grey ash.\n\n"
DOCS = {
    "herons.txt": "Grey herons nest in the reed beds of Mirewood. They hunt eels at dawn.\n",
    "kilns.md": "# Kilns of Cinderholm\nThe kilns burn black sand. Fires reach 1200 degrees.\n\n"
                + "".join(KILN_SECTION.format(n=n) for n in range(1, 7)),
    "tides.txt": "Spring tides flood the causeways twice a month. Salt pans dry in Saltmonth.\n",
}
QUESTIONS = [
    # gold rank 1; the answer, full-width and upper case, folds to "reed beds"
    {"id": "q1", "question": "Where do herons nest?", "answers": ["ＲＥＥＤ　ＢＥＤＳ"], "doc_id": "herons"},
    # gold rank 1; answer present
    {"id": "q2", "question": "How hot do the kilns burn?", "answers": ["1200 degrees"], "doc_id": "kilns"},
    # gold rank 7: a miss at 5, a hit at 10; its answer is not in the top 5 chunks (all kilns)
    {"id": "q3", "question": "Where is the salt?", "answers": ["Saltmonth"], "doc_id": "tides"},
    # the gold document shares no term with the question: no rank; the answer (punctuation
    # folded: "black-sand" -> "black sand") is in the kilns chunk all the same
    {"id": "q4", "question": "How hot do the kilns burn?", "answers": ["Black-sand"], "doc_id": "herons"},
]
# ranks 1, 1, 7, none
EXPECTED_BM25 = {
    "n": 4,
    "recall@1": 0.5,                                                  # q1, q2
    "recall@5": 0.5,                                                  # q1, q2
    "recall@10": 0.75,                                                # q1, q2, q3
    "mrr": round((1 + 1 + 1 / 7) / 4, 4),                             # 0.5357
    "ndcg@10": round((1 + 1 + 1 / math.log2(7 + 1)) / 4, 4),          # 0.5833
    "answer_recall@5": 0.75,                                          # q1, q2, q4
}


@pytest.fixture
def tiny_kb(tmp_path, kb_dir) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    result = invoke("ingest", docs, "--kb", kb_dir)
    assert result.exit_code == 0, result.output
    return kb_dir


@pytest.fixture
def qa_file(tmp_path) -> Path:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    return path


def test_the_hand_checked_ranks_hold(tiny_kb):
    """The premise of the figures below: where BM25 puts each gold document."""
    _, found = invoke_json("search", "Where is the salt?", "--kb", tiny_kb, "--mode", "bm25", "-k", "10")
    assert [Path(r["source"]).stem for r in found["results"]] == ["kilns"] * 6 + ["tides"]
    _, found = invoke_json("search", "How hot do the kilns burn?", "--kb", tiny_kb, "--mode", "bm25", "-k", "10")
    assert {Path(r["source"]).stem for r in found["results"]} == {"kilns"}
    assert "Fires reach 1200 degrees." in found["results"][0]["text"]
    _, found = invoke_json("search", "Where do herons nest?", "--kb", tiny_kb, "--mode", "bm25")
    assert [r["source"] for r in found["results"]] == ["herons.txt"]


def test_eval_bm25_metrics_match_the_hand_computed_values(tiny_kb, qa_file):
    result, metrics = invoke_json("eval", qa_file, "--kb", tiny_kb, "--mode", "bm25")
    assert result.exit_code == 0, result.output
    assert metrics == EXPECTED_BM25
    assert (metrics["mrr"], metrics["ndcg@10"]) == (0.5357, 0.5833)


def test_eval_json_contract_in_every_mode(tiny_kb, qa_file):
    for mode in ("hybrid", "dense"):
        result, metrics = invoke_json("eval", qa_file, "--kb", tiny_kb, "--mode", mode)
        assert result.exit_code == 0
        assert set(metrics) == METRICS
        assert metrics["n"] == 4
        for key in METRICS - {"n"}:
            assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, (mode, key)
        assert metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"]
    _, default = invoke_json("eval", qa_file, "--kb", tiny_kb)
    assert default == invoke_json("eval", qa_file, "--kb", tiny_kb, "--mode", "hybrid")[1]


def test_eval_compare_gives_every_mode(tiny_kb, qa_file):
    result, by_mode = invoke_json("eval", qa_file, "--kb", tiny_kb, "--compare")
    assert result.exit_code == 0
    assert set(by_mode) == {"hybrid", "dense", "bm25"}
    assert by_mode["bm25"] == EXPECTED_BM25
    plain = invoke("eval", qa_file, "--kb", tiny_kb, "--compare")
    assert plain.exit_code == 0 and "bm25" in plain.stdout and "0.5357" in plain.stdout


def test_eval_names_a_bad_line(tiny_kb, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(QUESTIONS[0]) + "\n{not json\n", encoding="utf-8")
    result = invoke("eval", path, "--kb", tiny_kb)
    assert result.exit_code == 1
    assert result.stderr.strip().startswith(f"error: {path}:2: invalid JSON")
    path.write_text(json.dumps({"question": "Where?", "answers": []}) + "\n", encoding="utf-8")
    result = invoke("eval", path, "--kb", tiny_kb)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {path}:1: a line needs question, answers and doc_id"


@pytest.mark.parametrize("line, complaint", [
    ({"question": 5, "answers": ["a"], "doc_id": "herons"}, "question must be non-empty text"),
    ({"question": "Where?", "answers": None, "doc_id": "herons"}, "answers must be a list of strings"),
    ({"question": "Where?", "answers": "reed beds", "doc_id": "herons"}, "answers must be a list of strings"),
    ({"question": "Where?", "answers": ["a"], "doc_id": ["herons"]}, "doc_id must be text"),
])
def test_eval_names_a_line_of_the_wrong_shape(tiny_kb, tmp_path, line, complaint):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(QUESTIONS[0]) + "\n" + json.dumps(line) + "\n", encoding="utf-8")
    result = invoke("eval", path, "--kb", tiny_kb)
    assert result.exit_code == 1
    assert result.stderr.strip().startswith(f"error: {path}:2: {complaint}")


def test_eval_of_a_file_that_is_not_utf8_fails_with_one_line(tiny_kb, tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_bytes(b"\xff\xfe{}\n")
    result = invoke("eval", path, "--kb", tiny_kb)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {path}: question set is not UTF-8 (bad byte at offset 0)"


def test_eval_of_a_missing_file_fails_with_one_line(tiny_kb, tmp_path):
    missing = tmp_path / "nope.jsonl"
    result = invoke("eval", missing, "--kb", tiny_kb)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {missing}: cannot read question set: No such file or directory"


def test_eval_on_the_sample_world_question_set(corpora_kb):
    qa = CORPORA / "eval" / "world-qa.jsonl"
    lines = [line for line in qa.read_text(encoding="utf-8").splitlines() if line.strip()]
    result, metrics = invoke_json("eval", qa, "--kb", corpora_kb, "--mode", "bm25")
    assert result.exit_code == 0
    assert set(metrics) == METRICS and metrics["n"] == len(lines)
    assert metrics["recall@10"] >= metrics["recall@5"] >= metrics["recall@1"] > 0.5


def test_eval_compare_plot_writes_a_png_and_a_bad_path_is_one_line(tiny_kb, qa_file, tmp_path):
    png = tmp_path / "recall.png"
    result = invoke("eval", qa_file, "--kb", tiny_kb, "--compare", "--plot", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = tmp_path / "no-such-folder" / "recall.png"
    result = invoke("eval", qa_file, "--kb", tiny_kb, "--compare", "--plot", missing)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {missing}: cannot write the plot: No such file or directory"
