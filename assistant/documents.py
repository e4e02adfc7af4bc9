"""Read articles from the corpus folder and clean them: Document(doc_id, title, path, text).

Cleaning drops site boilerplate by general rules (contact lines, bylines, calls to action,
footer sections, dangling trailing headings), never by matching particular strings of a site.
"""
from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from . import citation as cit
from .errors import UnsupportedFileError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".text"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
PDF_SUFFIXES = {".pdf"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | MARKDOWN_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES


@dataclass(frozen=True)
class Document:
    """One cleaned article. `text` is what answers quote and what offsets point into."""

    doc_id: str
    title: str
    path: str
    text: str
    sha256: str
    # what the article says about itself (citation.py); never part of `text`
    author: str | None = None
    published: str | None = None
    site: str | None = None
    original_url: str | None = None


class UnreadableFileError(Exception):
    """The file exists but cannot be read or decoded."""


# --- discovery -------------------------------------------------------------------------------

def discover(corpus_dir: Path) -> list[Path]:
    """Article files under the corpus folder, sorted; hidden files and folders are ignored."""
    corpus_dir = Path(corpus_dir)
    found = []
    for p in corpus_dir.rglob("*"):
        rel = p.relative_to(corpus_dir)
        if any(part.startswith((".", "_")) for part in rel.parts):
            continue
        if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES:
            found.append(p)
    return sorted(found)


def doc_id_for(path: Path, corpus_dir: Path) -> str:
    """Stable id: the path relative to the corpus folder, without extension, '/'-separated."""
    rel = Path(path).relative_to(corpus_dir)
    return rel.with_suffix("").as_posix()


def file_sha256(path: Path) -> str:
    """The article's content hash: its bytes, and its metadata sidecar when it has one (so
    adding or fixing the original URL counts as a change for the next reindex)."""
    return _content_sha256(Path(path).read_bytes(), cit.read_sidecar_bytes(path))


def _content_sha256(raw: bytes, sidecar: bytes | None) -> str:
    h = hashlib.sha256(raw)
    if sidecar:
        h.update(b"\x00sidecar\x00" + sidecar)
    return h.hexdigest()


# --- reading ---------------------------------------------------------------------------------

def read_document(path: Path, corpus_dir: Path, raw: bytes | None = None) -> Document:
    """Read and clean one file. Raises UnreadableFileError when it cannot be decoded or parsed."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFileError(
            f"{path.name}: unsupported file type {suffix!r}; "
            f"choose from {', '.join(sorted(SUPPORTED_SUFFIXES))}"
        )
    try:
        raw = path.read_bytes() if raw is None else raw
    except OSError as e:
        raise UnreadableFileError(f"{path}: cannot be read ({e.strerror or e})") from e
    sidecar = cit.read_sidecar_bytes(path)
    sha = _content_sha256(raw, sidecar)
    if suffix in PDF_SUFFIXES:
        lines, title, meta = _pdf_lines(raw, path)
    else:
        text = _decode(raw, path)
        if suffix in HTML_SUFFIXES:
            lines, title, meta = _html_lines(text)
        elif suffix in MARKDOWN_SUFFIXES:
            lines, title = _markdown_lines(text)
            meta = cit.from_front_matter(_front_matter(text))
        else:
            lines, title, meta = _plain_lines(text), None, cit.Citation()
    by, used = cit.byline(lines)
    if used:  # byline and date lines are metadata, not article text
        lines = [x for i, x in enumerate(lines) if i not in used]
    meta = cit.from_sidecar(sidecar, path).merged(meta).merged(by).with_site_from_url()
    lines = clean_lines(lines)
    if not lines:
        raise UnreadableFileError(f"{path}: no article text found")
    title = _normalise_space(title) if title else None
    if not title:
        title = _title_from_lines(lines) or _title_from_filename(path, "\n".join(lines))
    return Document(
        doc_id=doc_id_for(path, corpus_dir),
        title=title,
        path=Path(path).relative_to(corpus_dir).as_posix(),
        text="\n".join(lines),
        sha256=sha,
        author=meta.author,
        published=meta.published,
        site=meta.site,
        original_url=meta.original_url,
    )


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UnreadableFileError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from e


def _normalise_space(s: str) -> str:
    s = unicodedata.normalize("NFC", s).replace("\u00a0", " ").replace("\t", " ")
    return re.sub(r"[ \u2000-\u200b]+", " ", s).strip()


def _plain_lines(text: str) -> list[str]:
    return [_normalise_space(line) for line in text.splitlines()]


_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_MD_EMPH = re.compile(r"(\*\*|\*|`)(?=\S)(.+?)(?<=\S)\1|(?<!\w)(__|_)(?=\S)(.+?)(?<=\S)\3(?!\w)")


def _markdown_lines(text: str) -> tuple[list[str], str | None]:
    """Markdown to plain lines: markers out, words kept; the first '# ' heading is the title."""
    title = None
    lines: list[str] = []
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    body = text.splitlines()
    if body and body[0].strip() == "---":  # YAML front matter
        for i in range(1, len(body)):
            if body[i].strip() == "---":
                for fm in body[1:i]:
                    m = re.match(r"\s*title\s*:\s*['\"]?(.*?)['\"]?\s*$", fm)
                    if m:
                        title = m.group(1)
                body = body[i + 1 :]
                break
    for line in body:
        s = line.strip()
        if s.startswith("```") or re.fullmatch(r"[-*_=]{3,}", s):
            lines.append("")
            continue
        m = re.match(r"(#{1,6})\s+(.*?)\s*#*\s*$", s)
        if m:
            s = m.group(2)
            if title is None and len(m.group(1)) == 1:
                title = _strip_inline_md(s)
        s = re.sub(r"^>\s?", "", s)
        s = re.sub(r"^[*+]\s+", "- ", s)
        lines.append(_normalise_space(_strip_inline_md(s)))
    return lines, title


def _strip_inline_md(s: str) -> str:
    s = _MD_LINK.sub(lambda m: m.group(1), s)
    for _ in range(2):
        s = _MD_EMPH.sub(lambda m: m.group(2) if m.group(1) else m.group(4), s)
    return s


def _front_matter(text: str) -> dict[str, str]:
    """`key: value` lines of a Markdown file's YAML front matter (flat keys only)."""
    body = text.lstrip("\ufeff").splitlines()
    items: dict[str, str] = {}
    if not body or body[0].strip() != "---":
        return items
    for line in body[1:60]:
        if line.strip() == "---":
            return items
        m = re.match(r"^([A-Za-z_][\w-]*)\s*:\s*['\"]?(.*?)['\"]?\s*$", line)
        if m and m.group(2):
            items[m.group(1).lower()] = m.group(2)
    return {}


def _html_lines(html: str) -> tuple[list[str], str | None, cit.Citation]:
    """Article text of a web page via trafilatura (it drops navigation, ads and footers)."""
    import trafilatura

    extracted = trafilatura.extract(
        html,
        output_format="markdown",
        include_comments=False,
        include_tables=True,
        include_formatting=True,
        include_links=False,
        include_images=False,
        favor_recall=True,
    )
    meta = trafilatura.extract_metadata(html)
    title = meta.title if meta is not None and meta.title else None
    if not extracted:
        return [], title, cit.Citation()
    lines, md_title = _markdown_lines(extracted)
    return lines, title or md_title, cit.from_html(html, meta)


_PAGE_NUMBER = re.compile(r"^(?:page\s*)?[-–—(\[]?\s*\d{1,4}\s*[-–—)\]]?(?:\s*(?:of|/)\s*\d{1,4})?$", re.I)
_BAD_PDF_TITLE = re.compile(r"^(untitled|microsoft (word|powerpoint) - .*|.*\.(docx?|pdf|odt|rtf|pptx?|tex|indd))$", re.I)


def _pdf_lines(raw: bytes, path: Path) -> tuple[list[str], str | None, cit.Citation]:
    """Text of a PDF via pypdf, as paragraphs: page numbers and running headers/footers out,
    hard-wrapped lines joined back (hyphenation undone), list items and headings kept apart.

    Paragraph ends are guessed from line lengths (pypdf's plain text has no vertical gaps):
    a line well short of the text width that ends a sentence, or a short line that does not
    (a heading), ends its paragraph; a full-width line continues into the next.
    """
    import io
    import logging as _logging

    from pypdf import PdfReader

    _logging.getLogger("pypdf").setLevel(_logging.ERROR)  # malformed-but-readable files warn a lot
    try:
        reader = PdfReader(io.BytesIO(raw))
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except Exception:
                ok = 0
            if not ok:
                raise UnreadableFileError(f"{path}: the PDF is password-protected")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta_title = None
        try:
            meta_title = reader.metadata.title if reader.metadata else None
        except Exception:
            meta_title = None
        info = cit.from_pdf_info(reader.metadata)
    except UnreadableFileError:
        raise
    except Exception as e:  # pypdf raises many kinds on damaged files; none may stop a reindex
        raise UnreadableFileError(f"{path}: not a readable PDF ({e.__class__.__name__}: {e})") from e
    page_lines = [[_normalise_space(x) for x in page.splitlines()] for page in pages]
    if not any(x for lines in page_lines for x in lines):
        raise UnreadableFileError(f"{path}: the PDF has no text layer (a scanned document? run OCR on it first)")
    page_lines = _drop_page_furniture(page_lines)
    lines = [x for page in page_lines for x in page + [""]]
    filled = sorted(len(x) for x in lines if len(x) >= 20)
    width = filled[int(0.9 * (len(filled) - 1))] if filled else max((len(x) for x in lines), default=0)

    paragraphs: list[str] = []
    current: list[str] = []

    def flush() -> None:
        if current:
            paragraphs.append(" ".join(current))
            current.clear()

    for s in lines:
        if not s:
            flush()
            continue
        if current:
            prev = current[-1]
            ends_sentence = bool(re.search(r"[.!?:;]['\")\]]?$", prev))
            if (
                _is_list_item(s)
                or (ends_sentence and len(prev) < 0.85 * width)
                or (not ends_sentence and len(prev) < 0.6 * width and not prev.endswith((",", "-")))
            ):
                flush()
        if current and re.search(r"[A-Za-z]-$", current[-1]) and s[:1].islower():
            current[-1] = current[-1][:-1] + s  # "recov-" + "ery"
        else:
            current.append(s)
    flush()
    title = meta_title.strip() if isinstance(meta_title, str) else None
    if title and (_BAD_PDF_TITLE.match(title) or len(title) < 3):
        title = None
    return paragraphs, title, info


def _drop_page_furniture(pages: list[list[str]]) -> list[list[str]]:
    """Page numbers, and lines repeated at the top or bottom of most pages (running headers)."""
    def key(line: str) -> str:
        return re.sub(r"\d+", "#", line.lower())

    repeated: set[str] = set()
    if len(pages) >= 2:
        from collections import Counter

        edges: Counter = Counter()
        for lines in pages:
            body = [x for x in lines if x]
            edges.update({key(x) for x in body[:2] + body[-2:]})
        repeated = {k for k, n in edges.items() if n >= max(2, (len(pages) + 1) // 2)}
    out = []
    for n, lines in enumerate(pages):
        body = list(lines)
        nonempty = [i for i, x in enumerate(body) if x]
        # the top of page 1 stays: a running header there is usually the title, said once
        edge = set((nonempty[:2] if n else []) + nonempty[-2:])
        out.append([
            "" if (x and _PAGE_NUMBER.match(x)) or (i in edge and key(x) in repeated) else x
            for i, x in enumerate(body)
        ])
    return out


# --- cleaning --------------------------------------------------------------------------------

_PHONE = re.compile(r"(\+\d{1,3}[\s.-]?)?\(?\b\d{3}\)?[\s.-]?\d{3}[\s.-]\d{4}\b")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")
_MONTH = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_DATE = re.compile(rf"\b({_MONTH}\s+\d{{1,2}},?\s*\d{{4}}|\d{{1,2}}\s+{_MONTH}\s+\d{{4}}|\d{{4}}-\d{{2}}-\d{{2}}|\d{{1,2}}/\d{{1,2}}/\d{{2,4}})", re.I)
_CALL_TO_ACTION = re.compile(
    r"^(subscribe|sign up)\b|\b(subscribe to|sign up for) (our|the) newsletter|"
    r"\b(check out|click here|shop now|order now|buy now|add to cart|"
    r"contact us|call us|email us|book (an|a|your) (appointment|consultation)|"
    r"if you are interested in (buying|purchasing|ordering)|"
    r"(feel free|do not hesitate|don't hesitate) to (reach out|contact|call|get in touch))\b",
    re.I,
)
_FOOTER_HEADINGS = re.compile(
    r"^(about the author|comments?|leave a (reply|comment)|related (posts|articles)|share this( article| post)?|"
    r"you may also like|tags|categories|recent posts|subscribe|newsletter|follow us)\s*:?$",
    re.I,
)
_SEPARATOR = re.compile(r"^[\W_]{3,}$")
_LIST_ITEM = re.compile(r"^(?:[-*•·–]|\d{1,2}[.)]|[a-zA-Z][.)])\s+")


def _is_list_item(line: str) -> bool:
    return bool(_LIST_ITEM.match(line))


def _looks_like_heading(line: str) -> bool:
    """Short and not a sentence: 'Pain and Recovery:', 'Exosome Therapy', 'Key Points:'."""
    words = line.split()
    return 0 < len(words) <= 12 and not re.search(r"[.!?;,]['\")\]]?$", line) and not _is_list_item(line)


def is_boilerplate(line: str) -> bool:
    """Lines that are site furniture rather than article content."""
    words = line.split()
    if _SEPARATOR.match(line):
        return True
    if len(words) <= 40 and (_PHONE.search(line) or _EMAIL.search(line)):
        return True
    if (len(words) <= 12 and _DATE.search(line) and not re.search(r"[.!?]$", line) and not _is_list_item(line)
            and (re.search(r"\bby\b|\bposted\b|\bupdated\b|\bpublished\b", line, re.I) or len(words) <= 5)):
        return True  # a byline or date stamp
    if len(words) <= 40 and _CALL_TO_ACTION.search(line):
        return True
    return False


def clean_lines(lines: list[str]) -> list[str]:
    """Drop boilerplate, footer sections and dangling trailing headings; no empty lines."""
    kept: list[str] = []
    for line in lines:
        if not line:
            continue
        if _FOOTER_HEADINGS.match(line) and len(kept) >= 3:
            # a footer section (author bio, comments, related posts) runs to the end of the page
            break
        if is_boilerplate(line):
            continue
        if kept and kept[-1] == line:
            continue
        kept.append(line)
    while kept and _looks_like_heading(kept[-1]) and len(kept[-1].split()) <= 6:
        kept.pop()  # a heading with nothing under it ("PRP Kits", "Comments")
    return kept


# --- titles ----------------------------------------------------------------------------------

def _title_from_lines(lines: list[str]) -> str | None:
    """The first line reads as a title when it is short, starts upper-case and is not a sentence."""
    for i, line in enumerate(lines[:2]):
        words = line.split()
        if 3 <= len(words) <= 16 and line[0].isupper() and not re.search(r"[.!?]$", line) and not _is_list_item(line):
            return line.rstrip(":")
        if len(words) > 4 or re.search(r"[.!?:]$", line):
            break  # an opening sentence: what follows is body or a section heading, not the title
    return None


def _title_from_filename(path: Path, text: str) -> str:
    """'prp-injections-vs-exosome-therapy' -> 'PRP Injections vs Exosome Therapy'."""
    words = re.split(r"[-_\s]+", Path(path).stem)
    out = []
    for i, w in enumerate(w for w in words if w):
        if re.search(rf"\b{re.escape(w.upper())}\b", text) and len(w) <= 5 and w.upper() != w.capitalize():
            out.append(w.upper())
        elif w.lower() in {"vs", "and", "or", "of", "the", "with", "for", "in", "on", "to", "a", "an"} and i:
            out.append(w.lower())
        else:
            out.append(w.capitalize())
    return " ".join(out) or Path(path).stem


# --- the whole folder ------------------------------------------------------------------------

def load_corpus(corpus_dir: Path) -> tuple[list[Document], list[str]]:
    """All readable articles, and the files skipped with a warning."""
    corpus_dir = Path(corpus_dir)
    docs, skipped = [], []
    for p in discover(corpus_dir):
        try:
            docs.append(read_document(p, corpus_dir))
        except UnreadableFileError as e:
            log.warning("skipped %s", e)
            skipped.append(p.relative_to(corpus_dir).as_posix())
    return docs, skipped
