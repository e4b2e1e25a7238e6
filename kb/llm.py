"""The only module that talks to the openai client: chat completions, streamed or not.

Any OpenAI-compatible server works (OpenAI, Ollama, vLLM, llama.cpp server):
the base URL comes from --base-url or OPENAI_BASE_URL; a local server that
needs no key gets a placeholder one.
"""

from __future__ import annotations

from typing import Callable

import openai

from kb.config import Settings
from kb.errors import LLMError


def client(settings: Settings) -> openai.OpenAI:
    """An openai client for the configured endpoint."""
    return openai.OpenAI(api_key=settings.api_key or "not-needed", base_url=settings.base_url,
                         max_retries=1, timeout=120)


def _llm_error(exc: Exception, settings: Settings) -> LLMError:
    where = settings.base_url or "the OpenAI API"
    if isinstance(exc, openai.APIConnectionError):
        return LLMError(f"cannot reach the chat model at {where}; check --base-url or OPENAI_BASE_URL")
    if isinstance(exc, openai.AuthenticationError):
        return LLMError(f"{where} rejected the API key; check OPENAI_API_KEY")
    if isinstance(exc, openai.APIStatusError):
        return LLMError(f"{where} answered {exc.status_code}: {exc.message}")
    return LLMError(f"chat model failed: {exc}")


def chat(messages: list[dict], settings: Settings, model: str | None = None,
         on_token: Callable[[str], None] | None = None) -> str:
    """Send messages to the chat model and return its reply; stream tokens to ``on_token`` if given.

    Raises:
        LLMError: the server cannot be reached or refuses the request.
    """
    model = model or settings.model
    try:
        if on_token is None:
            reply = client(settings).chat.completions.create(model=model, messages=messages)
            return reply.choices[0].message.content or ""
        parts = []
        stream = client(settings).chat.completions.create(model=model, messages=messages, stream=True)
        for event in stream:
            if event.choices and event.choices[0].delta.content:
                parts.append(event.choices[0].delta.content)
                on_token(parts[-1])
        return "".join(parts)
    except openai.OpenAIError as exc:
        raise _llm_error(exc, settings) from None
