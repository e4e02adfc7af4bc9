"""HTML pages: the chat page, the article view and the error page (Jinja2, autoescaped).

Templates live in web/templates, CSS and JS in web/static (served at /static). Example
questions for the empty chat page come from web/examples.json, or from the JSON file named by
the ASSISTANT_EXAMPLES_FILE environment variable.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .errors import AssistantError
from .models import ArticleView

if TYPE_CHECKING:
    from .api import AssistantHolder

log = logging.getLogger(__name__)


def _web_dir() -> Path:
    """web/ of a source checkout, or the copy a wheel installs as assistant/web."""
    here = Path(__file__).resolve().parent
    return next((d for d in (here.parent / "web", here / "web") if (d / "templates").is_dir()), here.parent / "web")


WEB_DIR = _web_dir()
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"
EXAMPLES_FILE = WEB_DIR / "examples.json"
EXAMPLES_ENV = "ASSISTANT_EXAMPLES_FILE"

_env: jinja2.Environment | None = None
_static_version: str | None = None


def env() -> jinja2.Environment:
    global _env
    if _env is None:
        _env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
            autoescape=True,  # everything from an article is text, never markup
            trim_blocks=True,
            lstrip_blocks=True,
        )
        _env.globals["static"] = static_url
    return _env


def static_url(name: str) -> str:
    """/static/<name>?v=<hash of the static files>, so browsers never keep a stale script."""
    global _static_version
    if _static_version is None:
        h = hashlib.sha256()
        for p in sorted(STATIC_DIR.rglob("*")):
            if p.is_file():
                h.update(p.name.encode())
                h.update(p.read_bytes())
        _static_version = h.hexdigest()[:10]
    return f"/static/{name}?v={_static_version}"


def render(request: Request, name: str, context: dict[str, Any], status: int = 200,
           headers: dict | None = None) -> HTMLResponse:
    root = (request.scope.get("root_path") or "").rstrip("/")
    html = env().get_template(name).render(root=root, **context)
    return HTMLResponse(html, status_code=status, headers=headers)


# --- examples --------------------------------------------------------------------------------

def load_examples(path: str | Path | None = None) -> list[str]:
    """Example questions: a JSON list of strings, or {"examples": [...]}. Missing file: none."""
    path = Path(path or os.environ.get(EXAMPLES_ENV) or EXAMPLES_FILE)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        log.warning("cannot read example questions from %s: %s", path, e)
        return []
    if isinstance(data, dict):
        data = data.get("examples", [])
    if not isinstance(data, list):
        return []
    return [q.strip() for q in data if isinstance(q, str) and q.strip()][:8]


# --- article view ----------------------------------------------------------------------------

@dataclass
class Segment:
    text: str
    mark: bool = False
    first: bool = False  # the first marked segment carries id="passage"


@dataclass
class Paragraph:
    kind: str  # "p", "subhead", "item"
    segments: list[Segment] = field(default_factory=list)
    in_passage: bool = False


_LIST_ITEM = re.compile(r"^(?:[-*•–]\s|\d{1,2}[.)]\s)")
_SENTENCE_END = re.compile(r"[.!?,;…]['\"”’)\]]*$")


def _kind(line: str) -> str:
    if _LIST_ITEM.match(line):
        return "item"
    if len(line) <= 90 and len(line.split()) <= 12 and not _SENTENCE_END.search(line):
        return "subhead"
    return "p"


def paragraphs(text: str, start: int | None, end: int | None, skip_title: str | None = None) -> list[Paragraph]:
    """The text split on newlines, each line cut into plain and highlighted segments."""
    has_mark = start is not None and end is not None and 0 <= start < end <= len(text)
    out: list[Paragraph] = []
    pos = 0
    first_done = False
    for i, line in enumerate(text.split("\n")):
        a, b = pos, pos + len(line)
        pos = b + 1
        if not line.strip():
            continue
        hit = has_mark and a < end and start < b  # type: ignore[operator]
        if i == 0 and skip_title and line.strip() == skip_title.strip() and not hit:
            continue  # the title is already the page heading
        para = Paragraph(kind=_kind(line), in_passage=hit)
        if hit:
            s, e = max(start, a) - a, min(end, b) - a  # type: ignore[type-var]
            if s > 0:
                para.segments.append(Segment(line[:s]))
            para.segments.append(Segment(line[s:e], mark=True, first=not first_done))
            first_done = True
            if e < len(line):
                para.segments.append(Segment(line[e:]))
        else:
            para.segments.append(Segment(line))
        out.append(para)
    return out


def render_article(request: Request, view: ArticleView, start: int | None, end: int | None) -> HTMLResponse:
    valid = start is not None and end is not None and 0 <= start < end <= len(view.text)
    paras = paragraphs(view.text, start if valid else None, end if valid else None, skip_title=view.title)
    return render(request, "article.html", {
        "view": view,
        "paragraphs": paras,
        "highlighted": valid,
        "asked_for_passage": start is not None or end is not None,
        "words": len(view.text.split()),
    })


def render_error(request: Request, status: int, message: str, headers: dict | None = None) -> HTMLResponse:
    titles = {400: "Bad request", 404: "Not found", 405: "Not allowed", 413: "Too large",
              422: "Cannot use that request", 503: "Not ready yet", 500: "Something went wrong"}
    return render(request, "error.html", {
        "status": status, "title": titles.get(status, "Error"), "message": message,
    }, status=status, headers=headers)


# --- routes ----------------------------------------------------------------------------------

def install(app: FastAPI, holder: "AssistantHolder") -> None:
    """Mount the static files and add the chat page to the app."""
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    examples = load_examples()

    @app.get(
        "/",
        response_class=HTMLResponse,
        tags=["pages"],
        summary="The chat page",
        description="A conversation with the assistant in the browser. The conversation is kept in "
                    "the browser's sessionStorage and sent to POST /ask as `history`.",
        responses={200: {"content": {"text/html": {}}, "description": "The chat page."}},
    )
    def chat(request: Request) -> HTMLResponse:
        docs, problem = [], None
        try:
            docs = holder.get().documents()
        except AssistantError as e:
            problem = str(e)
        s = holder.settings
        return render(request, "chat.html", {
            "examples": examples,
            "documents": sorted(docs, key=lambda d: d.title.lower()),
            "problem": problem,
            "max_question_chars": s.max_question_chars,
            "max_history": s.max_history,
            "top_k": 3,
        })
