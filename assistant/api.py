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

import asyncio
import contextlib
import logging
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
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
    StoreUnavailableError,
    UnsupportedFileError,
)
from .models import ArticleView, AskResponse, DocumentInfo, Health, ReindexReport

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
    (StoreUnavailableError, 503),
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

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES,
                 wider: dict[tuple[str, str], tuple[int, str]] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        # (method, path) -> (limit, message): the one route that takes files (POST /documents)
        self.wider = wider or {}

    def _too_large(self, message: str | None = None) -> JSONResponse:
        return error_response(
            413,
            message or f"The request body is larger than {self.max_bytes // 1024} KiB. Send a shorter question and history.",
            headers={"Connection": "close"},
        )

    @staticmethod
    async def _drain(receive: Receive, up_to: int) -> None:
        """Read and drop the rest of a refused body (up to `up_to` bytes): a client still sending
        it then reads the 413 instead of a connection reset. Bigger bodies are cut off."""
        got = 0
        while got < up_to:
            message = await receive()
            if message["type"] != "http.request":
                return
            got += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _limit(self, scope: Scope) -> tuple[int, str | None]:
        if self.wider:
            path, root = scope.get("path", ""), scope.get("root_path", "") or ""
            if root and path.startswith(root):
                path = path[len(root):]
            hit = self.wider.get((scope.get("method", ""), path.rstrip("/") or "/"))
            if hit is not None:
                return hit
        return self.max_bytes, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, too_large = self._limit(scope)
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
            if length > max_bytes:
                if length <= 4 * max_bytes:
                    await self._drain(receive, length)
                await self._too_large(too_large)(scope, receive, send)
                return

        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > max_bytes:
                if message.get("more_body", False):
                    await self._drain(receive, 4 * max_bytes - size)
                await self._too_large(too_large)(scope, receive, send)
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


async def _poll_index(holder: AssistantHolder, every: float = 0.5) -> None:
    """Check index/CURRENT about once a second, in every worker process, busy or idle: a new
    generation (written by a reindex anywhere) is loaded in the background and swapped in,
    so the next request after a reindex is answered from it. Requests check too (see
    Assistant._current); this makes an idle worker ready before its next request. Each
    worker also records which generation it answers from (index/.serving/), so an admin
    request can wait until every worker has switched."""
    from . import index as ix

    marked: tuple | None = None
    try:
        while True:
            await asyncio.sleep(every)
            ast = holder.peek()
            if ast is None:
                continue
            try:
                loaded = await run_in_threadpool(ast._current)
            except Exception:  # no index yet, or one that fails to load: requests report it
                continue
            if (ast.settings.index_dir, loaded.generation) != marked and not ast.in_database:  # (replicas heartbeat in the database)
                marked = (ast.settings.index_dir, loaded.generation)
                await run_in_threadpool(ix.mark_serving, ast.settings.index_dir, loaded.generation)
    finally:
        if marked is not None:
            ix.mark_serving(marked[0], None)


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
        poller = asyncio.create_task(_poll_index(holder))
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

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
            {"name": "admin", "description": ADMIN_TAG_DESCRIPTION},
        ],
    )
    app.state.holder = holder
    app.state.settings = settings

    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(AssistantError, _on_assistant_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES, wider=_admin_body_limits())
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
            503: _err("No index has been built yet (the message says how to build one), or the database "
                      "holding the index is unreachable."),
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

    _install_admin(app, holder)

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


# --- admin: reindex, upload, delete ----------------------------------------------------------

ADMIN_TOKEN_ENV = "ASSISTANT_ADMIN_TOKEN"
REINDEX_WAIT_ENV = "ASSISTANT_REINDEX_WAIT"
MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # the largest article file; same as `assistant add`
_UPLOAD_OVERHEAD = 64 * 1024  # multipart boundaries and headers around the file
ADMIN_TAG_DESCRIPTION = (
    f"Change the corpus while serving. Enabled by setting `{ADMIN_TOKEN_ENV}` in the server's "
    "environment; send it as `Authorization: Bearer <token>`. Disabled: 403. Wrong or missing token: 401."
)
_BEARER_HINT = f"send the token as the header `Authorization: Bearer <token>` (the server's {ADMIN_TOKEN_ENV})"


