"""Putting articles into the corpus folder (a file, a web page, an upload) and taking them out.

Everything here only writes files; the caller reindexes afterwards. The rules, shared by
`assistant add`, the upload route and DELETE /documents/{doc_id}:

- an article must be readable before it is saved: a supported type (.txt, .md, .html, .pdf),
  at most MAX_BYTES, with article text the normal reader finds;
- file names are plain names (a path is refused, never followed), tidied into letters,
  digits, '-', '_' and '.'; nothing is written outside the corpus folder;
- files are written under a hidden temporary name, flushed, then renamed into place, so
  neither a reindex nor the watcher ever sees half a file;
- an existing different file is never overwritten unless asked (`replace`); the same content
  again is a no-op. Two files can't claim one doc_id (`a.txt` and `a.md`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .documents import (
    HTML_SUFFIXES,
    SUPPORTED_SUFFIXES,
    UnreadableFileError,
    doc_id_for,
    read_document,
)
from .errors import AssistantError, UnsupportedFileError

log = logging.getLogger(__name__)

MAX_BYTES = 5 * 1024 * 1024
FETCH_TIMEOUT = 20.0
MAX_STEM = 100
USER_AGENT = "assistant/0.1 (article fetcher; +https://github.com/)"


class SourceError(AssistantError):
    """The file or URL can't be added (missing, unreachable, not an article, too large...)."""


class InvalidNameError(SourceError):
    """The file name is a path or has nothing usable in it."""


class TooLargeError(SourceError):
    """Over MAX_BYTES."""


class DocumentExistsError(AssistantError):
    """A different file already has that name (or that doc_id)."""


@dataclass
class Added:
    doc_id: str
    path: Path  # where it is in the corpus folder
    status: str  # "added", "replaced" or "unchanged"
    title: str

    @property
    def rel(self) -> str:
        return self.path.name


def supported_list() -> str:
    return ", ".join(sorted(SUPPORTED_SUFFIXES))


# --- names -----------------------------------------------------------------------------------

def plain_filename(name: str) -> str:
    """A client's file name made safe, or InvalidNameError/UnsupportedFileError.

    A name with a directory part ('../../x.txt', 'a/b.txt', 'C:\\x.txt') is refused rather than
    trimmed: whoever sent it should learn that paths are not accepted.
    """
    if not isinstance(name, str) or not name.strip():
        raise InvalidNameError("The file has no name; send it with a file name like article.txt.")
    raw = name.strip()
    if "/" in raw or "\\" in raw or "\x00" in raw or raw in (".", "..") or re.match(r"^[A-Za-z]:", raw):
        raise InvalidNameError(
            f"The file name {raw!r} is a path; send a plain file name like article.txt (no folders, no '..')."
        )
    stem, dot, suffix = raw.rpartition(".")
    if not dot or not stem:
        raise UnsupportedFileError(f"{raw}: the file name has no extension; choose from {supported_list()}.")
    suffix = "." + suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFileError(f"{raw}: unsupported file type {suffix!r}; choose from {supported_list()}.")
    clean = _tidy(stem, lower=False)
    if not clean:
        raise InvalidNameError(f"The file name {raw!r} has no letters or digits to name the article by.")
    return clean + suffix


def slug(text: str, max_len: int = 80) -> str:
    """'Exosomes vs. PRP – A Guide' -> 'exosomes-vs-prp-a-guide' (ASCII, lower case)."""
    t = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _tidy(t, lower=True, max_len=max_len)


def _tidy(stem: str, lower: bool, max_len: int = MAX_STEM) -> str:
    s = unicodedata.normalize("NFKC", stem)
    s = re.sub(r"[^\w-]+" if lower else r"[^\w.-]+", "-", s)
    s = re.sub(r"-{2,}", "-", s).strip("-._")  # no leading '.'/'_' (hidden files are ignored)
    s = re.sub(r"\.{2,}", ".", s)
    if lower:
        s = s.lower()
    return s[:max_len].rstrip("-._")


# --- writing ---------------------------------------------------------------------------------

