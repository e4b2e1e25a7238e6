"""The `kb` command: thin click wiring over plain functions, rendering, exit codes.

Exit status: 0 all good; 1 something failed (the message says what and why);
2 usage error. With --json, stdout carries exactly one JSON document.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from ingest.meta import coerce
from kb.config import Settings
from kb.errors import KBError

err = Console(stderr=True)


class KBGroup(click.Group):
    """Turns a KBError anywhere below into one line on stderr and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KBError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


def common(func):
    """--kb and --json, the options every command takes."""
    func = click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")(func)
    func = click.option("--kb", "kb_dir", type=click.Path(path_type=Path), default=None,
                        help="Knowledge base directory [default: $KB_DIR or ./.kb].")(func)
    return func


def settings_from(kb_dir: Path | None, **overrides) -> Settings:
    settings = Settings()
    if kb_dir is not None:
        settings.kb_dir = kb_dir
    for key, value in overrides.items():
        if value is not None:
            setattr(settings, key, value)
    return settings


def emit_json(data) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


def parse_where(pairs: tuple[str, ...]) -> dict:
    where = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"'{pair}' is not KEY=VALUE", param_hint="--where")
        where[key.strip()] = coerce(value)
    return where


def open_store(settings: Settings):
    from kb.retrieve import Corpus
    from kb.store import Store

    store = Store(settings.kb_dir, settings.chroma_url)
    return store, Corpus.load(store)


@click.group(cls=KBGroup)
@click.version_option(package_name="lore-kb")
def cli():
    """Lore KB: your studio's canon, searchable and citable, offline by default."""


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--embed-model", default=None, help="Embedding model for a new store.")
@common
def ingest(paths, embed_model, kb_dir, as_json):
    """Add, update and remove files incrementally."""
    from kb.sync import ingest as run_ingest

    settings = settings_from(kb_dir, embed_model=embed_model)
    show_bar = not as_json and sys.stderr.isatty()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=err, transient=True, disable=not show_bar) as progress:
        task = progress.add_task("ingesting", total=None)
        report = run_ingest(list(paths), settings,
                            on_file=lambda source: progress.update(task, advance=1, description=source))
    for failure in report.failed:
        click.echo(f"error: {failure['path']}: {failure['error']}", err=True)
    if as_json:
        emit_json(report.to_json())
    else:
        table = Table("added", "updated", "unchanged", "removed", "failed", "skipped", "chunks in store")
        table.add_row(*(str(len(getattr(report, f))) for f in
                        ("added", "updated", "unchanged", "removed", "failed", "skipped")),
                      str(report.chunks))
        Console().print(table)
    if report.failed:
        sys.exit(1)


@cli.command()
@click.argument("query")
@click.option("-k", default=5, show_default=True, type=click.IntRange(1, 100))
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option("--where", multiple=True, metavar="KEY=VALUE", help="Only chunks whose metadata match.")
@common
def search(query, k, mode, where, kb_dir, as_json):
    """Show the canon chunks that best match QUERY."""
    from kb.retrieve import search as run_search

    where = parse_where(where)
    store, corpus = open_store(settings_from(kb_dir))
    hits = run_search(store, corpus, query, k=k, mode=mode, where=where)
    if as_json:
        emit_json({"query": query, "results": [h.to_json() for h in hits]})
        return
    out = Console()
    if not hits:
        out.print("No matching canon.")
    for rank, hit in enumerate(hits, start=1):
        out.print(f"[bold]{rank}. {hit.source}[/bold] · {hit.metadata.get('title', '')} "
                  f"[dim](score {hit.score:.4f})[/dim]", highlight=False)
        out.print(hit.text, markup=False, highlight=False)
        out.print()


def llm_options(func):
    func = click.option("--extractive", is_flag=True, help="Quote the canon; never call a model.")(func)
    func = click.option("--base-url", default=None, help="OpenAI-compatible server [$OPENAI_BASE_URL].")(func)
    func = click.option("--model", default=None, help="Chat model [$KB_MODEL, default gpt-4o-mini].")(func)
    func = click.option("-k", default=5, show_default=True, type=click.IntRange(1, 50))(func)
    return func


def print_answer(answer, streamed: bool) -> None:
    """The answer (unless it was streamed already), then its numbered sources."""
    if not streamed:
        click.echo(answer.answer)
    else:
        click.echo()
    for c in answer.citations:
        click.echo(f"  [{c.n}] {c.label()}")


@cli.command()
@click.argument("question")
@llm_options
@common
def ask(question, k, model, base_url, extractive, kb_dir, as_json):
    """Answer QUESTION from the canon, with [n] citations."""
    from kb.answer import respond

    settings = settings_from(kb_dir, base_url=base_url)
    store, corpus = open_store(settings)
    stream = None if as_json else (lambda t: click.echo(t, nl=False))
    answer = respond(store, corpus, question, settings, k=k, extractive=extractive, model=model,
                     on_token=stream)
    if as_json:
        emit_json(answer.to_json())
    else:
        print_answer(answer, streamed=answer.mode == "llm" and bool(answer.citations))


