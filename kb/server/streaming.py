"""OpenAI's chat completion shapes: the whole reply, or Server-Sent Events fed by a worker thread."""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
from pathlib import Path
from typing import Callable

from ingest.tokens import count_tokens
from kb.answer import Answer
from kb.errors import KBError
from kb.server.errors import redact

log = logging.getLogger("kb.server")
_PIECE = re.compile(r"\S+\s*|\s+")


def usage(question: str, answer: str) -> dict:
    prompt, completion = count_tokens(question), count_tokens(answer)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def completion(base: dict, question: str, answer: Answer) -> dict:
    """A non-streamed chat completion, with our citations beside the message."""
    citations = [c.to_json() for c in answer.citations]
    return {**base, "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer.answer, "citations": citations}}],
            "usage": usage(question, answer.answer), "citations": citations, "mode": answer.mode}


def _chunk(base: dict, delta: dict, finish: str | None = None, **extra) -> str:
    event = {**base, "object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


def start(run: Callable[[Callable[[str], None]], Answer]) -> tuple[tuple, queue.Queue]:
    """Run ``run(on_token)`` in a thread; its first event (raised here if it is an error) and the queue."""
    events: queue.Queue = queue.Queue()

    def work():
        try:
            events.put(("done", run(lambda token: events.put(("token", token)))))
        except Exception as exc:  # reported in the stream (or as a status, if nothing was sent)
            events.put(("error", exc))

    threading.Thread(target=work, name="kb-chat-stream", daemon=True).start()
    first = events.get()
    if first[0] == "error":
        raise first[1]
    return first, events


def last_events(base: dict, answer: Answer, streamed: bool, question: str, include_usage: bool):
    """The events after the model's last token: an answer not streamed (extractive, or nothing
    relevant) a word at a time, then the citations, the usage if asked, and [DONE].

    The caller sends them in two writes, not one per word: each item a response iterates
    costs a hop to a worker thread.
    """
    if not streamed:
        for piece in _PIECE.findall(answer.answer):
            yield _chunk(base, {"content": piece})
    citations = [c.to_json() for c in answer.citations]
    yield _chunk(base, {}, "stop", citations=citations, mode=answer.mode)
    if include_usage:
        final = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage(question, answer.answer)}
        yield f"data: {json.dumps(final)}\n\n"
    yield "data: [DONE]\n\n"


def sse_events(base: dict, first: tuple, events: queue.Queue | None, question: str, include_usage: bool,
               private: list[Path]):
    """SSE in the OpenAI chunk shape: role, content deltas, a last chunk with citations, [DONE];
    an error after the first token is the last event, its message without the ``private`` paths."""
    head = _chunk(base, {"role": "assistant", "content": ""})  # sent with what comes first, in one write
    streamed = False
    item = first
    while True:
        kind, value = item
        if kind == "token":
            streamed = True
            yield head + _chunk(base, {"content": value})
        elif kind == "error":
            log.error("chat stream failed: %s", value)
            message = redact(str(value), private) if isinstance(value, KBError) else "internal error"
            yield head + f"data: {json.dumps({'error': {'message': message, 'type': 'server_error'}})}\n\n"
            return
        else:
            last = last_events(base, value, streamed, question, include_usage)
            yield head + next(last)  # the first word on its own, so the player sees it at once
            yield "".join(last)
            return
        head = ""
        item = events.get()