def _inside(corpus_dir: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(corpus_dir.resolve())
        return True
    except ValueError:
        return False


def files_of(corpus_dir: Path, doc_id: str) -> list[Path]:
    """The files in the corpus folder whose doc_id is `doc_id` (any supported extension)."""
    corpus_dir = Path(corpus_dir)
    parts = doc_id.split("/") if isinstance(doc_id, str) else []
    if not parts or any(p in ("", ".", "..") or p.startswith((".", "_")) for p in parts) or "\\" in doc_id or "\x00" in doc_id:
        return []
    folder = corpus_dir.joinpath(*parts[:-1])
    if not folder.is_dir() or not _inside(corpus_dir, folder):
        return []
    out = []
    for p in folder.iterdir():
        if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and doc_id_for(p, corpus_dir) == doc_id:
            if _inside(corpus_dir, p):
                out.append(p)
    return sorted(out)


def add_bytes(corpus_dir: Path, filename: str, data: bytes, replace: bool = False,
              original_url: str | None = None) -> Added:
    """Save an article under `filename` (a plain name) in the corpus folder, after checking it reads.

    `original_url` (where the article was published) is kept with it: inside a web page as
    `<meta name="original-url">`, else in the article's metadata sidecar (citation.py), written
    before the article so a reindex never sees one without the other."""
    corpus_dir = Path(corpus_dir)
    name = plain_filename(filename)
    if original_url and Path(name).suffix.lower() in HTML_SUFFIXES and len(data) <= MAX_BYTES:
        from .citation import embed_original_url

        data = embed_original_url(data, original_url)
        original_url = None  # it travels inside the page
    if len(data) > MAX_BYTES:
        raise TooLargeError(f"{name} is {len(data) / 1048576:.1f} MiB; the limit is {MAX_BYTES // 1048576} MiB.")
    if not data.strip():
        raise SourceError(f"{name} is empty.")
    corpus_dir.mkdir(parents=True, exist_ok=True)
    target = corpus_dir / name
    if not _inside(corpus_dir, target) or target.is_symlink() or (target.exists() and not target.is_file()):
        raise InvalidNameError(f"{name} can't be written in the corpus folder.")
    try:
        doc = read_document(target, corpus_dir, raw=data)
    except UnreadableFileError as e:
        raise SourceError(f"{name} can't be read as an article: {_reason(e)}") from None
    others = [p for p in files_of(corpus_dir, doc.doc_id) if p.name != target.name]
    if others and not replace:
        raise DocumentExistsError(
            f"The article {doc.doc_id!r} already exists as {others[0].name}; "
            "remove it first, choose another name, or replace it."
        )
    same = target.exists() and target.read_bytes() == data
    if target.exists() and not same and not replace:
        raise DocumentExistsError(
            f"{name} already exists in the corpus folder with different content; "
            "choose another name, or replace it."
        )
    # the metadata first: a reindex never sees the article without it (and nothing is written
    # for an add that is refused)
    meta_changed = _write_sidecar(target, original_url) if original_url else False
    if same:
        status = "unchanged"
        if meta_changed:
            os.utime(target)  # new size/time stamps: the next reindex re-reads it with its metadata
    elif target.exists():
        status = "replaced"
        _atomic_write(target, data, replace=True)
    else:
        status = "replaced" if others else "added"
        _atomic_write(target, data, replace=False)
    for p in others:  # replace=True: the other spelling of this doc_id goes
        p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            if original_url is None and _sidecar_of(p).exists() and not _sidecar_of(target).exists():
                os.replace(_sidecar_of(p), _sidecar_of(target))  # its metadata moves with it
            else:
                _sidecar_of(p).unlink()
    if others and status == "unchanged":
        status = "replaced"
    log.info("%s %s", status, target)
    return Added(doc.doc_id, target, status, doc.title)


def _sidecar_of(article: Path) -> Path:
    from .citation import sidecar_path

    return sidecar_path(article)


def _write_sidecar(article: Path, original_url: str) -> bool:
    """Set `original_url` in the article's metadata sidecar (other fields kept); True if it changed."""
    import json

    from .citation import sidecar_path

    side = sidecar_path(article)
    current: dict = {}
    try:
        loaded = json.loads(side.read_text(encoding="utf-8"))
        current = loaded if isinstance(loaded, dict) else {}
    except (OSError, ValueError):
        current = {}
    if current.get("original_url") == original_url:
        return False
    current["original_url"] = original_url
    _atomic_write(side, (json.dumps(current, ensure_ascii=False, indent=2) + "\n").encode("utf-8"), replace=True)
    return True


def _atomic_write(target: Path, data: bytes, replace: bool) -> None:
    """Write to a hidden temp file in the same folder, flush it, then rename it into place."""
    tmp = target.parent / f".tmp-{uuid.uuid4().hex}{target.suffix}"
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if the name was taken meanwhile: never overwrite
            except FileExistsError:
                raise DocumentExistsError(f"{target.name} appeared in the corpus folder meanwhile; try again.") from None
            except OSError:  # a file system without hard links
                if target.exists():
                    raise DocumentExistsError(f"{target.name} appeared in the corpus folder meanwhile; try again.") from None
                os.rename(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(e: Exception) -> str:
    """'corpus/x.txt: no article text found' -> 'no article text found'."""
    msg = str(e)
    return msg.split(": ", 1)[1] if ": " in msg else msg


# --- the three ways in -----------------------------------------------------------------------

def is_url(source: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", source))


def add_file(corpus_dir: Path, src: Path, name: str | None = None, replace: bool = False) -> Added:
    """Copy a file into the corpus folder (its own name, tidied, unless `name` is given)."""
    src = Path(src).expanduser()
    if not src.exists():
        raise SourceError(f"{src}: no such file.")
    if not src.is_file():
        raise SourceError(f"{src}: not a file (give one article file, or copy a folder into the corpus yourself).")
    filename = name or src.name
    if name and Path(name).suffix.lower() not in SUPPORTED_SUFFIXES and src.suffix.lower() in SUPPORTED_SUFFIXES:
        filename = name + src.suffix.lower()  # --name without an extension keeps the file's
    if src.suffix.lower() not in SUPPORTED_SUFFIXES and not name:
        raise UnsupportedFileError(f"{src.name}: unsupported file type {src.suffix.lower() or '(none)'!r}; "
                                   f"choose from {supported_list()}.")
    size = src.stat().st_size
    if size > MAX_BYTES:
        raise TooLargeError(f"{src} is {size / 1048576:.1f} MiB; the limit is {MAX_BYTES // 1048576} MiB.")
    try:
        data = src.read_bytes()
    except OSError as e:
        raise SourceError(f"{src}: cannot be read ({e.strerror or e}).") from None
    return add_bytes(corpus_dir, filename, data, replace=replace)


def fetch_url(url: str, timeout: float = FETCH_TIMEOUT, max_bytes: int = MAX_BYTES) -> tuple[str, bytes, str]:
    """Fetch a web page: (suggested file name, the page as UTF-8 HTML, the final URL)."""
    import httpx

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"{url}: only http:// and https:// web pages can be added.")
    try:
        with httpx.Client(follow_redirects=True, timeout=timeout, headers={"User-Agent": USER_AGENT}) as client:
            with client.stream("GET", url) as r:
                if r.status_code >= 400:
                    raise SourceError(f"{url} answered HTTP {r.status_code} {r.reason_phrase}; nothing was added.")
                ctype = r.headers.get("content-type", "")
                mime = ctype.split(";")[0].strip().lower()
                if mime not in ("text/html", "application/xhtml+xml"):
                    hint = " (download it and `assistant add` the file)" if mime == "application/pdf" else ""
                    raise SourceError(
                        f"{url} is not an HTML page (Content-Type: {ctype or 'none'}){hint}; nothing was added."
                    )
                body = bytearray()
                for chunk in r.iter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise TooLargeError(f"{url} is larger than {max_bytes // 1048576} MiB; nothing was added.")
                final_url = str(r.url)
                charset = r.charset_encoding
    except httpx.TimeoutException:
        raise SourceError(f"{url} did not answer within {timeout:.0f}s; nothing was added.") from None
    except httpx.HTTPError as e:
        raise SourceError(f"{url} could not be fetched ({e.__class__.__name__}: {e}); nothing was added.") from None
    html = _decode_html(bytes(body), charset)
    return _name_for_page(html, final_url), html.encode("utf-8"), final_url


def _decode_html(body: bytes, charset: str | None) -> str:
    """The page as text: the header's charset, else <meta charset>, else UTF-8, else cp1252."""
    candidates = [charset] if charset else []
    m = re.search(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_.:-]+)""", body[:4096], re.I)
    if m:
        candidates.append(m.group(1).decode("ascii", "ignore"))
    candidates += ["utf-8", "cp1252"]
    for enc in candidates:
        try:
            return body.decode(enc)
        except (LookupError, UnicodeDecodeError):
            continue
    return body.decode("utf-8", "replace")


def _name_for_page(html: str, url: str) -> str:
    """A file name from the page title, else from the URL's last path segment, else its host."""
    title = None
    try:
        import trafilatura

        meta = trafilatura.extract_metadata(html)
        title = meta.title if meta is not None else None
    except Exception:  # metadata is a nicety: fall back to the URL
        title = None
    if not title:
        m = re.search(r"<title[^>]*>(.*?)</title>", html, re.I | re.S)
        title = m.group(1) if m else None
    stem = slug(title) if title else ""
    if not stem:
        parts = urlsplit(url)
        last = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
        last = re.sub(r"\.(html?|php|aspx?|jsp)$", "", last, flags=re.I)
        stem = slug(last) or slug(parts.hostname or "") or "page"
    return stem + ".html"


def add_url(corpus_dir: Path, url: str, name: str | None = None, replace: bool = False) -> Added:
    """Fetch a web page and save it as .html in the corpus folder (the reader keeps its article text)."""
    filename, html, final_url = fetch_url(url)
    if name:
        filename = name if Path(name).suffix.lower() in HTML_SUFFIXES else name + ".html"
    try:
        return add_bytes(corpus_dir, filename, html, replace=replace, original_url=final_url)
    except SourceError as e:
        if "can't be read as an article" in str(e):
            raise SourceError(f"{url}: no article text found on the page; nothing was added.") from None
        raise


def add(corpus_dir: Path, source: str, name: str | None = None, replace: bool = False) -> Added:
    """A file path or an http(s) URL."""
    if is_url(source):
        return add_url(corpus_dir, source, name=name, replace=replace)
    return add_file(corpus_dir, Path(source), name=name, replace=replace)


def remove(corpus_dir: Path, doc_id: str) -> list[Path]:
    """Delete the file(s) of an article from the corpus folder; [] if there is none."""
    from .citation import sidecar_path

    removed = []
    for p in files_of(corpus_dir, doc_id):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
        with contextlib.suppress(FileNotFoundError):
            sidecar_path(p).unlink()
    return removed
