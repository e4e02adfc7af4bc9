"""The HTTP API: a thin FastAPI layer over the Assistant.

Routes: POST /ask, GET /documents, GET /documents/{doc_id}[.json], GET /health, and the chat
page (assistant/pages.py). Every error, whatever raised it, leaves as one JSON shape:

    {"error": {"status": 422, "message": "<what went wrong and what to do>", "details": [...]}}

(`details` lists one {"field", "message"} per problem for validation errors; it is empty otherwise.)
Browsers asking for HTML get the same message on an HTML error page instead.

No work happens at import time. `create_app()` builds the app; the Assistant is opened lazily
(and warmed up when the server starts). `app_factory()` builds it from the environment for
`uvicorn.run("assistant.api:app_factory", factory=True, workers=N)`.
"""
from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import Settings
from .errors import (
    AssistantError,
    DocumentNotFoundError,
    InvalidQuestionError,
    NotIndexedError,
    ReindexBusyError,
    UnsupportedFileError,
)
from .models import ArticleView, AskResponse, DocumentInfo, Health

if TYPE_CHECKING:  # importing the core pulls in numpy/faiss: keep it out of import time
    from .assistant import Assistant

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
_DEFAULTS = Settings()
EXAMPLE_QUESTION = "What is mesotherapy?"


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


class ErrorItem(BaseModel):
    field: str | None = Field(default=None, description="Where the problem is, e.g. `question` or `history.2`.")
    message: str


class ErrorBody(BaseModel):
    status: int = Field(description="The HTTP status code, repeated for convenience.")
    message: str = Field(description="What went wrong and what to do about it, for a person to read.")
    details: list[ErrorItem] = Field(default_factory=list, description="One entry per problem, for validation errors.")