class UploadResult(BaseModel):
    doc_id: str = Field(description="The article's id: answerable now, and its page is at `url`.")
    title: str
    path: str = Field(description="Where it was saved, relative to the corpus folder.")
    status: str = Field(description="`added`, `replaced` (with ?replace=true) or `unchanged` (the same file again).")
    url: str
    report: ReindexReport


class DeleteResult(BaseModel):
    doc_id: str
    removed: list[str] = Field(description="Files deleted from the corpus folder.")
    report: ReindexReport


_BEARER = HTTPBearer(auto_error=False, scheme_name="admin token",
                     description=f"The value of {ADMIN_TOKEN_ENV} on the server.")


def _admin_body_limits() -> dict[tuple[str, str], tuple[int, str]]:
    return {("POST", "/documents"): (
        MAX_UPLOAD_BYTES + _UPLOAD_OVERHEAD,
        f"The upload is larger than {MAX_UPLOAD_BYTES // 1048576} MiB, the limit for one article file.",
    )}


def require_admin(request: Request, _docs: Annotated[Any, Depends(_BEARER)] = None) -> None:
    """403 while admin routes are disabled, 401 without the right bearer token (constant-time compare).

    (`_docs` only shows the bearer scheme in /docs, with its Authorize button; the header is read here.)
    """
    import hmac
    import os

    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    if not token:
        raise ApiError(403, (
            f"The admin routes are disabled. To enable them, start the server with {ADMIN_TOKEN_ENV} set to a "
            f"secret (e.g. `{ADMIN_TOKEN_ENV}=$(openssl rand -hex 24) assistant serve`) and {_BEARER_HINT}."
        ))
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise StarletteHTTPException(401, f"This route needs the admin token: {_BEARER_HINT}.",
                                     headers={"WWW-Authenticate": 'Bearer realm="assistant-admin"'})
    if not hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8")):
        raise StarletteHTTPException(401, "The admin token is wrong.",
                                     headers={"WWW-Authenticate": 'Bearer realm="assistant-admin", error="invalid_token"'})


def _reindex_wait(request: Request) -> float:
    """How long an admin request waits for another reindex to finish before answering 409."""
    import os

    wait = getattr(request.app.state, "reindex_wait", None)
    if wait is None:
        try:
            wait = float(os.environ.get(REINDEX_WAIT_ENV, "30"))
        except ValueError:
            wait = 30.0
    return max(0.0, float(wait))


WORKER_SWITCH_WAIT = 10.0  # seconds an admin request waits for the other workers to switch


async def _every_worker_switched(ast: "Assistant") -> None:
    """After a reindex in this worker: wait until the other worker processes serving this index
    answer from the new generation too (they poll CURRENT; see _poll_index), so whoever called
    the admin route can ask right away, whichever worker gets the question. Gives up (and logs)
    after WORKER_SWITCH_WAIT seconds: the workers still switch, a little later."""
    import os

    from . import index as ix

    if ast.in_database:  # replicas anywhere: they heartbeat their version in the database
        await run_in_threadpool(ast.wait_for_replicas, WORKER_SWITCH_WAIT)
        return
    index_dir = ast.settings.index_dir
    target = ast._current().generation
    if target is None:
        return
    await run_in_threadpool(ix.mark_serving, index_dir, target)
    deadline = asyncio.get_running_loop().time() + WORKER_SWITCH_WAIT
    while True:
        others = {pid: g for pid, g in (await run_in_threadpool(ix.serving_generations, index_dir)).items()
                  if pid != os.getpid()}
        behind = {pid: g for pid, g in others.items() if g < target}
        if not behind:
            return
        if asyncio.get_running_loop().time() > deadline:
            log.warning("workers %s still answer from an older index than %s", sorted(behind), target)
            return
        await asyncio.sleep(0.1)


def _corpus_ready(ast: "Assistant") -> None:
    corpus = ast.settings.corpus_dir
    if not corpus.is_dir():
        raise ApiError(503, f"The corpus folder {corpus}/ does not exist on the server; create it (or set "
                            "ASSISTANT_CORPUS_DIR) before changing the corpus.")


