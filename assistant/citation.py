"""What an article says about itself, for citations: author, publication date, site, original URL.

Sources, first found wins per field:
1. the sidecar `.<file name>.meta.json` next to the article (written when a .txt/.md/.pdf is
   uploaded with its web address; an owner may write one by hand to fix any field);
2. the file's own metadata: HTML meta tags via trafilatura's metadata extraction (author, date,
   site name, canonical URL; a page saved by `assistant add URL` or uploaded with its address
   carries `<meta name="original-url">`), Markdown front matter (author, date/published, site,
   url), PDF document info (author, creation date);
3. byline and date lines at the top of the text ("By Jane Doe", "Posted by Jane Doe on March 12,
   2023", "Published: 2023-03-12", "January 14, 2021 by PRP Kits"): the same kind of lines the
   cleaner drops as boilerplate. Lines used for metadata are removed from the body text.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, fields, replace
from datetime import date, datetime
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".meta.json"
FIELDS = ("author", "published", "site", "original_url")
MAX_FIELD = 300


@dataclass(frozen=True)
class Citation:
    author: str | None = None
    published: str | None = None  # ISO 8601 date: YYYY-MM-DD (or YYYY-MM, YYYY)
    site: str | None = None
    original_url: str | None = None

    def merged(self, other: "Citation") -> "Citation":
        """Fields of self, filled in from `other` where self has none."""
        return replace(self, **{f.name: getattr(self, f.name) or getattr(other, f.name) for f in fields(self)})

    def with_site_from_url(self) -> "Citation":
        if self.site or not self.original_url:
            return self
        host = urlsplit(self.original_url).hostname or ""
        return replace(self, site=host.removeprefix("www.") or None)


# --- the sidecar -------------------------------------------------------------------------------

def sidecar_path(article: Path) -> Path:
    """corpus/guides/a.txt -> corpus/guides/.a.txt.meta.json (hidden: never read as an article)."""
    article = Path(article)
    return article.with_name(f".{article.name}{SIDECAR_SUFFIX}")


def read_sidecar_bytes(article: Path) -> bytes | None:
    try:
        return sidecar_path(article).read_bytes()
    except OSError:
        return None


def from_sidecar(raw: bytes | None, article: Path) -> Citation:
    if not raw:
        return Citation()
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as e:
        log.warning("ignored %s: %s", sidecar_path(article), e)
        return Citation()
    vals = {k: _clean(data.get(k)) for k in FIELDS}
    vals["published"] = normalise_date(vals["published"]) if vals["published"] else None
    if vals["original_url"] and not _is_web_url(vals["original_url"]):
        vals["original_url"] = None
    return Citation(**vals)


def _clean(v: object) -> str | None:
    if not isinstance(v, str):
        return None
    v = " ".join(v.split())
    return v[:MAX_FIELD] or None


def _is_web_url(u: str) -> bool:
    p = urlsplit(u)
    return p.scheme in ("http", "https") and bool(p.hostname)


# --- dates -------------------------------------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
DATE_RE = re.compile(
    rf"\b(?:(?P<m1>{_MONTH})\s+(?P<d1>\d{{1,2}})(?:st|nd|rd|th)?,?\s*(?P<y1>\d{{4}})"
    rf"|(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\s+(?P<m2>{_MONTH}),?\s+(?P<y2>\d{{4}})"
    rf"|(?P<y3>\d{{4}})-(?P<m3>\d{{1,2}})-(?P<d3>\d{{1,2}})"
    rf"|(?P<a4>\d{{1,2}})/(?P<b4>\d{{1,2}})/(?P<y4>\d{{4}}))",
    re.I,
)


def _iso(y: int, m: int, d: int) -> str | None:
    try:
        return date(y, m, d).isoformat()
    except ValueError:
        return None


def parse_date(text: str) -> str | None:
    """The first date in `text` as YYYY-MM-DD ("12/03/2023" is read month first unless that
    cannot be a date)."""
    m = DATE_RE.search(text or "")
    if not m:
        return None
    g = m.groupdict()
    if g["y1"]:
        return _iso(int(g["y1"]), _MONTHS[g["m1"][:3].lower()], int(g["d1"]))
    if g["y2"]:
        return _iso(int(g["y2"]), _MONTHS[g["m2"][:3].lower()], int(g["d2"]))
    if g["y3"]:
        return _iso(int(g["y3"]), int(g["m3"]), int(g["d3"]))
    a, b, y = int(g["a4"]), int(g["b4"]), int(g["y4"])
    return _iso(y, a, b) or _iso(y, b, a)


def normalise_date(value: object) -> str | None:
    """A date from metadata (ISO strings, datetimes, 'D:20230312...' PDF dates) as YYYY-MM-DD."""
    if value is None:
        return None
    if isinstance(value, (datetime, date)):
        return value.strftime("%Y-%m-%d")
    s = str(value).strip()
    m = re.match(r"^(?:D:)?(\d{4})(\d{2})(\d{2})", s)
    if m:
        return _iso(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    m = re.match(r"^(\d{4})-(\d{2})(?:-(\d{2}))?", s)
    if m:
        if m.group(3):
            return _iso(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        return f"{m.group(1)}-{m.group(2)}"
    return parse_date(s)


# --- bylines in the text -----------------------------------------------------------------------

# case-sensitive inside case-insensitive patterns: a name is capitalised words ("on 4 May" is not)
_NAME = r"(?-i:(?:(?:Dr|Mr|Mrs|Ms|Prof)\.?\s+)?[A-Z][\w'’.-]*(?:\s+(?:[A-Z][\w'’.-]*|de|van|von|der|da|di|la|le)){0,4})"
_BY = re.compile(rf"(?:^|\s|\d)(?:written\s+|posted\s+|published\s+|reviewed\s+)?by\s*(?P<name>{_NAME})", re.I)
_AUTHOR_LABEL = re.compile(rf"^(?:author|written by|by)\s*[:\-–]\s*(?P<name>{_NAME})\s*$", re.I)
_DATE_LABEL = re.compile(r"^(?:published|posted|updated|last updated|date|published on|posted on)\b", re.I)
TOP_LINES = 12


def _name(raw: str) -> str | None:
    name = re.split(r"\s+(?:on|in|at|for|\||·|-|–)\s+|\s*[|·,]\s*", raw.strip())[0].strip(" .,-–|")
    words = name.split()
    if not 1 <= len(words) <= 5 or not name[:1].isupper():
        return None
    return name


def byline(lines: list[str]) -> tuple[Citation, set[int]]:
    """Author and date from byline / date lines among the first non-empty lines; and the indices
    of those lines (they are metadata, not article text)."""
    author = published = None
    used: set[int] = set()
    seen = 0
    for i, line in enumerate(lines):
        s = line.strip()
        if not s:
            continue
        seen += 1
        if seen > TOP_LINES:
            break
        words = s.split()
        if len(words) > 14 or re.search(r"[.!?]$", s) and not DATE_RE.search(s):
            continue
        found_date = parse_date(s) if DATE_RE.search(s) else None
        m = _AUTHOR_LABEL.match(s)
        name = _name(m.group("name")) if m else None
        if name is None:
            bm = _BY.search(s)
            # "By Jane Doe" alone, or with a date / "posted" / "published" on the line
            if bm and (bm.start() == 0 or found_date or re.match(r"^(?:written|posted|published|reviewed)\b", s, re.I)
                       or DATE_RE.search(s[: bm.start() + 1])):
                name = _name(bm.group("name"))
                if name and bm.start() == 0 and len(words) > 8 and not found_date:
                    name = None  # "By using microneedling, ..." is a sentence, not a byline
        date_line = found_date and (len(words) <= 6 or _DATE_LABEL.match(s) or name)
        if name and not author:
            author = name
            used.add(i)
        if date_line and not published:
            published = found_date
            used.add(i)
    return Citation(author=author, published=published), used


# --- the original URL kept inside a saved web page ---------------------------------------------

_ORIGINAL_URL_META = re.compile(
    r"""<meta\s+name=["']original-url["']\s+content=["']([^"'<>]*)["']\s*/?>""", re.I)


def embed_original_url(html: bytes, url: str) -> bytes:
    """The page with `<meta name="original-url" content="...">` in its head (replacing one that is
    there): a page saved by `assistant add URL` or uploaded with its address says where it came from."""
    import html as html_mod

    tag = f'<meta name="original-url" content="{html_mod.escape(url, quote=True)}">'.encode()
    text = html
    m = _ORIGINAL_URL_META.search(text.decode("utf-8", "replace"))
    if m:
        return _ORIGINAL_URL_META.sub(tag.decode().replace("\\", "\\\\"), text.decode("utf-8", "replace"), count=1).encode("utf-8")
    head = re.search(rb"<head\b[^>]*>", text, re.I)
    if head:
        return text[: head.end()] + b"\n" + tag + text[head.end():]
    return tag + b"\n" + text


def embedded_original_url(html: str) -> str | None:
    m = _ORIGINAL_URL_META.search(html)
    if not m:
        return None
    import html as html_mod

    url = html_mod.unescape(m.group(1)).strip()
    return url if _is_web_url(url) else None


# --- from the file's own metadata --------------------------------------------------------------

def from_html(html: str, meta: object = None) -> Citation:
    """trafilatura's metadata (pass it if already extracted): meta tags (author,
    article:published_time, og:site_name, canonical / og:url), JSON-LD, its date heuristics."""
    if meta is None:
        try:
            import trafilatura

            meta = trafilatura.extract_metadata(html)
        except Exception as e:  # metadata is a nicety: never a reason to refuse an article
            log.info("no metadata from the page (%s)", e)
            return Citation()
    if meta is None:
        return Citation()
    url = embedded_original_url(html) or _clean(getattr(meta, "url", None))
    author = _clean(getattr(meta, "author", None))
    if author:
        author = "; ".join(a.strip() for a in author.split(";") if a.strip()) or None
    return Citation(
        author=author,
        published=normalise_date(getattr(meta, "date", None)),
        site=_clean(getattr(meta, "sitename", None)),
        original_url=url if url and _is_web_url(url) else None,
    )


def from_front_matter(items: dict[str, str]) -> Citation:
    get = lambda *keys: next((_clean(items[k]) for k in keys if k in items and _clean(items[k])), None)  # noqa: E731
    url = get("original_url", "url", "source", "canonical_url")
    return Citation(
        author=get("author", "authors", "by"),
        published=normalise_date(get("published", "date", "updated", "pubdate")),
        site=get("site", "site_name", "publisher"),
        original_url=url if url and _is_web_url(url) else None,
    )


def from_pdf_info(info: object) -> Citation:
    if info is None:
        return Citation()
    try:
        author = _clean(getattr(info, "author", None))
        created = getattr(info, "creation_date", None)
    except Exception:  # pypdf raises on malformed info dictionaries
        return Citation()
    return Citation(author=author, published=normalise_date(created))
