"""The `kb` command: thin click wiring over plain functions, rendering, exit codes.

Exit status: 0 all good; 1 something failed (the message says what and why);
2 usage error. With --json, stdout carries exactly one JSON document.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import json
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from kb.config import Settings
from kb.errors import KBError
from kb.handoff import announced, answering, post, running_server

if TYPE_CHECKING:
    from rich.table import Table

# rich (and YAML, for --where values) are imported by the commands that use them: a `kb search --json`
# handed to a running kb serve pays only for click, kb.config and kb.handoff.


class KBGroup(click.Group):
    """Turns a KBError anywhere below into one line on stderr and the error's exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KBError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)


def _remember_chroma_url(ctx, param, value):
    if value:
        ctx.meta["kb.chroma_url"] = value


def common(command):
    """--kb, --chroma-url and --json, the options every command takes.

    With --json, a failure still prints one JSON document, ``{"error": ...}``,
    besides the usual line on stderr.
    """

    @functools.wraps(command)
    def func(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except KBError as exc:
            if kwargs.get("as_json"):
                emit_json({"error": str(exc)})
            raise

    func = click.option("--chroma-url", metavar="URL", expose_value=False, callback=_remember_chroma_url,
                        help="Keep the knowledge base on a Chroma server [$KB_CHROMA_URL].")(func)
    func = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(func)
    func = click.option("--kb", "kb_dir", type=click.Path(path_type=Path), default=None,
                        help="Knowledge base directory [default: $KB_DIR or ./.kb].")(func)
    return func


def settings_from(kb_dir: Path | None, **overrides) -> Settings:
    settings = Settings()
    if kb_dir is not None:
        settings.kb_dir = kb_dir
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("kb.chroma_url"):
        settings.chroma_url = ctx.meta["kb.chroma_url"]
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    return settings


def new_table(*columns, **options) -> Table:
    """A rich table, rich being imported only by the commands that print one."""
    from rich.table import Table

    return Table(*columns, **options)


def print_table(table: Table) -> None:
    """A rich table on stdout, never cut to 80 columns when stdout is a pipe or a file."""
    from rich.console import Console

    Console(width=None if sys.stdout.isatty() else 160).print(table)


def stderr_progress(as_json: bool, *columns):
    """A transient progress bar on stderr (description, bar, done of total, then ``columns``), shown only to a
    terminal and never with --json."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *columns,
                    console=Console(stderr=True), transient=True, disable=as_json or not sys.stderr.isatty())


def emit_json(data) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


def parse_where(pairs: tuple[str, ...]) -> dict:
    from ingest.meta import coerce

    where = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{pair}' is not KEY=VALUE", param_hint="--where")
        where[key.strip()] = coerce(value)
    return where


def open_kb(kb_dir: Path | None, **overrides):
    """The knowledge base the command's --kb, --chroma-url and environment point at."""
    collecting, importing = gc.isenabled(), "kb.api" not in sys.modules
    gc.disable()  # importing chromadb, pydantic & co. makes objects, not garbage: collections meanwhile only cost time
    try:
        from kb.api import KnowledgeBase
    finally:
        if importing:
            # What the import made lives as long as the process: later collections need not walk it again
            # (opening the store and loading the model took ~0.1 s less CPU in a fresh `kb search`).
            gc.freeze()
        if collecting:
            gc.enable()

    return KnowledgeBase(settings_from(kb_dir, **overrides))


@click.group(cls=KBGroup)
@click.version_option(package_name="lore-kb")
def cli():
    """Lore KB: your studio's canon, searchable and citable, offline by default."""


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--embed-model", default=None, help="Embedding model for a new store.")
@click.option("--watch", "watching", is_flag=True, help="Keep running: re-ingest after each batch of changes (Ctrl-C stops).")
@click.option("--debounce-ms", type=click.IntRange(10, 60_000), default=300, show_default=True,
              help="With --watch: wait until the files have been quiet this long.")
@common
def ingest(paths, embed_model, watching, debounce_ms, kb_dir, as_json):
    """Add, update and remove files incrementally."""
    from kb.sync import IngestReport

    kb = open_kb(kb_dir, embed_model=embed_model)
    if watching:
        if as_json:
            raise click.UsageError("--watch prints one line per batch; it does not take --json")
        watch_ingest(kb, list(paths), debounce_ms)
        return
    try:
        with stderr_progress(as_json) as progress:
            task = progress.add_task("ingesting", total=None)
            report = kb.ingest(list(paths),
                               on_file=lambda source: progress.update(task, advance=1, description=source))
    except KBError as exc:  # the store itself failed (locked, read-only, another model)
        if not as_json:
            raise
        click.echo(f"error: {exc}", err=True)
        emit_json(IngestReport(failed=[{"path": kb.location, "error": str(exc)}]).to_json())
        sys.exit(exc.exit_code)
    for failure in report.failed:
        click.echo(f"error: {failure['path']}: {failure['error']}", err=True)
    echo_warnings(report.warnings)
    if as_json:
        emit_json(report.to_json())
    else:
        table = new_table("added", "updated", "unchanged", "removed", "failed", "skipped", "chunks in store")
        table.add_row(*(str(len(getattr(report, f))) for f in
                        ("added", "updated", "unchanged", "removed", "failed", "skipped")),
                      str(report.chunks))
        print_table(table)
    if report.failed:
        sys.exit(1)


def watch_ingest(kb, paths: list[str], debounce_ms: int) -> None:
    """`kb ingest --watch`: one summary line per batch on stdout until Ctrl-C."""
    from kb.watch import stop_on_interrupt, watch

    def show(batch):
        click.echo(batch.summary(), err=batch.report is None)
        for failure in batch.report.failed if batch.report else []:
            click.echo(f"error: {failure['path']}: {failure['error']}", err=True)

    stop = threading.Event()
    with stop_on_interrupt(stop, lambda: click.echo("stopping after this batch (Ctrl-C again to abort)", err=True)):
        click.echo(f"watching {', '.join(paths)} (Ctrl-C to stop)", err=True)
        watch(kb, paths, stop, show, debounce_ms)


@cli.command()
@click.argument("query")
@click.option("-k", default=5, show_default=True, type=click.IntRange(1, 100))
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option("--where", multiple=True, metavar="KEY=VALUE", help="Only chunks whose metadata match.")
@common
def search(query, k, mode, where, kb_dir, as_json):
    """Show the canon chunks that best match QUERY."""
    settings, where = settings_from(kb_dir), parse_where(where)
    server = running_server(settings)
    reply = server and post(server, "/search", {"query": query, "k": k, "mode": mode, "where": where})
    if reply is None:
        hits = open_kb(kb_dir).search(query, k=k, mode=mode, where=where)
        reply = {"query": query, "results": [h.to_json() for h in hits]}
    if as_json:
        emit_json(reply)
        return
    from rich.console import Console

    out = Console()
    if not reply["results"]:
        out.print("No matching canon.")
    for rank, hit in enumerate(reply["results"], start=1):
        out.print(f"[bold]{rank}. {hit['source']}[/bold] · {hit['metadata'].get('title', '')} "
                  f"[dim](score {hit['score']:.4f})[/dim]", highlight=False)
        out.print(hit["text"], markup=False, highlight=False)
        out.print()


def state_option(func):
    return click.option("--state", "state_pairs", multiple=True, metavar="KEY=VALUE",
                        help="Game state: chapter=2, region=Saltreach, flag=met_sefa (repeatable); "
                             "it only narrows what a card allows.")(func)


def llm_options(func):
    func = click.option("--no-retrieval", is_flag=True,
                        help="Answer from the model alone, with no canon (e.g. to try a fine-tuned model).")(func)
    func = click.option("--extractive", is_flag=True, help="Quote the canon; never call a model.")(func)
    func = click.option("--base-url", default=None, help="OpenAI-compatible server [$OPENAI_BASE_URL].")(func)
    func = click.option("--model", default=None, help="Chat model [$KB_MODEL, default gpt-4o-mini].")(func)
    func = click.option("-k", default=5, show_default=True, type=click.IntRange(1, 50))(func)
    return func


class EchoTokens:
    """Prints a streamed reply token by token and remembers whether any token came."""

    def __init__(self):
        self.streamed = False

    def __call__(self, token: str) -> None:
        self.streamed = True
        click.echo(token, nl=False)


def print_answer(answer, streamed: bool) -> None:
    """The answer (unless it was streamed already), then its numbered sources."""
    if not streamed:
        click.echo(answer.answer)
    else:
        click.echo()
    for c in answer.citations:
        click.echo(f"  [{c.n}] {c.label()}")
    if answer.retrieved:
        click.echo("  retrieved, not cited:")
        for c in answer.retrieved:
            click.echo(f"    {c.label()}")


def served_answer(settings: Settings, question: str, k: int, extractive: bool) -> dict | None:
    """`kb ask --json` from a running `kb serve` that answers as this process would, else None."""
    server = running_server(settings)
    if server is None or not (extractive or server.get("answers") == answering(settings, extractive)):
        return None
    return post(server, "/ask", {"question": question, "k": k, "extractive": extractive})


@cli.command()
@click.argument("question")
@llm_options
@state_option
@common
def ask(question, k, model, base_url, extractive, no_retrieval, state_pairs, kb_dir, as_json):
    """Answer QUESTION from the canon, with [n] citations (--state: as a player at that point would)."""
    from kb.gamestate import state_from_pairs

    state = state_from_pairs(state_pairs) if state_pairs else None
    if as_json and not (model or no_retrieval or state):
        reply = served_answer(settings_from(kb_dir, base_url=base_url), question, k, extractive)
        if reply is not None:
            emit_json(reply)
            return
    kb = open_kb(kb_dir, base_url=base_url)
    stream = None if as_json else EchoTokens()
    answer = kb.ask(question, k=k, extractive=extractive, model=model, retrieval=not no_retrieval,
                    on_token=stream, state=state)
    if as_json:
        emit_json(answer.to_json())
    else:
        print_answer(answer, streamed=stream.streamed)


@cli.command()
@common
def status(kb_dir, as_json):
    """Files, chunks, embedding model, store size, last ingest and replaced vectors (`kb compact`)."""
    data = open_kb(kb_dir).status()
    if as_json:
        emit_json(data)
        return
    table = new_table(show_header=False)
    for key, value in data.items():
        if key != "warnings":
            table.add_row(key, str(value))
    print_table(table)
    echo_warnings(data["warnings"])


def echo_warnings(warnings: list[dict]) -> None:
    """One line on stderr per warning, naming the file."""
    for warning in warnings:
        click.echo(f"warning: {warning['path']}: {warning['warning']}", err=True)


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@common
def forget(paths, kb_dir, as_json):
    """Remove files (or everything under folders) from the store."""
    removed = open_kb(kb_dir).forget(list(paths))
    if as_json:
        emit_json({"removed": removed})
    else:
        click.echo(f"removed {len(removed)} file(s)" + "".join(f"\n  {r}" for r in removed))


@cli.command()
@common
def compact(kb_dir, as_json):
    """Rebuild the vector index without the vectors of replaced chunks, which every process loading it keeps."""
    from rich.progress import TimeRemainingColumn

    kb = open_kb(kb_dir)
    with stderr_progress(as_json, TimeRemainingColumn()) as progress:
        task = progress.add_task("compacting", total=None)
        done = kb.compact(on_progress=lambda read, total: progress.update(task, completed=read, total=total))
    if as_json:
        emit_json(done.to_json())
    else:
        click.echo(f"vector index: {done.before:,} -> {done.after:,} vectors ({done.before - done.after:,} dropped)")


def eval_answers(kb, questions, model, compare_models, retrieval, k, extractive, as_json) -> None:
    """`kb eval --answers`: one model's scores, or with --compare-models one table of every run."""
    from kb.answer_eval import METRICS, compare_answers, run_answers

    if compare_models:
        models = [m.strip() for m in compare_models.split(",") if m.strip()]
        if not models:
            raise click.BadParameter("name at least one model, like A,B", param_hint="--compare-models")
        rows = compare_answers(kb, questions, models, retrieval, k)
    else:
        rows = [run_answers(kb, questions, model, retrieval is not False, k, extractive)]
    if as_json:
        emit_json({"runs": rows} if compare_models else rows[0])
        return
    table = new_table("model", "retrieval", "mode", "n", "exact match", "F1", "contains gold",
                  "gold in its canon", "cites gold doc")
    for row in rows:
        table.add_row(row["model"], "on" if row["retrieval"] else "off", row["mode"], str(row["n"]),
                      *("-" if row[m] is None else f"{row[m]:.3f}" for m in METRICS))
    print_table(table)


def eval_npc(kb, npc_file, k, as_json) -> None:
    """`kb eval --npc FILE`: leak rate, unknown-answer and fact accuracy, first person, latency."""
    from kb.npc_eval import read_npc_questions, run_npc_questions

    result = run_npc_questions(kb, read_npc_questions(npc_file), k)
    if as_json:
        emit_json(result)
        return
    figures = [key for key in result if key != "questions"]
    table = new_table(*figures)
    table.add_row(*("-" if result[f] is None else str(result[f]) for f in figures))
    print_table(table)
    for row in result["questions"]:
        if row["leak"] or not row["correct"]:
            click.echo(f"{'LEAK' if row['leak'] else 'miss'}  {row['npc']}: {row['question']} -> {row['answer'][:120]}")


@cli.command("eval")
@click.argument("qa_file", type=click.Path(dir_okay=False), required=False)
@click.option("--npc", "npc_file", type=click.Path(dir_okay=False), default=None,
              help="An NPC question set (JSONL: npc, question, state, history, expected) instead of QA_FILE.")
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option("--compare", is_flag=True, help="Every mode side by side.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="With --compare: recall@k curves to a PNG.")
@click.option("--answers", is_flag=True, help="Score generated answers (exact match, F1, citations), not retrieval.")
@click.option("--model", default=None, help="With --answers: the chat model that answers [$KB_MODEL].")
@click.option("--compare-models", default=None, metavar="A,B",
              help="Score answers of several models in one table, each without and with retrieval.")
@click.option("--retrieval/--no-retrieval", default=None,
              help="With --answers: answer with the canon [default] or from the model alone.")
@click.option("--base-url", default=None, help="OpenAI-compatible server [$OPENAI_BASE_URL].")
@click.option("--extractive", is_flag=True, help="With --answers: quote the canon; never call a model.")
@click.option("-k", default=5, show_default=True, type=click.IntRange(1, 50), help="With --answers: chunks per question.")
@common
def eval_cmd(qa_file, npc_file, mode, compare, plot, answers, model, compare_models, retrieval, base_url, extractive, k,
             kb_dir, as_json):
    """Measure retrieval on a QA.jsonl question set (or, with --answers, the answers themselves;
    with --npc, NPCs' secrets, limits and voice)."""
    from kb.evaluate import read_questions, recall_curve, run_questions, summarize
    from kb.retrieve import MODES

    if bool(qa_file) == bool(npc_file):
        raise click.UsageError("name a QA_FILE or --npc FILE (one of them)")
    if npc_file:
        eval_npc(open_kb(kb_dir, base_url=base_url), npc_file, k, as_json)
        return
    if not (answers or compare_models) and (model or retrieval is not None or extractive):
        raise click.UsageError("--model, --extractive and --retrieval/--no-retrieval score answers: add --answers")
    questions = read_questions(qa_file)
    if answers or compare_models:
        eval_answers(open_kb(kb_dir, base_url=base_url), questions, model, compare_models, retrieval, k,
                     extractive, as_json)
        return
    kb = open_kb(kb_dir)
    modes = MODES if compare else (mode,)
    runs = {m: run_questions(kb, questions, m) for m in modes}
    results = {m: summarize(per_q) for m, per_q in runs.items()}
    if plot:
        from kb.plot import plot_recall

        plot_recall({m: recall_curve(per_q) for m, per_q in runs.items()}, plot, Path(qa_file).parent.name)
    if as_json:
        emit_json(results if compare else results[mode])
        return
    metrics = list(next(iter(results.values())))
    table = new_table("mode", *metrics)
    for m, figures in results.items():
        table.add_row(m, *(str(figures[x]) for x in metrics))
    print_table(table)


@cli.group()
def npc():
    """NPCs that answer in character from only what they may know."""


@npc.command("list")
@common
def npc_list(kb_dir, as_json):
    """The NPC cards in the store."""
    found = open_kb(kb_dir).npcs()
    if as_json:
        emit_json({"npcs": [card.to_json() for card in found.values()]})
        return
    table = new_table("name", "role", "speaker", "knows")
    for card in found.values():
        table.add_row(card.name, card.role, card.speaker, json.dumps(card.knows) if card.knows else "everything")
    print_table(table)


@npc.command("show")
@click.argument("name")
@common
def npc_show(name, kb_dir, as_json):
    """One NPC's card and the lines that set their voice."""
    character = open_kb(kb_dir).npc(name)
    card = {**character.card.to_json(), "voice": character.voice_lines()}
    if as_json:
        emit_json(card)
        return
    for key, value in card.items():
        click.echo(f"{key}: {json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value}")


@npc.command("ask")
@click.argument("name")
@click.argument("question")
@llm_options
@state_option
@common
def npc_ask(name, question, k, model, base_url, extractive, no_retrieval, state_pairs, kb_dir, as_json):
    """Ask NAME a QUESTION; they answer in character from the canon they may know."""
    from kb.gamestate import state_from_pairs

    state = state_from_pairs(state_pairs) if state_pairs else None
    character = open_kb(kb_dir, base_url=base_url).npc(name)
    stream = None if as_json else EchoTokens()
    answer = character.ask(question, k=k, extractive=extractive, model=model,
                           retrieval=not no_retrieval, on_token=stream, state=state)
    if as_json:
        emit_json(answer.to_json())
    else:
        print_answer(answer, streamed=stream.streamed)


@npc.command("chat")
@click.argument("name")
@llm_options
@state_option
@click.option("--kb", "kb_dir", type=click.Path(path_type=Path), default=None,
              help="Knowledge base directory [default: $KB_DIR or ./.kb].")
def npc_chat(name, k, model, base_url, extractive, no_retrieval, state_pairs, kb_dir):
    """Talk with NAME, a line at a time (stdin works too); /state KEY=VALUE, /state, /quit."""
    from rich.console import Console

    from kb.chat import chat_loop
    from kb.gamestate import state_from_pairs

    character = open_kb(kb_dir, base_url=base_url).npc(name)
    chat_loop(character, state_from_pairs(state_pairs), sys.stdin, Console(),
              k=k, extractive=extractive, model=model, retrieval=not no_retrieval)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; beyond loopback needs $KB_API_TOKEN or $KB_NPC_TOKEN (16+ characters).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="A Host name to answer to besides localhost, 127.0.0.1, [::1] and --host (repeatable).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--root", "roots", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="A folder POST /ingest may read (repeatable); none: /ingest is off.")
@click.option("--base-url", default=None, help="OpenAI-compatible server to generate with [$OPENAI_BASE_URL].")
@click.option("--model", default=None, help="Chat model [$KB_MODEL, default gpt-4o-mini].")
@click.option("--extractive", is_flag=True, help="Quote the canon; never call a model.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes answering on the port, each with its own model and index: one per core for games.")
@common
def serve(host, allowed_hosts, port, roots, base_url, model, extractive, workers, kb_dir, as_json):
    """Serve the knowledge base over HTTP: an OpenAI-compatible chat API and a JSON API."""
    from kb.server import serve as run_server

    settings = settings_from(kb_dir, base_url=base_url, model=model)
    with announced(settings, host, port, extractive) if port else contextlib.nullcontext():
        run_server(settings, host=host, port=port, roots=list(roots), extractive=extractive,
                   allowed_host_names=list(allowed_hosts), workers=workers)


@cli.command("mcp")
@click.option("--allow-ingest", is_flag=True, help="Add an `ingest` tool (read-only without it); needs --root.")
@click.option("--root", "roots", multiple=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="A folder the ingest tool may read (repeatable).")
@click.option("--extractive", is_flag=True, help="Quote the canon; never call a model.")
@common
def mcp_cmd(allow_ingest, roots, extractive, kb_dir, as_json):
    """Serve the knowledge base to an MCP client over stdio: search, ask, npc_ask, status."""
    from kb.mcp_server import serve_stdio

    if allow_ingest != bool(roots):
        raise click.UsageError("--allow-ingest and --root go together: the ingest tool reads only under --root")
    serve_stdio(open_kb(kb_dir), roots=list(roots), extractive=extractive)


@cli.group()
def finetune():
    """Fine-tune a model on your scripts' voices: build, check, submit and follow a job."""


def base_url_option(func):
    return click.option("--base-url", default=None, help="OpenAI-compatible server [$OPENAI_BASE_URL].")(func)


def print_job(job: dict) -> None:
    for key, value in job.items():
        if value is not None:
            click.echo(f"{key}: {value}")


def print_check(report) -> None:
    """The checker's findings as `FILE:LINE: error: ...` lines, then token figures and the cost."""
    checked = f", checked for {report.model}" if report.model else ""
    click.echo(f"{report.path}: {report.examples} {report.format or 'unrecognised'} examples{checked}")
    for kind, problems in (("error", report.errors), ("warning", report.warnings)):
        for p in problems:
            click.echo(f"{report.path}:{p.line}: {kind}: {p.message}" if p.line else
                       f"{report.path}: {kind}: {p.message}")
    t, c = report.tokens, report.cost
    if t.get("counted"):
        click.echo(f"tokens: {t['total']:,} in {t['counted']} examples; per example min {t['min']}, "
                   f"median {t['median']}, mean {t['mean']}, max {t['max']} (limit {t['limit']:,})")
    if c:
        usd = f"${c['usd']:,.2f}" if c["usd"] >= 1 else f"${c['usd']:.4f}"
        click.echo(f"cost: {c['tokens_per_epoch']:,} tokens x {c['epochs']} epochs x "
                   f"${c['training_per_1k']}/1K tokens = {usd} ({c['model']}; {c['price_source']})")
    click.echo("ok: fit to upload" if report.ok else f"not fit to upload: {len(report.errors)} error(s)")


@finetune.command("build")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The training JSONL to write.")
@click.option("--format", "fmt", type=click.Choice(["chat", "completion"]), default="chat", show_default=True,
              help="Chat messages, or the legacy prompt/completion with separator and stop sequence.")
@click.option("--speaker", "speakers", multiple=True, metavar="NAME",
              help="Only this character's lines (repeatable; an NPC card's name works too).")
@click.option("--context-turns", type=click.IntRange(0, 100), default=6, show_default=True,
              help="Preceding lines of the scene in each example's input.")
@click.option("--validation-split", type=click.FloatRange(0, 1, max_open=True), default=0.0, show_default=True,
              help="Share of examples held out in OUT's .validation file.")
@common
def finetune_build(out, fmt, speakers, context_turns, validation_split, kb_dir, as_json):
    """Build training data from the ingested dialogue: one example per spoken line."""
    from kb.finetune import build

    report = build(open_kb(kb_dir), out, fmt, speakers, context_turns, validation_split)
    if as_json:
        emit_json(report.to_json())
        return
    click.echo(f"wrote {report.examples} {fmt} examples from {report.scenes} scenes to {report.out}")
    if report.validation_out:
        click.echo(f"held out {report.validation} for validation in {report.validation_out}")
    if report.duplicates or report.skipped:
        click.echo(f"dropped {report.duplicates} duplicate(s); skipped {report.skipped} line(s) "
                   "holding the stop sequence")
    click.echo("lines by speaker: " + ", ".join(f"{s} {n}" for s, n in report.speakers.items()))


@finetune.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", default=None, help="Base model whose token limit and price apply "
                                            "[the price table's default for the file's format].")