def _install_admin(app: FastAPI, holder: AssistantHolder) -> None:
    from . import sources

    admin_errors = {
        401: _err("No admin token, or the wrong one."),
        403: _err(f"Admin routes are disabled: {ADMIN_TOKEN_ENV} is not set on the server."),
        409: _err("Another reindex is running (and did not finish within the wait)."),
    }

    @app.post(
        "/reindex",
        response_model=ReindexReport,
        tags=["admin"],
        summary="Reindex the corpus folder",
        description=(
            "Brings the index up to date with the corpus folder: only new and changed articles are "
            "embedded. Returns what changed. Questions keep being answered meanwhile; when this "
            "returns, every worker answers from the new index. Waits for a reindex already running "
            f"(up to {REINDEX_WAIT_ENV} seconds, 30 by default), then answers 409."
        ),
        dependencies=[Depends(require_admin)],
        responses=admin_errors | {503: _err("The corpus folder does not exist.")},
    )
    async def reindex(request: Request) -> ReindexReport:
        ast = holder.get()
        _corpus_ready(ast)
        report = await run_in_threadpool(ast.reindex, lock_timeout=_reindex_wait(request))
        await _every_worker_switched(ast)
        return report

    @app.post(
        "/documents",
        response_model=UploadResult,
        status_code=201,
        tags=["admin"],
        summary="Upload an article",
        description=(
            f"Multipart form with the article in the field `file` (.txt, .md, .html or .pdf, at most "
            f"{MAX_UPLOAD_BYTES // 1048576} MiB). The file is checked (it must read as an article), saved in "
            "the corpus folder under its own name (tidied; a name with a path is refused), and the "
            "corpus reindexed: the answer comes once the article is answerable. A different file "
            "of the same name is a 409 unless `replace=true`; the same file again is a no-op (200)."
        ),
        dependencies=[Depends(require_admin)],
        responses=admin_errors | {
            200: {"model": UploadResult, "description": "The same file was already there: nothing changed."},
            400: _err("The multipart body could not be parsed."),
            409: _err("A different file with that name (or that doc_id) exists, or another reindex is running."),
            413: _err(f"The file is larger than {MAX_UPLOAD_BYTES // 1048576} MiB."),
            415: _err("Not a multipart upload, or an unsupported file type."),
            422: _err("No `file` field, a file name that is a path or empty, or a file with no readable article text."),
        },
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "The article file (.txt, .md, .html, .pdf)."}},
        }}}}},
    )
    async def upload(
        request: Request,
        response: Response,
        replace: Annotated[bool, Query(description="Overwrite a different file of the same name.")] = False,
    ) -> UploadResult:
        from starlette.datastructures import UploadFile

        ast = holder.get()
        if not ast.in_database:
            _corpus_ready(ast)
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise ApiError(415, (
                f"Upload the article as multipart/form-data with the file in a field named \"file\" "
                f"(not {ctype!r})." if ctype else
                "Upload the article as multipart/form-data with the file in a field named \"file\"."
            ) + " For example: curl -F file=@article.pdf ...")
        try:
            form = await request.form(max_files=1, max_fields=20)
        except Exception as e:  # MultiPartException and malformed bodies
            raise ApiError(400, f"The upload could not be read as multipart/form-data ({e}).") from None
        try:
            items = form.getlist("file")
            if len(items) != 1 or not isinstance(items[0], UploadFile):
                raise ApiError(422, "Send exactly one file, in a form field named \"file\".",
                               [{"field": "file", "message": "One file is required in the field \"file\"."}])
            up = items[0]
            data = await up.read(MAX_UPLOAD_BYTES + 1)
            filename = up.filename or ""
        finally:
            await form.close()
        if len(data) > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"The file is larger than {MAX_UPLOAD_BYTES // 1048576} MiB, the limit for one article file.")
        try:
            if ast.in_database:  # the library is in the database: every replica answers it
                added, report = await run_in_threadpool(ast.upload, filename, data, replace, _reindex_wait(request))
            else:
                added = await run_in_threadpool(sources.add_bytes, ast.settings.corpus_dir, filename, data, replace)
        except sources.InvalidNameError as e:
            raise ApiError(422, str(e), [{"field": "file", "message": str(e)}]) from None
        except sources.TooLargeError as e:
            raise ApiError(413, str(e)) from None
        except sources.DocumentExistsError as e:
            raise ApiError(409, f"{e} To overwrite it, send the upload with ?replace=true.") from None
        except sources.SourceError as e:
            raise ApiError(422, str(e), [{"field": "file", "message": str(e)}]) from None
        try:
            if not ast.in_database:
                report = await run_in_threadpool(ast.reindex, lock_timeout=_reindex_wait(request))
        except ReindexBusyError as e:
            raise ApiError(409, f"{added.path.name} was saved, but it is not answerable yet: {e} "
                                "It will be after the next reindex (POST /reindex).") from None
        if added.doc_id not in {d.doc_id for d in ast.documents()}:
            raise ApiError(422, f"{added.path.name} was saved but could not be indexed; see the server log.")
        await _every_worker_switched(ast)
        if added.status == "unchanged":
            response.status_code = 200
        return UploadResult(
            doc_id=added.doc_id, title=added.title,
            path=added.path.as_posix() if ast.in_database else added.path.relative_to(ast.settings.corpus_dir).as_posix(),
            status=added.status, url=article_url(_root(request), added.doc_id), report=report,
        )

    @app.delete(
        "/documents/{doc_id:path}",
        response_model=DeleteResult,
        tags=["admin"],
        summary="Delete an article",
        description="Deletes the article's file from the corpus folder and reindexes: when this returns, "
                    "the article is no longer cited.",
        dependencies=[Depends(require_admin)],
        responses=admin_errors | {404: _err("No article with that id.")},
    )
    async def delete_document(doc_id: str, request: Request) -> DeleteResult:
        ast = holder.get()
        if ast.in_database:
            return await _delete_from_database(ast, doc_id, request)
        _corpus_ready(ast)
        if not _plausible_id(doc_id):
            raise DocumentNotFoundError(f"No article with id {doc_id!r}. GET /documents lists them.")
        removed = await run_in_threadpool(sources.remove, ast.settings.corpus_dir, doc_id)
        if not removed:
            try:
                indexed = doc_id in {d.doc_id for d in ast.documents()}
            except NotIndexedError:
                indexed = False
            if not indexed:
                raise DocumentNotFoundError(f"No article with id {doc_id!r}. GET /documents lists them.")
        try:
            report = await run_in_threadpool(ast.reindex, lock_timeout=_reindex_wait(request))
        except ReindexBusyError as e:
            raise ApiError(409, f"{doc_id!r} was deleted from the corpus folder, but it may still be cited: {e} "
                                "It won't be after the next reindex (POST /reindex).") from None
        await _every_worker_switched(ast)
        corpus = ast.settings.corpus_dir
        return DeleteResult(doc_id=doc_id, removed=[p.relative_to(corpus).as_posix() for p in removed], report=report)


async def _delete_from_database(ast: "Assistant", doc_id: str, request: Request) -> DeleteResult:
    """DELETE in database mode: the article leaves the shared library (and this machine's corpus
    folder, if it is there), so no replica cites it any more."""
    from . import pgstore, sources

    if not _plausible_id(doc_id) or not await run_in_threadpool(pgstore.has_source, ast.settings, doc_id):
        raise DocumentNotFoundError(f"No article with id {doc_id!r}. GET /documents lists them.")
    local = []
    if ast.settings.corpus_dir.is_dir():
        local = await run_in_threadpool(sources.remove, ast.settings.corpus_dir, doc_id)
    path, report = await run_in_threadpool(ast.delete, doc_id, _reindex_wait(request))
    await _every_worker_switched(ast)
    corpus = ast.settings.corpus_dir
    return DeleteResult(doc_id=doc_id, removed=[path] if path else [p.relative_to(corpus).as_posix() for p in local],
                        report=report)


def app_factory() -> FastAPI:
    """For `uvicorn.run("assistant.api:app_factory", factory=True, workers=N)`: settings from the environment."""
    return create_app(settings=Settings.from_env())


__all__ = ["create_app", "app_factory", "AskRequest", "ErrorResponse", "MAX_BODY_BYTES"]
