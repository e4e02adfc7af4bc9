"""The app: assembles the HTTP face from its parts, one per audience, with no import cycle.

    http_base   the error shape and handlers, middleware, the lazily opened Assistant
    api         the public JSON API (readers and their programs)
    admin       the library owner: the admin page and its routes
    pages       readers' HTML pages (chat, article view)

No work happens at import time. `create_app()` builds the app; the Assistant is opened lazily
(and warmed up when the server starts). `app_factory()` builds it from the environment for
`uvicorn.run("assistant.app:app_factory", factory=True, workers=N)`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi_offline import FastAPIOffline

from . import admin, api, pages
from .config import Settings
from .http_base import MAX_BODY_BYTES, AssistantHolder, BodyLimitMiddleware, SecurityHeadersMiddleware, install_error_handlers
from .owner_log import OwnerLog

if TYPE_CHECKING:
    from .assistant import Assistant

log = logging.getLogger(__name__)


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


DESCRIPTION = """
Extractive, cited question answering over a folder of articles.

Answers are passages quoted verbatim from the articles, with the answering sentence(s)
marked by offsets, and a link to the article at that passage. The server is stateless:
a conversation is carried by sending the earlier questions as `history`.

Every error has the shape `{"error": {"status", "message", "details"}}`.
"""


def create_app(assistant: "Assistant | None" = None, settings: Settings | None = None,
               owner_log: OwnerLog | None = None) -> FastAPI:
    """The FastAPI app. Pass an open Assistant, or settings (default: from the environment);
    `owner_log` (the question log and feedback) defaults to the environment's settings."""
    if settings is None:
        settings = assistant.settings if assistant is not None else Settings.from_env()
    holder = AssistantHolder(settings, assistant)
    owner = owner_log if owner_log is not None else OwnerLog.from_env(settings.index_dir)

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
            await run_in_threadpool(owner.close)

    # FastAPIOffline serves the Swagger UI and ReDoc assets itself: /docs works with no internet
    app = FastAPIOffline(
        title="Article assistant",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "ask", "description": "Ask questions, and say whether an answer helped."},
            {"name": "documents", "description": "The indexed articles."},
            {"name": "service", "description": "Health of the service."},
            {"name": "pages", "description": "HTML pages for people."},
            {"name": "admin", "description": admin.ADMIN_TAG_DESCRIPTION},
        ],
    )
    app.state.holder = holder
    app.state.settings = settings
    app.state.owner_log = owner

    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES, wider=admin.body_limits())
    app.add_middleware(SecurityHeadersMiddleware)

    api.install(app, holder, owner)
    admin.install(app, holder, owner)
    pages.install(app, holder)
    return app


def app_factory() -> FastAPI:
    """For `uvicorn.run("assistant.app:app_factory", factory=True, workers=N)`: settings from the environment."""
    return create_app(settings=Settings.from_env())


__all__ = ["create_app", "app_factory"]
