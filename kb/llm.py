"""The only module that talks to the openai client: chat completions, fine-tuning files and jobs.

Any OpenAI-compatible server works (OpenAI, Ollama, vLLM, llama.cpp server):
the base URL comes from --base-url or OPENAI_BASE_URL; a local server that
needs no key gets a placeholder one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from kb.config import Settings
from kb.errors import LLMError

if TYPE_CHECKING:
    import openai

# openai is imported inside each function: it took ~0.4 s of every `kb search` process, which never calls it.


def client(settings: Settings) -> openai.OpenAI:
    """An openai client for the configured endpoint."""
    import openai

    return openai.OpenAI(api_key=settings.api_key or "not-needed", base_url=settings.base_url,
                         max_retries=1, timeout=120)


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return exc.message


def llm_error(exc: Exception, settings: Settings, service: str = "the chat model") -> LLMError:
    """One line a user can act on for a failed call to ``service`` (unreachable, bad key, refusal)."""
    import openai

    where = settings.base_url or "the OpenAI API"
    if isinstance(exc, openai.APIConnectionError):
        return LLMError(f"cannot reach {service} at {where}; check --base-url or OPENAI_BASE_URL")
    if isinstance(exc, openai.AuthenticationError):
        return LLMError(f"{where} rejected the API key; check OPENAI_API_KEY")
    if isinstance(exc, openai.APIStatusError):
        return LLMError(f"{where} answered {exc.status_code}: {_server_message(exc)}")
    return LLMError(f"{service} failed: {exc}")



def chat(messages: list[dict], settings: Settings, model: str | None = None,
         on_token: Callable[[str], None] | None = None) -> str:
    """Send messages to the chat model and return its reply; stream tokens to ``on_token`` if given.

    Raises:
        LLMError: the server cannot be reached or refuses the request.
    """
    import openai

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
        raise llm_error(exc, settings) from None


# -- fine-tuning: files and jobs (plain dicts out, so kb.finetune never sees the client) --

FINE_TUNING = "the fine-tuning API"


def upload_training_file(name: str, data: bytes, settings: Settings) -> dict:
    """Upload a JSONL file with purpose fine-tune; the server's file object.

    Raises:
        LLMError: the server cannot be reached, refuses the key, or rejects the file.
    """
    import openai

    try:
        uploaded = client(settings).files.create(file=(name, data, "application/jsonl"),
                                                 purpose="fine-tune")
    except openai.APIStatusError as exc:
        if exc.status_code in (400, 413, 415, 422):
            where = settings.base_url or "the OpenAI API"
            raise LLMError(f"{where} rejected the file {name}: {_server_message(exc)}") from None
        raise llm_error(exc, settings, FINE_TUNING) from None
    except openai.OpenAIError as exc:
        raise llm_error(exc, settings, FINE_TUNING) from None
    return uploaded.model_dump()


def _jobs_call(settings: Settings, call: Callable):
    import openai

    try:
        return call(client(settings).fine_tuning.jobs)
    except openai.OpenAIError as exc:
        raise llm_error(exc, settings, FINE_TUNING) from None


def create_fine_tune_job(settings: Settings, **params) -> dict:
    """Start a fine-tuning job (model, training_file, and optional suffix, validation_file, method)."""
    params = {key: value for key, value in params.items() if value is not None}
    return _jobs_call(settings, lambda jobs: jobs.create(**params)).model_dump()


def fine_tune_job(job_id: str, settings: Settings) -> dict:
    """One job's current state."""
    return _jobs_call(settings, lambda jobs: jobs.retrieve(job_id)).model_dump()


def fine_tune_jobs(settings: Settings, limit: int = 20) -> list[dict]:
    """The most recent jobs, newest first."""
    return [job.model_dump() for job in _jobs_call(settings, lambda jobs: jobs.list(limit=limit).data)]


def cancel_fine_tune_job(job_id: str, settings: Settings) -> dict:
    """Ask the server to stop a job; its state afterwards."""
    return _jobs_call(settings, lambda jobs: jobs.cancel(job_id)).model_dump()


def fine_tune_events(job_id: str, settings: Settings, limit: int = 100) -> list[dict]:
    """A job's most recent events, as the server lists them (newest first)."""
    return [event.model_dump() for event in
            _jobs_call(settings, lambda jobs: jobs.list_events(job_id, limit=limit).data)]
