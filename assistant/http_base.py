"""One place for what every HTTP route shares: the error shape and its handlers, the
middleware (body limit, security headers), the lazily opened Assistant, URLs of articles.

The route modules (`api` for the public JSON API, `admin` for the library owner, `pages` for
readers' HTML pages) import from here and never from each other; `app` assembles them.
Every error, whatever raised it, leaves as one JSON shape:

    {"error": {"status": 422, "message": "<what went wrong and what to do>", "details": [...]}}

(`details` lists one {"field", "message"} per problem for validation errors; it is empty otherwise.)
Browsers asking for HTML get the same message on an HTML error page instead.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import templating
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
from .models import AskResponse

if TYPE_CHECKING:  # importing the core pulls in numpy/faiss: keep it out of import time
    from .assistant import Assistant

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
DEFAULTS = Settings()


# --- the error shape -------------------------------------------------------------------------

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




def err_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}




# --- errors ----------------------------------------------------------------------------------

class ApiError(Exception):
    """Raised by route code for a 4xx/5xx that is not one of the core's errors."""

    def __init__(self, status: int, message: str, details: list[dict] | None = None,
                 headers: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []
        self.headers = headers


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
        return templating.render_error(request, status, message, headers=headers)
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


# per JSON route: (its fields, an example body), so a validation message names what to send
BODY_HINTS: dict[str, tuple[str, str]] = {
    "/ask": ("question, history, top_k", '{"question": "What is mesotherapy?"}'),
}
_DEFAULT_HINT = BODY_HINTS["/ask"]


def _hint(request: Request) -> tuple[str, str]:
    path = request.url.path
    root = (request.scope.get("root_path") or "").rstrip("/")
    if root and path.startswith(root):
        path = path[len(root):]
    return BODY_HINTS.get(path, _DEFAULT_HINT)


def _field_name(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def _describe(e: dict, hint: tuple[str, str] = _DEFAULT_HINT) -> tuple[str | None, str]:
    """A pydantic error as (field, a sentence a person can act on)."""
    fields_list, body_example = hint
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
            f"{f' ({reason})' if reason else ''}. Send a JSON object like {body_example}."
        )
    if field is None:
        if typ == "missing":
            return None, f"The request needs a JSON body like {body_example}."
        return None, f"The request body must be a JSON object like {body_example}."
    if typ == "missing":
        if field == "question":
            return field, "A \"question\" is required: the text you want answered."
        return field, f"\"{field}\" is required."
    if typ == "extra_forbidden":
        return field, f"Unknown field \"{field}\". The fields are: {fields_list}."
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
        return field, f"\"top_k\" must be a whole number from 1 to {DEFAULTS.max_top_k}."
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
    hint = _hint(request)
    status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
    ctype = request.headers.get("content-type", "")
    body_errors = [e for e in errors if tuple(e.get("loc", ()))[:1] == ("body",)]
    only_missing = all(e.get("type") == "missing" and len(e.get("loc", ())) == 1 for e in body_errors)
    if request.method == "POST" and body_errors and "json" not in ctype.lower() and (ctype or not only_missing):
        said = f"not {ctype!r}" if ctype else "it had none"
        message = (f"Send the body as JSON with the header Content-Type: application/json "
                   f"({said}). For example: {hint[1]}")
        return _respond_error(request, 415, message)
    items = [_describe(e, hint) for e in errors]
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
    return _respond_error(request, exc.status, exc.message, exc.details, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "Something went wrong on the server. The error was logged; please try again.")




# --- middleware ------------------------------------------------------------------------------

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




# --- URLs -------------------------------------------------------------------------------------

def root_of(request: Request) -> str:
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




def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as the one shape (or as the HTML error page for a browser)."""
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(AssistantError, _on_assistant_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(Exception, _on_unexpected)


def plausible_id(doc_id: str) -> bool:
    """Refuse ids that climb out of the corpus before the core is even asked."""
    if not doc_id or doc_id.startswith("/") or "\x00" in doc_id or "\\" in doc_id:
        return False
    return all(part not in ("", ".", "..") for part in doc_id.split("/"))