@cli.command()
@common
def status(kb_dir, as_json):
    """Files, chunks, embedding model, store size and last ingest."""
    from kb.store import Store

    settings = settings_from(kb_dir)
    store = Store(settings.kb_dir, settings.chroma_url)
    records = store.files().values()
    last = store.last_ingest()
    data = {
        "kb": settings.chroma_url or str(settings.kb_dir),
        "files": sum(1 for r in records if r.kind == "canon"),
        "cards": sum(1 for r in records if r.kind == "card"),
        "chunks": store.count(),
        "model": store.model,
        "store_bytes": store.size_bytes(),
        "last_ingest": datetime.datetime.fromtimestamp(last).isoformat(timespec="seconds") if last else None,
    }
    if as_json:
        emit_json(data)
        return
    table = Table(show_header=False)
    for key, value in data.items():
        table.add_row(key, str(value))
    Console().print(table)


@cli.command()
@click.argument("paths", nargs=-1, required=True)
@common
def forget(paths, kb_dir, as_json):
    """Remove files (or everything under folders) from the store."""
    from kb.sync import forget as run_forget

    removed = run_forget(list(paths), settings_from(kb_dir))
    if as_json:
        emit_json({"removed": removed})
    else:
        click.echo(f"removed {len(removed)} file(s)" + "".join(f"\n  {r}" for r in removed))


@cli.command("eval")
@click.argument("qa_file", type=click.Path(dir_okay=False))
@click.option("--mode", type=click.Choice(["hybrid", "dense", "bm25"]), default="hybrid", show_default=True)
@click.option("--compare", is_flag=True, help="Every mode side by side.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="With --compare: recall@k curves to a PNG.")
@common
def eval_cmd(qa_file, mode, compare, plot, kb_dir, as_json):
    """Measure retrieval on a QA.jsonl question set."""
    from kb.evaluate import read_questions, recall_curve, run_questions, summarize
    from kb.retrieve import MODES

    questions = read_questions(qa_file)
    store, corpus = open_store(settings_from(kb_dir))
    modes = MODES if compare else (mode,)
    runs = {m: run_questions(store, corpus, questions, m) for m in modes}
    results = {m: summarize(per_q) for m, per_q in runs.items()}
    if plot:
        from kb.plot import plot_recall

        plot_recall({m: recall_curve(per_q) for m, per_q in runs.items()}, plot, Path(qa_file).parent.name)
    if as_json:
        emit_json(results if compare else results[mode])
        return
    metrics = list(next(iter(results.values())))
    table = Table("mode", *metrics)
    for m, figures in results.items():
        table.add_row(m, *(str(figures[x]) for x in metrics))
    Console().print(table)


@cli.group()
def npc():
    """NPCs that answer in character from only what they may know."""


@npc.command("list")
@common
def npc_list(kb_dir, as_json):
    """The NPC cards in the store."""
    from kb.npc import cards
    from kb.store import Store

    settings = settings_from(kb_dir)
    found = cards(Store(settings.kb_dir, settings.chroma_url))
    if as_json:
        emit_json({"npcs": list(found.values())})
        return
    table = Table("name", "role", "speaker", "knows")
    for card in found.values():
        table.add_row(card["name"], card["role"], card["speaker"], json.dumps(card["knows"]) if card["knows"] else "everything")
    Console().print(table)


@npc.command("show")
@click.argument("name")
@common
def npc_show(name, kb_dir, as_json):
    """One NPC's card and the lines that set their voice."""
    from kb.npc import find_card, voice_lines

    store, corpus = open_store(settings_from(kb_dir))
    card = find_card(store, name)
    card = {**card, "voice": voice_lines(corpus, card)}
    if as_json:
        emit_json(card)
        return
    for key, value in card.items():
        click.echo(f"{key}: {json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value}")


@npc.command("ask")
@click.argument("name")
@click.argument("question")
@llm_options
@common
def npc_ask(name, question, k, model, base_url, extractive, kb_dir, as_json):
    """Ask NAME a QUESTION; they answer in character from the canon they may know."""
    from kb.npc import ask_npc

    settings = settings_from(kb_dir, base_url=base_url)
    store, corpus = open_store(settings)
    stream = None if as_json else (lambda t: click.echo(t, nl=False))
    answer = ask_npc(store, corpus, name, question, settings, k=k, extractive=extractive,
                     model=model, on_token=stream)
    if as_json:
        emit_json(answer.to_json())
    else:
        print_answer(answer, streamed=answer.mode == "llm" and bool(answer.citations))


def main():
    cli()
