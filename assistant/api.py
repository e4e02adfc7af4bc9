"""The public JSON API, for readers and their programs: POST /ask, GET /documents,
GET /documents/{doc_id}[.json], GET /health, POST /feedback and DELETE /feedback/{id}.

Thin: each route is a call into the Assistant (or the feedback store). Errors, middleware and
the lazily opened Assistant live in http_base; the app is assembled in app.
"""
from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from . import pages
from .config import Settings
from .errors import DocumentNotFoundError
from .http_base import (
    BODY_HINTS,
    DEFAULTS,
    ApiError,
    AssistantHolder,
    article_url,
    err_doc,
    plausible_id,
    root_of,
    with_urls,
)
from .models import ArticleView, AskResponse, DocumentInfo, FeedbackDeleted, FeedbackIn, FeedbackOut, Health
from .owner_log import OwnerLog, OwnerLogError

log = logging.getLogger(__name__)

EXAMPLE_QUESTION = "What is mesotherapy?"
_err = err_doc
_DEFAULTS = DEFAULTS


# --- request / response models ---------------------------------------------------------------

class AskRequest(BaseModel):
    """A question, with the earlier questions of the conversation for context."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"question": EXAMPLE_QUESTION},
                {"question": "How long is the recovery?", "history": ["What is microneedling?"], "top_k": 3},
            ]
        },
    )

    question: StrictStr = Field(
        description="The question, in plain words.",
        json_schema_extra={"minLength": 1, "maxLength": _DEFAULTS.max_question_chars},
    )
    history: list[StrictStr] | None = Field(
        default=None,
        description=(
            "The earlier questions of this conversation, oldest first (not the answers). "
            "They let a follow-up like 'and how long does it last?' be understood."
        ),
        json_schema_extra={"maxItems": _DEFAULTS.max_history},
    )
    top_k: StrictInt = Field(
        default=3,
        ge=1,
        le=_DEFAULTS.max_top_k,
        description="How many answer passages to return at most.",
    )

    @field_validator("question")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("The question is empty: type a question about the articles.")
        return v


class DocumentSummary(DocumentInfo):
    url: str = Field(description="Link to the article view.")


BODY_HINTS["/feedback"] = (
    "question, history, resolved_question, doc_id, start, end, highlight, helpful",
    '{"question": "What is PRP?", "doc_id": "prp", "start": 0, "end": 120, "helpful": true}',
)


def _check_limits(body: AskRequest, s: Settings) -> None:
    """Limits from the assistant's settings (the schema shows the defaults)."""
    problems: list[dict] = []
    n = len(body.question)
    if n > s.max_question_chars:
        problems.append({"field": "question", "message": (
            f"The question is {n:,} characters long; the limit is {s.max_question_chars:,}. Shorten it.")})
    history = body.history or []
    if len(history) > s.max_history:
        problems.append({"field": "history", "message": (
            f"\"history\" has {len(history)} questions; at most {s.max_history} are accepted. "
            f"Send the {s.max_history} most recent, oldest first.")})
    for i, h in enumerate(history):
        if len(h) > s.max_question_chars:
            problems.append({"field": f"history.{i}", "message": (
                f"history item {i} is {len(h):,} characters long; the limit is {s.max_question_chars:,}.")})
            break
    if body.top_k > s.max_top_k:
        problems.append({"field": "top_k", "message": f"\"top_k\" must be a whole number from 1 to {s.max_top_k}."})
    if problems:
        message = problems[0]["message"] if len(problems) == 1 else (
            f"{len(problems)} problems with the request: " + " ".join(p["message"] for p in problems))
        raise ApiError(422, message, problems)