@click.option("--epochs", type=click.IntRange(1, 100), default=None,
              help="Epochs for the cost estimate [the price table's default, 4].")
@click.option("--prices", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="An edited copy of the price table (TOML) [kb/finetune/prices.toml].")
@click.option("--validation", is_flag=True, help="FILE is a validation file: no minimum number of examples.")
@common
def finetune_check(file, model, epochs, prices, validation, kb_dir, as_json):
    """Validate a training file line by line; token statistics and a cost estimate. Exit 1 if unfit."""
    from kb.finetune import check_file, load_prices

    report = check_file(file, model, epochs, load_prices(prices), training=not validation)
    if as_json:
        emit_json(report.to_json())
    else:
        print_check(report)
    if not report.ok:
        sys.exit(1)


@finetune.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True, help="Base model to fine-tune, e.g. gpt-4o-mini-2024-07-18.")
@click.option("--suffix", default=None, help="Up to 40 characters for the fine-tuned model's name.")
@click.option("--epochs", type=click.IntRange(1, 100), default=None, help="Training epochs [the server's choice].")
@click.option("--validation", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A validation JSONL to upload with it.")
@base_url_option
@common
def finetune_submit(file, model, suffix, epochs, validation, base_url, kb_dir, as_json):
    """Check FILE, upload it and start a fine-tuning job; prints the job id."""
    from kb.finetune import submit

    job = submit(file, model, settings_from(kb_dir, base_url=base_url), suffix, epochs, validation)
    if as_json:
        emit_json(job)
    else:
        click.echo(f"submitted {job['id']} ({job['status']}); follow it with: kb finetune follow {job['id']}")


def _job_command(name: str, doc: str):
    """`kb finetune status|cancel JOB_ID`: one call on one job (kb.finetune.<name>), printed alike."""

    @finetune.command(name, help=doc)
    @click.argument("job_id")
    @base_url_option
    @common
    def command(job_id, base_url, kb_dir, as_json):
        from kb import finetune as jobs

        job = getattr(jobs, name)(job_id, settings_from(kb_dir, base_url=base_url))
        if as_json:
            emit_json(job)
        else:
            print_job(job)

    return command


_job_command("status", "One job's state, and its model name once it has succeeded.")
_job_command("cancel", "Stop a job that is still queued or running.")


@finetune.command("follow")
@click.argument("job_id")
@click.option("--interval", type=click.FloatRange(0), default=10.0, show_default=True,
              help="Seconds between polls.")
@base_url_option
@common
def finetune_follow(job_id, interval, base_url, kb_dir, as_json):
    """Stream a job's events until it succeeds, fails or is cancelled (exit 1 if it failed)."""
    from kb.finetune import follow

    def show(event):
        when = datetime.datetime.fromtimestamp(event["created_at"] or 0).isoformat(sep=" ", timespec="seconds")
        click.echo(f"{when}  {event['level'] or 'info'}  {event['message']}")

    job, events = follow(job_id, settings_from(kb_dir, base_url=base_url),
                         on_event=None if as_json else show, interval=interval)
    if as_json:
        emit_json({"job": job, "events": events})
    else:
        outcome = f"model {job['fine_tuned_model']}" if job["fine_tuned_model"] else job["error"]
        click.echo(f"{job['status']}: {outcome}" if outcome else job["status"])
    if job["status"] == "failed":
        sys.exit(1)


@finetune.command("list")
@click.option("--limit", type=click.IntRange(1, 100), default=20, show_default=True)
@base_url_option
@common
def finetune_list(limit, base_url, kb_dir, as_json):
    """Recent fine-tuning jobs, newest first."""
    from kb.finetune import jobs

    found = jobs(settings_from(kb_dir, base_url=base_url), limit)
    if as_json:
        emit_json({"jobs": found})
        return
    table = new_table("id", "status", "model", "fine_tuned_model", "created")
    for job in found:
        created = datetime.datetime.fromtimestamp(job["created_at"] or 0).isoformat(timespec="minutes")
        table.add_row(job["id"], job["status"], job["model"], job["fine_tuned_model"] or "", created)
    print_table(table)


@cli.command()
@click.argument("paths", nargs=-1)
@click.option("--changed-since", metavar="REV", default=None,
              help="Report only files changed since a git revision (the rest is still read as canon).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "sarif", "github"]), default="text",
              show_default=True)
@click.option("--termbase", "show_termbase", is_flag=True, help="Print the English-Chinese termbase as CSV.")
@click.option("--llm", is_flag=True, help="Ask the chat model to confirm each suspected contradiction.")
@common
def check(paths, changed_since, fmt, show_termbase, llm, kb_dir, as_json):
    """Lint scripts and canon for spoilers, terminology, speakers, metadata and continuity (exit 1 on errors)."""
    from kb.check import format_report, run_check, termbase
    from kb.check.config import find_config

    paths = list(paths) or ["."]
    if show_termbase:
        click.echo(termbase(paths, as_json), nl=False)
        return
    settings = settings_from(kb_dir)
    if llm and not settings.llm_configured:
        raise click.UsageError("--llm needs a chat model: set OPENAI_API_KEY or OPENAI_BASE_URL")
    report = run_check(paths, find_config(Path.cwd()), changed_since, settings if llm else None)
    click.echo(format_report(report, "json" if as_json else fmt))
    if report.errors:
        sys.exit(1)


def main():
    # kb runs numpy's products on one BLAS thread (USE's own limit, kb serve's one_blas_thread): OpenBLAS
    # started with one thread per core, and its others cost a fresh `kb search` ~0.05 s of CPU for nothing.
    # Set before numpy's first import; a value in the environment stands.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        cli()
    finally:
        # The process is ending: its last garbage collections need not walk every object chromadb, pydantic
        # and numpy left behind (~0.3 s of CPU for a `kb search`); objects are still freed and finalized.
        gc.freeze()