class ErrorResponse(BaseModel):
    """The one shape of every error response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "status": 422,
                        "message": "question: The question is empty: type a question about the articles.",
                        "details": [
                            {"field": "question", "message": "The question is empty: type a question about the articles."}
                        ],
                    }
                }
            ]
        }
    )

    error: ErrorBody


class DocumentSummary(DocumentInfo):
    url: str = Field(description="Link to the article view.")


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


# --- errors ----------------------------------------------------------------------------------

class ApiError(Exception):
    """Raised by route code for a 4xx/5xx that is not one of the core's errors."""

    def __init__(self, status: int, message: str, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


def error_payload(status: int, message: str, details: list[dict] | None = None) -> dict:
    return {"error": {"status": status, "message": message, "details": details or []}}


def error_response(status: int, message: str, details: list[dict] | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_payload(status, message, details), status_code=status, headers=headers)


def wants_html(request: Request) -> bool:
    """A browser navigating to a page (not an API client, not a `.json` URL, not POST /ask)."""
    if request.method not in ("GET", "HEAD") or request.url.path.endswith(".json"):
        return False
    return "text/html" in request.headers.get("accept", "")


def _respond_error(request: Request, status: int, message: str, details: list[dict] | None = None,
                   headers: dict | None = None) -> Response:
    if wants_html(request):
        from . import pages

        return pages.render_error(request, status, message, headers=headers)
    return error_response(status, message, details, headers=headers)


_CORE_STATUS: list[tuple[type[AssistantError], int]] = [
    (NotIndexedError, 503),
    (InvalidQuestionError, 422),
    (DocumentNotFoundError, 404),
    (ReindexBusyError, 409),
    (UnsupportedFileError, 415),
]


def core_status(exc: AssistantError) -> int:
    for cls, status in _CORE_STATUS:
        if isinstance(exc, cls):
            return status
    return 400


_FIELDS = "question, history, top_k"
_BODY_EXAMPLE = '{"question": "What is mesotherapy?"}'


def _field_name(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def _describe(e: dict) -> tuple[str | None, str]:
    """A pydantic error as (field, a sentence a person can act on)."""
    typ = e.get("type", "")
    field = _field_name(tuple(e.get("loc", ())))
    ctx = e.get("ctx") or {}
    if typ == "json_invalid":
        where = ""
        loc = e.get("loc", ())
        if len(loc) > 1 and isinstance(loc[1], int):
            where = f" near character {loc[1]}"
        reason = ctx.get("error")
        return None, (
            f"The request body is not valid JSON{where}"
            f"{f' ({reason})' if reason else ''}. Send a JSON object like {_BODY_EXAMPLE}."
        )
    if field is None:
        if typ == "missing":
            return None, f"The request needs a JSON body like {_BODY_EXAMPLE}."
        return None, f"The request body must be a JSON object like {_BODY_EXAMPLE}."
    if typ == "missing":
        if field == "question":
            return field, "A \"question\" is required: the text you want answered."
        return field, f"\"{field}\" is required."
    if typ == "extra_forbidden":
        return field, f"Unknown field \"{field}\". The fields are: {_FIELDS}."
    if typ == "value_error":
        msg = str(e.get("msg", ""))
        return field, msg.removeprefix("Value error, ")
    if field == "question" and typ == "string_type":
        return field, f"\"question\" must be a string (text), not {_json_kind(e.get('input'))}."
    if field.startswith("history.") and typ == "string_type":
        item = field.split(".", 1)[1]
        return field, (f"Each item of \"history\" must be an earlier question (a string); "
                       f"item {item} is {_json_kind(e.get('input'))}.")
    if field == "history" and typ == "list_type":
        return field, "\"history\" must be a list of the earlier questions (strings), oldest first."
    if field == "top_k":
        return field, f"\"top_k\" must be a whole number from 1 to {_DEFAULTS.max_top_k}."
    if field in ("start", "end"):
        return field, f"\"{field}\" must be a character offset: a whole number, 0 or more."
    return field, f"\"{field}\": {e.get('msg', 'invalid value')}."


def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return "that value"


def _validation_message(items: list[tuple[str | None, str]]) -> str:
    def one(field: str | None, msg: str) -> str:
        named = field is None or field.split(".")[0].lower() in msg.lower()
        return msg if named else f"{field}: {msg}"

    if len(items) == 1:
        return one(*items[0])
    return f"{len(items)} problems with the request: " + " ".join(one(f, m) for f, m in items)


async def _on_validation_error(request: Request, exc: RequestValidationError) -> Response:
    errors = list(exc.errors())
    status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
    ctype = request.headers.get("content-type", "")
    body_errors = [e for e in errors if tuple(e.get("loc", ()))[:1] == ("body",)]
    only_missing = all(e.get("type") == "missing" and len(e.get("loc", ())) == 1 for e in body_errors)
    if request.method == "POST" and body_errors and "json" not in ctype.lower() and (ctype or not only_missing):
        said = f"not {ctype!r}" if ctype else "it had none"
        message = (f"Send the body as JSON with the header Content-Type: application/json "
                   f"({said}). For example: {_BODY_EXAMPLE}")
        return _respond_error(request, 415, message)
    items = [_describe(e) for e in errors]
    # one problem per field is enough to act on
    seen: set = set()
    unique = []
    for f, m in items:
        if (f, m) not in seen:
            seen.add((f, m))
            unique.append((f, m))
    details = [{"field": f, "message": m} for f, m in unique]
    return _respond_error(request, status, _validation_message(unique), details)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) else None
    if status == 404 and (detail is None or detail == "Not Found"):
        message = f"Nothing at {request.url.path}. The chat page is at /, the API is described at /docs."
    elif status == 405:
        allowed = (exc.headers or {}).get("Allow") or (exc.headers or {}).get("allow")
        message = f"{request.method} is not allowed on {request.url.path}" + (f"; use {allowed}." if allowed else ".")
    else:
        message = detail or "The request could not be handled."
    return _respond_error(request, status, message, headers=exc.headers)


async def _on_assistant_error(request: Request, exc: AssistantError) -> Response:
    status = core_status(exc)
    field = "question" if isinstance(exc, InvalidQuestionError) else None
    details = [{"field": field, "message": str(exc)}] if status == 422 else []
    return _respond_error(request, status, str(exc), details)


async def _on_api_error(request: Request, exc: ApiError) -> Response:
    return _respond_error(request, exc.status, exc.message, exc.details)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "Something went wrong on the server. The error was logged; please try again.")


# --- request body limit ----------------------------------------------------------------------

