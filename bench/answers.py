"""Do offline answers contain the answer? Extractive `kb ask` against the most it could quote, and what it costs.

Per set (the dev halves of ../shared/eval, and the sample world's
corpora/eval/world-qa.jsonl), each question is answered extractively with
k=5, as `kb ask --extractive` does, and scored:

- answer_contains: the gold answer string (case- and width-folded, as
  `kb eval --answers` compares) inside the answer text;
- ceiling: the gold answer inside the chunks the answer cites: the most a
  quote of them could reach (a refused question scores 0 on both);
- ratio: answer_contains / ceiling.

Latency: in process, p50 of `search` (k=5, hybrid) against the whole of
`respond` (search, the relevance check, sentence choice), wall clock and process CPU time, on the first
--timed questions of each set, with the embedder's cache emptied before every
call (and kb.extract's caches of analysed chunks) so each pays for its own work;
--repeat keeps each question's fastest of several turns, for a machine shared with other jobs.

The eval sets are sampled (--sample questions per set, seeded) to keep runs
short; stores are kept under --cache and reused (ingesting a set takes minutes).

    python bench/answers.py [--sets world,cmrc2018,drcd,fairytaleqa] [--sample 200] [--seed 0]
                            [--timed 30] [--repeat 1] [--cache /tmp/kb-bench-stores]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

# As a script, bench/ comes first on sys.path, where bench/ingest.py would shadow the ingest package.
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import (  # noqa: E402
    ROOT,
    SETS,
    cached_store_dir,
    eval_set,
    forget_recent_embeddings,
    ingested,
    machine,
    percentile,
    revision,
)
from kb.answer_eval import contains_answer  # noqa: E402
from kb.extract import forget_analyses  # noqa: E402

WORLD = "world"


def questions_and_docs(name: str) -> tuple[list[dict], Path]:
    """A set's questions and the folder to ingest for it."""
    if name == WORLD:
        qa, docs = ROOT / "corpora" / "eval" / "world-qa.jsonl", ROOT / "corpora"
    else:
        folder = eval_set(name)
        qa, docs = folder / "qa.dev.jsonl", folder / "docs"
    with open(qa, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()], docs


def sampled(questions: list[dict], size: int, seed: int) -> list[dict]:
    """A seeded sample of the questions, in file order (all of them when there are fewer)."""
    if size <= 0 or len(questions) <= size:
        return questions
    keep = set(random.Random(seed).sample(range(len(questions)), size))
    return [q for i, q in enumerate(questions) if i in keep]


def quality(kb, questions: list[dict]) -> dict:
    """answer_contains and its ceiling over a set's questions."""
    contains = ceiling = 0.0
    for item in questions:
        answer = kb.ask(item["question"], k=5, extractive=True)
        golds = [str(a) for a in item["answers"]]
        contains += contains_answer(answer.answer, golds)
        ceiling += contains_answer("\n".join(c.hit.text for c in answer.citations), golds)
    n = len(questions)
    return {"n": n, "answer_contains": contains / n, "ceiling": ceiling / n,
            "ratio": contains / ceiling if ceiling else 0.0}


def p50_ms(calls: dict, questions: list[dict], repeat: int = 1) -> dict[tuple[str, str], float]:
    """p50 milliseconds of each call, wall clock and this process's CPU, taken in turn on every question so a
    shared machine's load falls on all alike; with ``repeat``, each question's fastest of that many turns, so a
    burst of other jobs' load falls out. CPU time is what a loaded machine leaves least changed."""
    clocks = {"wall": time.perf_counter, "cpu": time.process_time}
    timings = {(name, clock): [] for name in calls for clock in clocks}
    for item in questions:
        fastest = {key: math.inf for key in timings}
        for _ in range(repeat):
            for name, call in calls.items():
                forget_recent_embeddings()
                forget_analyses()
                wall, cpu = time.perf_counter(), time.process_time()
                call(item["question"])
                spent = {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}
                for clock, seconds in spent.items():
                    fastest[name, clock] = min(fastest[name, clock], seconds * 1000)
        for key, value in fastest.items():
            timings[key].append(value)
    return {key: percentile(values, 50) for key, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=",".join((WORLD, *SETS)), help=f"comma-separated [{WORLD},{','.join(SETS)}]")
    parser.add_argument("--sample", type=int, default=200, help="questions per set (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timed", type=int, default=30, help="questions per set timed for latency")
    parser.add_argument("--repeat", type=int, default=1, help="time each of them this many times, keeping the fastest")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/kb-bench-stores"),
                        help="keep the stores here and reuse them (as bench/baseline.py --cache)")
    args = parser.parse_args()

    table = Table(title="Extractive answers (k=5): gold answer inside the answer vs inside its cited chunks")
    for column in ("set", "n", "answer_contains", "ceiling", "ratio", "ask p50 ms", "search p50 ms", "ask/search",
                   "CPU: ask / search p50 ms", "CPU ask/search"):
        table.add_column(column, justify="left" if column == "set" else "right")
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        questions, docs = questions_and_docs(name)
        questions = sampled(questions, args.sample, args.seed)
        kb_dir = cached_store_dir(args.cache, name)
        kb = ingested(kb_dir, docs)
        figures = quality(kb, questions)
        latency = ["-"] * 5  # --timed 0: quality only
        if args.timed:
            p50 = p50_ms({"ask": lambda q, kb=kb: kb.ask(q, k=5, extractive=True),
                          "search": lambda q, kb=kb: kb.search(q, k=5)}, questions[:args.timed], args.repeat)
            ask_ms, search_ms = p50["ask", "wall"], p50["search", "wall"]
            ask_cpu, search_cpu = p50["ask", "cpu"], p50["search", "cpu"]
            latency = [f"{ask_ms:.0f}", f"{search_ms:.0f}", f"{ask_ms / search_ms:.2f}",
                       f"{ask_cpu:.1f} / {search_cpu:.1f}", f"{ask_cpu / search_cpu:.2f}"]
        table.add_row(name, str(figures["n"]), *(f"{figures[m]:.3f}" for m in ("answer_contains", "ceiling", "ratio")),
                      *latency)
        print(f"{name} done", file=sys.stderr)
    console = Console(width=180)
    console.print(table)
    console.print(f"sample: {args.sample or 'all'} questions per set (seed {args.seed}); "
                  f"latency: the first {args.timed} of them, each the fastest of {args.repeat}")
    console.print(f"machine: {machine()}; code at {revision()}")


if __name__ == "__main__":
    main()
