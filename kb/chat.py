"""`kb npc chat`: a conversation with one NPC in the terminal, a line at a time.

Reads lines from any text stream (a terminal, or a pipe, so a test can feed
it), keeps the conversation for follow-ups, and takes commands:
`/state KEY=VALUE ...` sets game state (a state the card does not allow is
refused and the old one kept), `/state` shows it, `/reset` forgets the
conversation, `/quit` ends.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TextIO

from rich.console import Console
from rich.markup import escape

from kb.errors import KBError
from kb.gamestate import FLAGS, card_visibility, state_from_pairs

if TYPE_CHECKING:
    from kb.api import NPC

HELP = "/state KEY=VALUE sets game state (chapter=2, region=Saltreach, flag=met_sefa); /state shows it; " \
       "/reset forgets the conversation; /quit ends"


def merged_state(state: dict, pairs: list[str]) -> dict:
    """``state`` with ``pairs`` (KEY=VALUE) applied on top; flags are added to, not replaced."""
    update = state_from_pairs(pairs)
    flags = {**state.get(FLAGS, {}), **update.pop(FLAGS, {})}
    merged = {**state, **update}
    if flags:
        merged[FLAGS] = flags
    return merged


def chat_loop(character: "NPC", state: dict, lines: TextIO, console: Console, **ask_options) -> None:
    """Answer each line as ``character`` until /quit or the end of input.

    Raises:
        StateBeyondCard: the starting state asks for more than the card allows.
    """
    card_visibility(character.card, state)  # refuse a bad starting state at once
    history: list[dict] = []
    console.print(f"[bold]{escape(character.name)}[/bold], {escape(character.card.role)}. {HELP}",
                  highlight=False)
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/reset":
            history.clear()
            console.print("[dim](conversation forgotten)[/dim]")
            continue
        if line == "/state" or line.startswith("/state "):
            pairs = line.split()[1:]
            try:
                if pairs:
                    candidate = merged_state(state, pairs)
                    card_visibility(character.card, candidate)
                    state = candidate
            except KBError as exc:
                console.print(f"[red]refused:[/red] {escape(str(exc))}", highlight=False)
            console.print(f"state: {escape(json.dumps(state, ensure_ascii=False))}", highlight=False)
            continue
        if line.startswith("/"):
            console.print(HELP, highlight=False)
            continue
        try:
            answer = character.ask(line, history=history, state=state, **ask_options)
        except KBError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            continue
        console.print(f"[bold]{escape(character.name)}:[/bold] {escape(answer.answer)}", highlight=False)
        for c in answer.citations:
            ids = f" (lines {', '.join(c.line_ids)})" if c.line_ids else ""
            console.print(f"  [dim][{c.n}] {escape(c.label())}{escape(ids)}[/dim]", highlight=False)
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": answer.answer}]