class BodyLimitMiddleware:
    """Refuse bodies over `max_bytes` with 413: by Content-Length, and by the bytes actually sent.

    The body is read before the app runs (it is small by construction), so a chunked upload
    without Content-Length is refused as soon as it passes the limit.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> JSONResponse:
        return error_response(
            413,
            f"The request body is larger than {self.max_bytes // 1024} KiB. Send a shorter question and history.",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        raw_length = headers.get(b"content-length")
        if raw_length is not None:
            try:
                length = int(raw_length)
                if length < 0:
                    raise ValueError
            except ValueError:
                await error_response(400, "The Content-Length header is not a number.")(scope, receive, send)
                return
            if length > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large()(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class SecurityHeadersMiddleware:
    """nosniff everywhere; a strict Content-Security-Policy on our own HTML pages (not /docs)."""

    CSP = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        docs = path in ("/docs", "/redoc") or path.startswith("/docs/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                hdrs = list(message.get("headers") or [])
                names = {k.lower() for k, _ in hdrs}
                if b"x-content-type-options" not in names:
                    hdrs.append((b"x-content-type-options", b"nosniff"))
                if b"referrer-policy" not in names:
                    hdrs.append((b"referrer-policy", b"same-origin"))
                ctype = next((v for k, v in hdrs if k.lower() == b"content-type"), b"")
                if ctype.startswith(b"text/html") and not docs and b"content-security-policy" not in names:
                    hdrs.append((b"content-security-policy", self.CSP.encode()))
                message = {**message, "headers": hdrs}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- the assistant, opened lazily ------------------------------------------------------------

class AssistantHolder:
    """Opens the Assistant on first use (once, under a lock) and hands out the same object."""

    def __init__(self, settings: Settings, assistant: "Assistant | None" = None) -> None:
        self.settings = settings
        self._assistant = assistant
        self._lock = threading.Lock()

    def get(self) -> "Assistant":
        a = self._assistant
        if a is not None:
            return a
        with self._lock:
            if self._assistant is None:
                from .assistant import Assistant

                # require_index=False: the server starts without an index and picks one up
                # when it appears; until then /ask answers 503 with how to build it.
                self._assistant = Assistant.open(settings=self.settings, require_index=False)
            return self._assistant

    def peek(self) -> "Assistant | None":
        return self._assistant

    def warm_up(self) -> None:
        """Load the model and the index now, so the first question is not the slow one."""
        try:
            a = self.get()
            a.embedder  # noqa: B018 - loads the model (cached per process)
            a.health()
        except Exception:  # never keep the server from starting; requests will report it
            log.exception("could not open the assistant at startup")


def _root(request: Request) -> str:
    return (request.scope.get("root_path") or "").rstrip("/")


def article_url(root: str, doc_id: str, start: int | None = None, end: int | None = None) -> str:
    url = f"{root}/documents/{quote(doc_id, safe='/')}"
    if start is not None and end is not None:
        url += f"?start={int(start)}&end={int(end)}#passage"
    return url


def with_urls(resp: AskResponse, root: str) -> AskResponse:
    """Fill `source.url` and `also_in[].url`: links to the article view at the passage."""
    resp = resp.model_copy(deep=True)
    for a in resp.answers:
        a.source.url = article_url(root, a.source.doc_id, a.source.start, a.source.end)
        for other in a.also_in:
            # if the core ever gives offsets for the other article, link to the passage there
            start, end = getattr(other, "start", None), getattr(other, "end", None)
            other.url = article_url(root, other.doc_id, start, end)
    return resp


# --- the app ---------------------------------------------------------------------------------

DESCRIPTION = """
Extractive, cited question answering over a folder of articles.

Answers are passages quoted verbatim from the articles, with the answering sentence(s)
marked by offsets, and a link to the article at that passage. The server is stateless:
a conversation is carried by sending the earlier questions as `history`.

Every error has the shape `{"error": {"status", "message", "details"}}`.
"""


def create_app(assistant: "Assistant | None" = None, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app. Pass an open Assistant, or settings (default: from the environment)."""
    if settings is None:
        settings = assistant.settings if assistant is not None else Settings.from_env()
    holder = AssistantHolder(settings, assistant)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(holder.warm_up)
        yield

    # FastAPIOffline serves the Swagger UI and ReDoc assets itself: /docs works with no internet
    app = FastAPIOffline(
        title="Article assistant",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "ask", "description": "Ask questions."},
            {"name": "documents", "description": "The indexed articles."},
            {"name": "service", "description": "Health of the service."},
            {"name": "pages", "description": "HTML pages for people."},
        ],
    )
    app.state.holder = holder
    app.state.settings = settings

    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(AssistantError, _on_assistant_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(SecurityHeadersMiddleware)

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
            503: _err("No index has been built yet; the message says how to build one."),
        },
    )
    def ask(body: AskRequest, request: Request) -> AskResponse:
        ast = holder.get()
        _check_limits(body, ast.settings)
        resp = ast.ask(body.question, history=body.history or [], top_k=body.top_k)
        return with_urls(resp, _root(request))

    @app.get(
        "/documents",
        response_model=list[DocumentSummary],
        tags=["documents"],
        summary="List the indexed articles",
        responses={503: _err("No index has been built yet.")},
    )
    def documents(request: Request) -> list[DocumentSummary]:
        root = _root(request)
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
        if not _plausible_id(doc_id):
            raise DocumentNotFoundError(f"No article with id {doc_id!r}. GET /documents lists them.")
        view = holder.get().document(doc_id)
        if as_json:
            return view
        from . import pages

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

    from . import pages

    pages.install(app, holder)
    return app


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


def _plausible_id(doc_id: str) -> bool:
    """Refuse ids that climb out of the corpus before the core is even asked."""
    if not doc_id or doc_id.startswith("/") or "\x00" in doc_id or "\\" in doc_id:
        return False
    return all(part not in ("", ".", "..") for part in doc_id.split("/"))


def app_factory() -> FastAPI:
    """For `uvicorn.run("assistant.api:app_factory", factory=True, workers=N)`: settings from the environment."""
    return create_app(settings=Settings.from_env())


__all__ = ["create_app", "app_factory", "AskRequest", "ErrorResponse", "MAX_BODY_BYTES"]
