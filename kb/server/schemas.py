"""Request and response bodies of the HTTP API, validated by pydantic and shown in /openapi.json."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_QUESTION_CHARS = 4000
MAX_MESSAGES = 200
MAX_ANSWER_K = 50             # as `kb ask -k`
MAX_SEARCH_K = 100            # as `kb search -k`

Question = Field(min_length=1, max_length=MAX_QUESTION_CHARS)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Question
    k: int = Field(5, ge=1, le=MAX_SEARCH_K)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    where: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=20,
                                                       description="Only chunks whose metadata match.")


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Question
    k: int = Field(5, ge=1, le=MAX_ANSWER_K)
    extractive: bool = Field(False, description="Quote the canon; never call the chat model.")


GAME_STATE_HELP = ('The player\'s game state, e.g. {"chapter": 2, "region": "Saltreach", "flags": {"met_sefa": true}}; '
                   "it can only narrow what an NPC's card allows.")
GameState = Field(None, description=GAME_STATE_HELP)


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_QUESTION_CHARS)


class NpcAskRequest(AskRequest):
    """`/npc/{name}/ask`: a question and optionally the conversation before it (``history``), or the
    whole conversation as ``messages`` (its last user message is the question); and the game state."""

    question: str | None = Field(None, min_length=1, max_length=MAX_QUESTION_CHARS)
    history: list[Turn] | None = Field(None, max_length=MAX_MESSAGES,
                                       description="The conversation before the question, oldest first.")
    messages: list[Turn] | None = Field(None, max_length=MAX_MESSAGES,
                                        description="The whole conversation, the question last (instead of question and history).")
    state: dict | None = GameState


class IngestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    paths: list[str] = Field(min_length=1, max_length=100,
                             description="Files or folders on the server, under its --root folders.")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = Field(max_length=32)
    content: str | list[dict] | None = None


class ChatRequest(BaseModel):
    """An OpenAI chat request; sampling options are accepted and ignored."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(max_length=200, description="`kb` or `npc:<Name>` (see GET /v1/models).")
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    stream: bool = False
    stream_options: dict | None = None
    k: int = Field(5, ge=1, le=MAX_ANSWER_K, description="Canon chunks to retrieve (extension).")
    state: dict | None = GameState


class Citation(BaseModel):
    n: int
    source: str
    id: str
    text: str
    line_ids: list[str] | None = Field(None, description="Ids of the recorded lines (Yarn #line:, Ink "
                                                          "tags, loc keys), to play the voice line.")


class AnswerResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    answer: str
    citations: list[Citation]
    mode: Literal["llm", "extractive"]
    npc: str | None = None


class Hit(BaseModel):
    id: str
    text: str
    score: float
    source: str
    metadata: dict


class SearchResponse(BaseModel):
    query: str
    results: list[Hit]


class IngestResponse(BaseModel):
    added: list[str]
    updated: list[str]
    unchanged: list[str]
    removed: list[str]
    failed: list[dict]
    skipped: list[dict]
    chunks: int
