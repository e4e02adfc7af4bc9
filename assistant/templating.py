"""Jinja2 rendering shared by every HTML page (reader pages, the admin page, error pages).

Templates live in web/templates, CSS and JS in web/static (served at /static). Autoescaping is
on: everything that comes from an article is text, never markup.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse


def _web_dir() -> Path:
    """web/ of a source checkout, or the copy a wheel installs as assistant/web."""
    here = Path(__file__).resolve().parent
    return next((d for d in (here.parent / "web", here / "web") if (d / "templates").is_dir()), here.parent / "web")


WEB_DIR = _web_dir()
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"

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
        _env.filters["human_date"] = human_date
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


_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]


def human_date(iso: str | None) -> str:
    """'2023-03-12' -> '12 March 2023'; '2023-03' -> 'March 2023'; anything else as given."""
    if not iso:
        return ""
    parts = str(iso)[:10].split("-")
    try:
        if len(parts) == 3:
            return f"{int(parts[2])} {_MONTHS[int(parts[1]) - 1]} {int(parts[0])}"
        if len(parts) == 2:
            return f"{_MONTHS[int(parts[1]) - 1]} {int(parts[0])}"
    except (ValueError, IndexError):
        pass
    return str(iso)


def render(request: Request, name: str, context: dict[str, Any], status: int = 200,
           headers: dict | None = None) -> HTMLResponse:
    root = (request.scope.get("root_path") or "").rstrip("/")
    html = env().get_template(name).render(root=root, **context)
    return HTMLResponse(html, status_code=status, headers=headers)


def render_error(request: Request, status: int, message: str, headers: dict | None = None) -> HTMLResponse:
    titles = {400: "Bad request", 401: "Not signed in", 403: "Not allowed", 404: "Not found", 405: "Not allowed",
              413: "Too large", 422: "Cannot use that request", 429: "Too many attempts",
              503: "Not ready yet", 500: "Something went wrong"}
    return render(request, "error.html", {
        "status": status, "title": titles.get(status, "Error"), "message": message,
    }, status=status, headers=headers)
