"""The library owner's side: the admin page (/admin) and the routes that change the corpus.

Routes (all need the admin token, see admin_auth; disabled with 403 until it is set):
    POST   /reindex                   reindex the corpus folder, answer with what changed
    POST   /admin/reindex             the same, streamed as NDJSON progress lines (the admin page)
    POST   /documents                 upload an article (multipart `file`, optional `url`)
    POST   /documents/from-url        fetch a web page into the corpus ({"url": ...})
    DELETE /documents/{doc_id}        delete an article
    POST   /admin/questions/mark      mark logged questions as ones the library should not answer
Pages:
    GET  /admin                       sign-in form, or the admin page; without a token configured,
                                      how to enable it and nothing else
    POST /admin/session               sign in (form field `token`): sets the session cookie
    POST /admin/logout                sign out
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from . import admin_auth as auth
from . import templating
from .errors import DocumentNotFoundError, NotIndexedError, ReindexBusyError
from .http_base import BODY_HINTS, ApiError, AssistantHolder, article_url, err_doc, plausible_id, root_of
from .models import ReindexReport
from .owner_log import OwnerLog, OwnerLogError

if TYPE_CHECKING:
    from .assistant import Assistant

log = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = auth.ADMIN_TOKEN_ENV
REINDEX_WAIT_ENV = "ASSISTANT_REINDEX_WAIT"
MAX_UPLOAD_BYTES = 5 * 1024 * 1024  # the largest article file; same as `assistant add`
_UPLOAD_OVERHEAD = 64 * 1024  # multipart boundaries and headers around the file
MAX_URL_CHARS = 2000
ADMIN_TAG_DESCRIPTION = (
    f"Change the corpus while serving. Enabled by setting `{ADMIN_TOKEN_ENV}` in the server's "
    "environment; send it as `Authorization: Bearer <token>` (or sign in on /admin). "
    "Disabled: 403. Wrong or missing token: 401."
)
WORKER_SWITCH_WAIT = 10.0  # seconds an admin request waits for the other workers to switch

BODY_HINTS["/documents/from-url"] = ("url, replace, name", '{"url": "https://example.org/article"}')
BODY_HINTS["/admin/questions/mark"] = ("ids, unanswerable", '{"ids": [12, 15], "unanswerable": true}')


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


class AddUrlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: StrictStr = Field(max_length=MAX_URL_CHARS, description="An http(s) web page holding the article.")
    replace: StrictBool = Field(default=False, description="Overwrite a different file of the same name.")
    name: StrictStr | None = Field(default=None, max_length=120, description="File name to save it as.")


class MarkResult(BaseModel):
    marked: int = Field(description="How many logged questions changed.")
    unanswerable: bool


class MarkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[StrictInt] = Field(min_length=1, max_length=5000, description="Question-log ids (a group's `ids`).")
    unanswerable: StrictBool = Field(description="true: the library should abstain on these; false: undo.")


def body_limits() -> dict[tuple[str, str], tuple[int, str]]:
    """The one route that takes files gets a wider body limit than the 64 KiB of the others."""
    return {("POST", "/documents"): (
        MAX_UPLOAD_BYTES + _UPLOAD_OVERHEAD,
        f"The upload is larger than {MAX_UPLOAD_BYTES // 1048576} MiB, the limit for one article file.",
    )}


def _reindex_wait(request: Request) -> float:
    """How long an admin request waits for another reindex to finish before answering 409."""
    wait = getattr(request.app.state, "reindex_wait", None)
    if wait is None:
        try:
            wait = float(os.environ.get(REINDEX_WAIT_ENV, "30"))
        except ValueError:
            wait = 30.0
    return max(0.0, float(wait))


async def _every_worker_switched(ast: "Assistant") -> None:
    """After a reindex in this worker: wait until the other worker processes serving this index
    answer from the new generation too (they poll CURRENT), so whoever called the admin route
    can ask right away, whichever worker gets the question. Gives up (and logs) after
    WORKER_SWITCH_WAIT seconds: the workers still switch, a little later."""
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


async def _upload_to_database(ast: "Assistant", request: Request, response: Response, filename: str, data: bytes,
                              replace: bool, original_url: str | None) -> UploadResult:
    """POST /documents in database mode: the original file goes into the shared library and a
    version with it is published; returns once every live replica serves it."""
    from . import sources

    if original_url and Path(filename).suffix.lower() in sources.HTML_SUFFIXES:
        from .citation import embed_original_url

        data = embed_original_url(data, original_url)  # it travels inside the page, as in the folder
    elif original_url:
        log.warning("upload %s: `url` is kept only inside HTML pages in database mode; ignored", filename)
    try:
        added, report = await run_in_threadpool(ast.upload, filename, data, replace, _reindex_wait(request))
    except (sources.SourceError, sources.DocumentExistsError) as e:
        raise _source_errors(e, "upload") from None
    except ReindexBusyError as e:
        raise ApiError(409, f"{filename} was not stored: {e} Try again.") from None
    await _every_worker_switched(ast)
    if added.status == "unchanged":
        response.status_code = 200
    return UploadResult(doc_id=added.doc_id, title=added.title, path=added.path.as_posix(), status=added.status,
                        url=article_url(root_of(request), added.doc_id), report=report)


async def _delete_from_database(ast: "Assistant", doc_id: str, request: Request) -> DeleteResult:
    """DELETE in database mode: the article leaves the shared library (and this machine's corpus
    folder, if it is there), so no replica cites it any more."""
    from . import pgstore, sources

    if not plausible_id(doc_id) or not await run_in_threadpool(pgstore.has_source, ast.settings, doc_id):
        raise DocumentNotFoundError(f"No article with id {doc_id!r}. GET /documents lists them.")
    local = []
    if ast.settings.corpus_dir.is_dir():
        local = await run_in_threadpool(sources.remove, ast.settings.corpus_dir, doc_id)
    try:
        path, report = await run_in_threadpool(ast.delete, doc_id, _reindex_wait(request))
    except ReindexBusyError as e:
        raise ApiError(409, f"{doc_id!r} was not deleted from the library: {e} Try again.") from None
    await _every_worker_switched(ast)
    corpus = ast.settings.corpus_dir
    return DeleteResult(doc_id=doc_id, removed=[path] if path else [p.relative_to(corpus).as_posix() for p in local],
                        report=report)


def _corpus_ready(ast: "Assistant") -> None:
    corpus = ast.settings.corpus_dir
    if not corpus.is_dir():
        raise ApiError(503, f"The corpus folder {corpus}/ does not exist on the server; create it (or set "
                            "ASSISTANT_CORPUS_DIR) before changing the corpus.")


def _original_url(value: Any) -> str | None:
    """The optional `url` field of an upload: an http(s) URL or nothing."""
    from urllib.parse import urlsplit

    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or len(value) > MAX_URL_CHARS:
        raise ApiError(422, f"\"url\" must be a web address of at most {MAX_URL_CHARS} characters.",
                       [{"field": "url", "message": "Not a usable web address."}])
    v = value.strip()
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(422, f"\"url\" must start with http:// or https:// (got {v[:80]!r}).",
                       [{"field": "url", "message": "Only http:// and https:// addresses."}])
    return v


def _source_errors(e: Exception, what: str) -> ApiError:
    """sources' exceptions as the API's statuses."""
    from . import sources

    if isinstance(e, sources.InvalidNameError):
        return ApiError(422, str(e), [{"field": "file", "message": str(e)}])
    if isinstance(e, sources.TooLargeError):
        return ApiError(413, str(e))
    if isinstance(e, sources.DocumentExistsError):
        return ApiError(409, f"{e} To overwrite it, send the {what} with replace=true.")
    return ApiError(422, str(e), [{"field": "file" if what == "upload" else "url", "message": str(e)}])


# --- progress of a reindex, for the admin page ------------------------------------------------

class _Progress:
    """Turns the core's (phase, done, total) callbacks into what the page shows, with time left."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.state: dict[str, Any] = {"phase": "waiting", "articles_done": 0, "articles_total": 0,
                                      "passages_done": 0, "passages_total": 0, "seconds_left": None}
        self._phase_started = self.started

    def update(self, phase: str, done: int, total: int) -> dict[str, Any]:
        now = time.monotonic()
        s = self.state
        if phase != s["phase"]:
            self._phase_started = now
        s["phase"] = phase
        if phase == "reading":
            s["articles_done"], s["articles_total"] = done, total
        elif phase == "embedding":
            s["passages_done"], s["passages_total"] = done, total
        elapsed = now - self._phase_started
        s["seconds_left"] = round(elapsed / done * (total - done), 1) if done and total and phase == "embedding" else None
        s["elapsed"] = round(now - self.started, 1)
        return dict(s)


