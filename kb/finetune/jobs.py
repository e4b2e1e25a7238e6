"""Submit, follow, list and cancel fine-tuning jobs through kb.llm, the only module that talks to the openai client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from kb import llm
from kb.config import Settings
from kb.errors import KBError
from kb.finetune.check import check_file
from kb.finetune.prices import load_prices

SUFFIX_MAX = 40
TERMINAL_STATES = ("succeeded", "failed", "cancelled")


def require_api(settings: Settings) -> None:
    """Fail before any request when there is neither a key nor a server to talk to.

    Raises:
        KBError: no OPENAI_API_KEY and no base URL.
    """
    if not settings.api_key and not settings.base_url:
        raise KBError("no API key: set OPENAI_API_KEY, or point --base-url (OPENAI_BASE_URL) "
                      "at an OpenAI-compatible server")


def job_summary(job: dict) -> dict:
    """The fields of a job a writer acts on."""
    error = job.get("error") or {}
    return {key: job.get(key) for key in ("id", "status", "model", "fine_tuned_model", "created_at",
                                          "finished_at", "trained_tokens", "training_file",
                                          "validation_file")} | {
        "error": error.get("message") if isinstance(error, dict) else str(error) or None}


def event_summary(event: dict) -> dict:
    return {key: event.get(key) for key in ("id", "created_at", "level", "message")}


def _refuse_unfit(path: Path, model: str, prices: dict, training: bool) -> None:
    report = check_file(path, model if model in prices["models"] else None, prices=prices, training=training)
    if report.errors:
        first = "; ".join(str(p) for p in report.errors[:3])
        raise KBError(f"{path} is not fit to upload ({len(report.errors)} error(s): {first}); "
                      f"run `kb finetune check {path}` for the full list")


def submit(path: Path | str, model: str, settings: Settings, suffix: str | None = None,
           epochs: int | None = None, validation: Path | str | None = None,
           prices: dict | None = None) -> dict:
    """Check, upload and start a fine-tuning job; the job's summary.

    Raises:
        KBError: a bad suffix, no key, a file unfit to upload (checked locally first).
        LLMError: the server cannot be reached or rejects the file or the job.
    """
    if suffix is not None and not 0 < len(suffix) <= SUFFIX_MAX:
        raise KBError(f"--suffix must be 1 to {SUFFIX_MAX} characters, not {len(suffix)}")
    require_api(settings)
    prices = prices or load_prices()
    files = [Path(path)] + ([Path(validation)] if validation else [])
    for file in files:
        _refuse_unfit(file, model, prices, training=file is files[0])
    uploaded = [llm.upload_training_file(file.name, file.read_bytes(), settings)["id"] for file in files]
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs}}} if epochs else None
    job = llm.create_fine_tune_job(settings, model=model, training_file=uploaded[0],
                                   validation_file=uploaded[1] if validation else None,
                                   suffix=suffix, method=method)
    return job_summary(job)


def status(job_id: str, settings: Settings) -> dict:
    require_api(settings)
    return job_summary(llm.fine_tune_job(job_id, settings))


def jobs(settings: Settings, limit: int = 20) -> list[dict]:
    require_api(settings)
    return [job_summary(job) for job in llm.fine_tune_jobs(settings, limit)]


def cancel(job_id: str, settings: Settings) -> dict:
    require_api(settings)
    return job_summary(llm.cancel_fine_tune_job(job_id, settings))


def follow(job_id: str, settings: Settings, on_event: Callable[[dict], None] | None = None,
           interval: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> tuple[dict, list[dict]]:
    """Stream a job's events, oldest first, until it succeeds, fails or is cancelled.

    Returns the final job summary and every event seen.
    """
    require_api(settings)
    seen: set[str] = set()
    events: list[dict] = []
    while True:
        job = llm.fine_tune_job(job_id, settings)  # state first, so the events read after it are as new
        listed = llm.fine_tune_events(job_id, settings)
        for event in sorted(reversed(listed), key=lambda e: e.get("created_at") or 0):
            if event.get("id") in seen:
                continue
            seen.add(event.get("id"))
            events.append(event_summary(event))
            if on_event:
                on_event(events[-1])
        if job.get("status") in TERMINAL_STATES:
            return job_summary(job), events
        sleep(interval)
