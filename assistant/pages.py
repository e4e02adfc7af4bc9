"""Readers' HTML pages: the chat page and the article view (Jinja2, autoescaped; see templating).

Example questions for the empty chat page come from web/examples.json, or from the JSON file
named by the ASSISTANT_EXAMPLES_FILE environment variable.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .errors import AssistantError
from .models import ArticleView
from .templating import STATIC_DIR, WEB_DIR, render

if TYPE_CHECKING:
    from .http_base import AssistantHolder

log = logging.getLogger(__name__)


EXAMPLES_FILE = WEB_DIR / "examples.json"
EXAMPLES_ENV = "ASSISTANT_EXAMPLES_FILE"


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