# --- routes ----------------------------------------------------------------------------------

def install(app: FastAPI, holder: AssistantHolder, owner: OwnerLog) -> None:
    """Add the admin routes and the admin page to the app."""
    from . import sources

    _err = err_doc
    admin_errors = {
        401: _err("No admin token (or session), or the wrong one."),
        403: _err(f"Admin routes are disabled ({ADMIN_TOKEN_ENV} is not set), or a CSRF check failed."),
        409: _err("Another reindex is running (and did not finish within the wait)."),
    }
    guard = [Depends(auth.require_admin)]
    throttle = auth.FailureThrottle()

    async def reindexed(ast: "Assistant", request: Request, after: str) -> ReindexReport:
        try:
            report = await run_in_threadpool(ast.reindex, lock_timeout=_reindex_wait(request))
        except ReindexBusyError as e:
            raise ApiError(409, f"{after}: {e} It will be after the next reindex (POST /reindex).") from None
        await _every_worker_switched(ast)
        return report

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
        dependencies=guard,
        responses=admin_errors | {503: _err("The corpus folder does not exist.")},
    )
    async def reindex(request: Request) -> ReindexReport:
        ast = holder.get()
        _corpus_ready(ast)
        report = await run_in_threadpool(ast.reindex, lock_timeout=_reindex_wait(request))
        await _every_worker_switched(ast)
        return report

    @app.post(
        "/admin/reindex",
        tags=["admin"],
        summary="Reindex, with live progress",
        description=(
            "Like POST /reindex, but the answer is a stream of JSON lines (application/x-ndjson): "
            "progress lines `{phase, articles_done, articles_total, passages_done, passages_total, "
            "seconds_left}` while it runs, then `{done: true, report}` or `{done: true, error}`. "
            "The progress travels in this response, so it works whichever worker or replica serves it."
        ),
        dependencies=guard,
        responses=admin_errors | {200: {"content": {"application/x-ndjson": {}}}},
    )
    async def reindex_stream(request: Request) -> StreamingResponse:
        ast = holder.get()
        _corpus_ready(ast)
        loop = asyncio.get_running_loop()
        lines: asyncio.Queue[dict] = asyncio.Queue()
        progress = _Progress()
        last = [0.0, ""]

        def on_progress(phase: str, done: int, total: int) -> None:
            state = progress.update(phase, done, total)
            now = time.monotonic()
            if phase != last[1] or done >= total or now - last[0] >= 0.1:
                last[0], last[1] = now, phase
                loop.call_soon_threadsafe(lines.put_nowait, state)

        async def run() -> None:
            try:
                report = await run_in_threadpool(ast.reindex, lock_timeout=_reindex_wait(request),
                                                 on_progress=on_progress)
                await _every_worker_switched(ast)
                await lines.put({"done": True, "report": report.model_dump()})
            except ReindexBusyError as e:
                await lines.put({"done": True, "error": {"status": 409, "message": str(e), "details": []}})
            except Exception as e:  # reported in the stream; the page shows it
                log.exception("reindex from the admin page failed")
                await lines.put({"done": True, "error": {"status": 500, "message": f"The reindex failed: {e}",
                                                         "details": []}})

        task = asyncio.create_task(run())

        async def stream():
            yield json.dumps(progress.state) + "\n"
            while True:
                item = await lines.get()
                yield json.dumps(item) + "\n"
                if item.get("done"):
                    break
            await task

        return StreamingResponse(stream(), media_type="application/x-ndjson",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post(
        "/documents",
        response_model=UploadResult,
        status_code=201,
        tags=["admin"],
        summary="Upload an article",
        description=(
            f"Multipart form with the article in the field `file` (.txt, .md, .html or .pdf, at most "
            f"{MAX_UPLOAD_BYTES // 1048576} MiB) and, optionally, `url`: where the article was published "
            "(kept as its `original_url`). The file is checked (it must read as an article), saved in "
            "the corpus folder under its own name (tidied; a name with a path is refused), and the "
            "corpus reindexed: the answer comes once the article is answerable. A different file "
            "of the same name is a 409 unless `replace=true`; the same file again is a no-op (200)."
        ),
        dependencies=guard,
        responses=admin_errors | {
            200: {"model": UploadResult, "description": "The same file was already there: nothing changed."},
            400: _err("The multipart body could not be parsed."),
            409: _err("A different file with that name (or that doc_id) exists, or another reindex is running."),
            413: _err(f"The file is larger than {MAX_UPLOAD_BYTES // 1048576} MiB."),
            415: _err("Not a multipart upload, or an unsupported file type."),
            422: _err("No `file` field, a file name that is a path or empty, a file with no readable "
                      "article text, or a `url` that is not an http(s) address."),
        },
        openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "The article file (.txt, .md, .html, .pdf)."},
                           "url": {"type": "string", "description": "Where the article was published (optional)."}},
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
            original_url = _original_url(form.get("url"))
            up = items[0]
            data = await up.read(MAX_UPLOAD_BYTES + 1)
            filename = up.filename or ""
        finally:
            await form.close()
        if len(data) > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"The file is larger than {MAX_UPLOAD_BYTES // 1048576} MiB, the limit for one article file.")
        if ast.in_database:  # the library is in the database: every replica answers it
            return await _upload_to_database(ast, request, response, filename, data, replace, original_url)
        try:
            added = await run_in_threadpool(sources.add_bytes, ast.settings.corpus_dir, filename, data, replace,
                                            original_url)
        except (sources.SourceError, sources.DocumentExistsError) as e:
            raise _source_errors(e, "upload") from None
        return await _indexed(ast, request, response, added)

    async def _indexed(ast, request: Request, response: Response, added) -> UploadResult:
        """Reindex after a file was saved into the corpus folder, and say where it can be read
        (200 instead of 201 when the same file was there already)."""
        report = await reindexed(ast, request, f"{added.path.name} was saved, but it is not answerable yet")
        if added.doc_id not in {d.doc_id for d in ast.documents()}:
            raise ApiError(422, f"{added.path.name} was saved but could not be indexed; see the server log.")
        if added.status == "unchanged":
            response.status_code = 200
        return UploadResult(
            doc_id=added.doc_id, title=added.title, path=added.path.relative_to(ast.settings.corpus_dir).as_posix(),
            status=added.status, url=article_url(root_of(request), added.doc_id), report=report,
        )

    @app.post(
        "/documents/from-url",
        response_model=UploadResult,
        status_code=201,
        tags=["admin"],
        summary="Add a web page",
        description=(
            "Fetches the page (http or https, HTML, at most 5 MiB), saves it as .html in the corpus "
            "folder with its address kept as the article's `original_url`, and reindexes, as "
            "`assistant add URL` does. Note: the server fetches whatever address an admin gives it."
        ),
        dependencies=guard,
        responses=admin_errors | {
            409: _err("A different file with that name exists (send replace=true), or another reindex is running."),
            413: _err("The page is larger than 5 MiB."),
            422: _err("Not an http(s) address, unreachable, not an HTML page, or no article text on it."),
        },
    )
    async def add_from_url(body: AddUrlRequest, request: Request, response: Response) -> UploadResult:
        ast = holder.get()
        _corpus_ready(ast)
        url = _original_url(body.url)
        if url is None:
            raise ApiError(422, "\"url\" is empty: give the address of a web page.",
                           [{"field": "url", "message": "Required."}])
        try:
            added = await run_in_threadpool(sources.add_url, ast.settings.corpus_dir, url, body.name, body.replace)
        except (sources.SourceError, sources.DocumentExistsError) as e:
            raise _source_errors(e, "request") from None
        return await _indexed(ast, request, response, added)

    @app.delete(
        "/documents/{doc_id:path}",
        response_model=DeleteResult,
        tags=["admin"],
        summary="Delete an article",
        description="Deletes the article's file from the corpus folder and reindexes: when this returns, "
                    "the article is no longer cited.",
        dependencies=guard,
        responses=admin_errors | {404: _err("No article with that id.")},
    )
    async def delete_document(doc_id: str, request: Request) -> DeleteResult:
        ast = holder.get()
        if ast.in_database:
            return await _delete_from_database(ast, doc_id, request)
        _corpus_ready(ast)
        if not plausible_id(doc_id):
            raise DocumentNotFoundError(f"No article with id {doc_id!r}. GET /documents lists them.")
        removed = await run_in_threadpool(sources.remove, ast.settings.corpus_dir, doc_id)
        if not removed:
            try:
                indexed = doc_id in {d.doc_id for d in ast.documents()}
            except NotIndexedError:
                indexed = False
            if not indexed:
                raise DocumentNotFoundError(f"No article with id {doc_id!r}. GET /documents lists them.")
        report = await reindexed(ast, request, f"{doc_id!r} was deleted from the corpus folder, but it may still be cited")
        corpus = ast.settings.corpus_dir
        return DeleteResult(doc_id=doc_id, removed=[p.relative_to(corpus).as_posix() for p in removed], report=report)

    @app.post(
        "/admin/questions/mark",
        response_model=MarkResult,
        tags=["admin"],
        summary="Mark logged questions as not for this library",
        description="`unanswerable: true` marks the questions (a group's `ids`) as ones the library should "
                    "abstain on: `assistant export-eval` writes them with `expect_abstain`. `false` undoes it.",
        dependencies=guard,
        responses=admin_errors | {503: _err("The question log cannot be opened.")},
    )
    def mark_questions(body: MarkRequest) -> MarkResult:
        try:
            n = owner.mark(body.ids, body.unanswerable)
        except OwnerLogError as e:
            raise ApiError(503, str(e)) from None
        return MarkResult(marked=n, unanswerable=body.unanswerable)

    # --- the page ----------------------------------------------------------------------------

    def page(request: Request, status: int = 200, **context: Any) -> HTMLResponse:
        resp = templating.render(request, "admin.html", context, status=status)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def disabled_page(request: Request) -> HTMLResponse:
        return page(request, status=403, state="disabled", token_env=ADMIN_TOKEN_ENV)

    def dashboard(request: Request, expires: int) -> HTMLResponse:
        from . import index as ix

        ctx: dict[str, Any] = {"state": "signed-in", "csrf": auth.csrf_token(auth.admin_token(), expires),
                               "problem": None, "documents": [], "groups": [], "feedback": [], "counts": None,
                               "log_problem": None}
        ast = holder.get()
        health = ast.health()
        ctx["health"] = health
        try:
            docs = sorted(ast.documents(), key=lambda d: d.title.lower())
            ctx["documents"] = docs
        except NotIndexedError as e:
            ctx["problem"] = str(e)
            docs = []
        try:
            loaded = ast._current()
            ctx["generation"] = loaded.generation
        except NotIndexedError:
            ctx["generation"] = None
        try:
            ctx["workers"] = len(ix.serving_generations(ast.settings.index_dir)) or 1
        except OSError:
            ctx["workers"] = 1
        ctx["corpus_dir"] = str(ast.settings.corpus_dir)
        ctx["corpus_ok"] = ast.settings.corpus_dir.is_dir()
        ctx["logging_questions"] = owner.logging_questions
        ctx["retention_days"] = owner.retention_days
        ctx["log_path"] = str(owner.db_path)
        titles = {d.doc_id: d.title for d in docs}
        try:
            ctx["counts"] = owner.counts()
            ctx["groups"] = owner.unanswered_groups()[:30]
            ctx["feedback"] = owner.recent_feedback(30, titles=titles)
        except Exception as e:  # the page still works for the articles
            log.error("admin page: the question log cannot be read: %s", e)
            ctx["log_problem"] = f"The question log {owner.db_path} cannot be read: {e}"
        return page(request, **ctx)

    @app.get(
        "/admin",
        response_class=HTMLResponse,
        tags=["pages"],
        summary="The admin page",
        description="Sign in with the admin token; then the articles, uploads, reindex with progress, the "
                    "index's health, the questions nobody answered and readers' feedback.",
        responses={200: {"content": {"text/html": {}}}, 403: {"content": {"text/html": {}},
                                                              "description": "No admin token is configured."}},
    )
    def admin_page(request: Request) -> HTMLResponse:
        token = auth.admin_token()
        if not token:
            return disabled_page(request)
        expires = auth.session_expiry(request, token)
        if expires is None:
            return page(request, state="sign-in")
        return dashboard(request, expires)

    def sign_in_refused(request: Request, status: int, message: str, headers: dict | None = None) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            resp = page(request, status=status, state="sign-in", error=message)
            for k, v in (headers or {}).items():
                resp.headers[k] = v
            return resp
        raise ApiError(status, message, headers=headers)

    @app.post(
        "/admin/session",
        tags=["pages"],
        summary="Sign in to the admin page",
        description="Form field `token` (application/x-www-form-urlencoded). Sets an HttpOnly, "
                    "SameSite=Strict session cookie and redirects to /admin. A wrong token is 401; "
                    f"after {auth.MAX_FAILURES} wrong tokens from one address, 429 for a few minutes.",
        responses={303: {"description": "Signed in."}, 401: _err("Wrong token."),
                   403: _err("Admin is disabled, or the form was posted from another site."),
                   429: _err("Too many wrong tokens: wait (Retry-After)."), 415: _err("Not a form.")},
    )
    async def sign_in(request: Request) -> Response:
        token = auth.admin_token()
        if not token:
            if "text/html" in request.headers.get("accept", ""):
                return disabled_page(request)
            raise ApiError(403, f"{auth.DISABLED_MESSAGE}.")
        if not auth.same_origin(request):
            return sign_in_refused(request, 403, "Sign in from the admin page of this site.")
        who = request.client.host if request.client else "?"
        wait = throttle.retry_after(who)
        if wait:
            return sign_in_refused(request, 429, f"Too many wrong tokens. Try again in {wait} seconds.",
                                   {"Retry-After": str(wait)})
        ctype = request.headers.get("content-type", "").lower()
        if not ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            raise ApiError(415, "Send the sign-in form as application/x-www-form-urlencoded with a field \"token\".")
        try:
            form = await request.form(max_files=0, max_fields=5)
        except Exception as e:
            raise ApiError(400, f"The sign-in form could not be read ({e}).") from None
        given = form.get("token")
        if not isinstance(given, str) or not given.strip():
            return sign_in_refused(request, 422, "Type the admin token to sign in.")
        if not auth.token_matches(given, token):
            n = throttle.failed(who)
            log.warning("admin sign-in: wrong token (%d recent failures)", n)
            await asyncio.sleep(min(2.0, 0.2 * n))  # repeated failures are slowed down
            return sign_in_refused(request, 401, "That is not the admin token.")
        throttle.succeeded(who)
        value, _ = auth.new_session(token)
        resp = RedirectResponse(f"{root_of(request)}/admin", status_code=303)
        resp.set_cookie(auth.COOKIE, value, max_age=auth.SESSION_SECONDS, httponly=True, samesite="strict",
                        secure=auth.is_https(request), path="/")
        return resp

    @app.post(
        "/admin/logout",
        tags=["pages"],
        summary="Sign out of the admin page",
        responses={303: {"description": "Signed out (the session cookie is cleared)."}},
    )
    async def sign_out(request: Request) -> Response:
        token = auth.admin_token()
        expires = auth.session_expiry(request, token) if token else None
        if expires is not None:
            try:
                form = await request.form(max_files=0, max_fields=5)
                csrf = form.get("csrf")
            except Exception:
                csrf = None
            auth.check_csrf(request, token, expires, csrf if isinstance(csrf, str) else None)
        resp = RedirectResponse(f"{root_of(request)}/admin", status_code=303)
        resp.delete_cookie(auth.COOKIE, path="/", httponly=True, samesite="strict", secure=auth.is_https(request))
        return resp