def install(app: FastAPI, holder: AssistantHolder, owner: OwnerLog) -> None:
    """Add the public routes to the app."""

    @app.post(
        "/ask",
        response_model=AskResponse,
        tags=["ask"],
        summary="Ask a question",
        description=(
            "Returns up to `top_k` passages quoted from the articles, each with the answering "
            "sentence(s) as `highlight` offsets inside `text`, the article it comes from (`source`, "
            "with `url` linking to the article view at the passage) and other articles holding the "
            "same passage (`also_in`). When the articles do not answer, `abstained` is true and "
            "`message` says so. For comparisons, each answer's `about` names its subject. "
            "Send the earlier questions of the conversation as `history` for follow-ups."
        ),
        responses={
            400: _err("The body is not valid JSON."),
            413: _err("The body is larger than 64 KiB."),
            415: _err("The body was not sent as JSON (Content-Type: application/json)."),
            422: _err("The question is missing, empty or too long, a field has the wrong type, "
                      "or there are more than 20 history items."),
            503: _err("No index has been built yet (the message says how to build one), or the database "
                      "holding the index is unreachable."),
        },
    )
    def ask(body: AskRequest, request: Request) -> AskResponse:
        ast = holder.get()
        _check_limits(body, ast.settings)
        capture = owner.capture() if owner.logging_questions else None
        resp = ast.ask(body.question, history=body.history or [], top_k=body.top_k, capture=capture)
        if capture is not None:
            owner.record(resp, capture.vector)  # queued: never blocks or fails the answer
        return with_urls(resp, root_of(request))

    @app.get(
        "/documents",
        response_model=list[DocumentSummary],
        tags=["documents"],
        summary="List the indexed articles",
        responses={503: _err("No index has been built yet.")},
    )
    def documents(request: Request) -> list[DocumentSummary]:
        root = root_of(request)
        return [
            DocumentSummary(**d.model_dump(), url=article_url(root, d.doc_id))
            for d in holder.get().documents()
        ]

    @app.get(
        "/documents/{doc_id:path}",
        response_model=ArticleView,
        tags=["documents"],
        summary="Read an article",
        description=(
            "The article's clean text (the text that answer offsets point into). Browsers get an "
            "HTML page with the passage `start`..`end` highlighted and scrolled into view; "
            "`/documents/{doc_id}.json` or `Accept: application/json` gives JSON. "
            "`doc_id` may contain `/` (articles in subfolders)."
        ),
        responses={
            200: {"content": {"text/html": {}}, "description": "The article as JSON (ArticleView) or as an HTML page."},
            404: _err("No indexed article has that id."),
            422: _err("`start` or `end` is not a whole number."),
            503: _err("No index has been built yet."),
        },
    )
    def document(
        doc_id: str,
        request: Request,
        start: Annotated[int | None, Query(ge=0, description="Start of the passage to highlight.")] = None,
        end: Annotated[int | None, Query(ge=0, description="End of the passage to highlight (exclusive).")] = None,
    ) -> Any:
        as_json = False
        if doc_id.endswith(".json"):
            doc_id, as_json = doc_id[: -len(".json")], True
        else:
            accept = request.headers.get("accept", "")
            as_json = "application/json" in accept and "text/html" not in accept
        if not plausible_id(doc_id):
            raise DocumentNotFoundError(f"No article with id {doc_id!r}. GET /documents lists them.")
        view = holder.get().document(doc_id)
        if as_json:
            return view
        return pages.render_article(request, view, start, end)

    @app.get(
        "/health",
        response_model=Health,
        tags=["service"],
        summary="Health of the service",
        description="Whether an index is loaded, how many articles and passages it holds, the model and "
                    "when the index was built. Answers 503 (with the same body) while there is no index.",
        responses={503: {"model": Health, "description": "No index is loaded yet."}},
    )
    def health() -> Any:
        h = holder.get().health()
        if not h.index_loaded:
            return JSONResponse(h.model_dump(), status_code=503)
        return h

    @app.post(
        "/feedback",
        response_model=FeedbackOut,
        status_code=201,
        tags=["ask"],
        summary="Say whether an answer helped",
        description=(
            "A reader's verdict on one answer card: the question and its history, the answer's article "
            "and offsets, and `helpful`. Nothing identifying the reader is stored. Returns an `id`: "
            "`DELETE /feedback/{id}` takes the verdict back (undo)."
        ),
        responses={
            400: _err("The body is not valid JSON."),
            413: _err("The body is larger than 64 KiB."),
            415: _err("The body was not sent as JSON."),
            422: _err("A field is missing, of the wrong type or too long."),
            503: _err("The feedback store cannot be written."),
        },
    )
    def feedback(body: FeedbackIn) -> FeedbackOut:
        try:
            return FeedbackOut(id=owner.add_feedback(body))
        except OwnerLogError as e:
            raise ApiError(503, str(e)) from None

    @app.delete(
        "/feedback/{feedback_id}",
        response_model=FeedbackDeleted,
        tags=["ask"],
        summary="Take feedback back (undo)",
        responses={404: _err("No feedback with that id (or it was already taken back)."),
                   503: _err("The feedback store cannot be opened.")},
    )
    def undo_feedback(feedback_id: str) -> FeedbackDeleted:
        try:
            deleted = owner.delete_feedback(feedback_id)
        except OwnerLogError as e:
            raise ApiError(503, str(e)) from None
        if not deleted:
            raise ApiError(404, f"No feedback with id {feedback_id!r}; it may have been taken back already.")
        return FeedbackDeleted(id=feedback_id)
