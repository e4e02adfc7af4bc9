"""The Assistant: the one core object. The CLI, the API and the chat page are thin faces over it."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

from . import index as ix
from .config import MODEL_NAME, Settings
from .conversation import answer_turn
from .embedder import Embedder, check_compatible, get_embedder
from .errors import DocumentNotFoundError, InvalidQuestionError, NotIndexedError, StoreUnavailableError
from .models import ArticleView, AskResponse, DocumentInfo, Health, PassageSpan, ReindexReport
from .reindex import reindex as run_reindex
from .retrieval import Retriever

log = logging.getLogger(__name__)

_CITATION_FIELDS = ("author", "published", "site", "original_url")


def _citation(d: ix.DocRecord) -> dict:
    return {k: getattr(d, k, None) for k in _CITATION_FIELDS}


def _with_citations(resp: AskResponse, index: ix.Index) -> AskResponse:
    """Each answer's source carries its article's author, date, site and original URL."""
    for a in resp.answers:
        d = index.docs.get(a.source.doc_id)
        if d is not None:
            for k, v in _citation(d).items():
                setattr(a.source, k, v)
    return resp


class _Capturing:
    """The embedder, recording the first query vector into `capture.vector` (the resolved
    question's: conversation encodes it first)."""

    def __init__(self, inner: Embedder, capture: Any) -> None:
        self._inner = inner
        self._capture = capture

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _keep(self, v: Any) -> None:
        if getattr(self._capture, "vector", None) is None:
            self._capture.vector = v

    def encode_query(self, text: str):
        v = self._inner.encode_query(text)
        self._keep(v)
        return v

    def encode_queries(self, texts: list[str]):
        vs = self._inner.encode_queries(texts)
        if len(vs):
            self._keep(vs[0])
        return vs

class _Loaded:
    """An index and its retriever: swapped as one reference, so a request sees one or the other."""

    def __init__(self, index: ix.Index, settings: Settings, generation: str | None = None) -> None:
        self.index = index
        self.retriever = Retriever(index, settings)
        self.generation = generation or (index.path.name if index.path else None)


class Assistant:
    """Open an index, ask questions, reindex. Thread-safe; cheap to share across requests."""

    def __init__(self, settings: Settings | None = None, embedder: Embedder | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._embedder = embedder
        self._loaded: _Loaded | None = None
        self._reload_lock = threading.Lock()
        self._checked_at = 0.0
        self._loading: str | None = None  # generation being loaded in the background (see _current)
        self._failed: tuple[str, float] | None = None  # a generation that would not load, and when
        self._db = None  # database mode: versions in PostgreSQL instead of generations in index_dir
        if self.settings.database_url:
            from .pgstore import Source

            self._db = Source(self.settings)

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        index_dir: str | Path | None = None,
        corpus_dir: str | Path | None = None,
        settings: Settings | None = None,
        embedder: Embedder | None = None,
        require_index: bool = True,
    ) -> "Assistant":
        """Load the model and the index. Raises NotIndexedError if there is none (and it is required)."""
        base = settings or Settings.from_env()
        from dataclasses import replace

        base = replace(
            base,
            index_dir=Path(index_dir) if index_dir is not None else base.index_dir,
            corpus_dir=Path(corpus_dir) if corpus_dir is not None else base.corpus_dir,
        )
        a = cls(base, embedder)
        try:
            a._load()
        except NotIndexedError:
            if require_index:
                raise
        return a

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = get_embedder()
        return self._embedder

    def _load(self) -> _Loaded:
        gen = self._generation()
        if gen is None:
            raise self._no_index()
        loaded = self._prepare(gen)
        self._loaded = loaded
        self._checked_at = time.monotonic()
        return loaded

    def _generation(self, beat: bool = False):
        """What should be served now: the generation folder CURRENT names, or (database mode)
        the current version; both have a `.name` that sorts like their age. In database mode,
        `beat` (the regular poll of a process that answers questions) also heartbeats the
        version this process serves, so cleanup keeps it and admin routes can wait for it."""
        if self._db is None:
            return ix.current_generation(self.settings.index_dir)
        loaded = self._loaded
        return self._db.current(serving=loaded.generation if loaded and beat else None)

    def _no_index(self) -> NotIndexedError:
        if self._db is not None:
            return self._db.no_index()
        return NotIndexedError(
            f"No index in {self.settings.index_dir}/. Build one with `assistant reindex` (or `make run`)."
        )

    def _current(self, force: bool = False) -> _Loaded:
        """The index to answer with; swaps to a newer generation when CURRENT names one.

        CURRENT is polled at most once a second per process (each worker does this for
        itself). A newer generation is loaded, and its subjects prepared, in a background
        thread while requests keep answering with the old one; then the reference is swapped:
        requests already running finish on the index they started with (a loaded index is
        never mutated), the next ones get the new one. Nobody waits for a swap, except the
        very first load and `force` (this process just reindexed: load it now). A generation
        that fails to load is logged and retried after a while; the old one keeps serving.
        """
        loaded = self._loaded
        if not force and loaded is not None and time.monotonic() - self._checked_at < 1.0:
            return loaded
        if loaded is None or force:
            with self._reload_lock:
                self._checked_at = time.monotonic()
                try:
                    gen = self._generation()
                except StoreUnavailableError:
                    if self._loaded is None:
                        raise
                    return self._loaded  # keeps serving; ask() decides when it has been down too long
                loaded = self._loaded
                if gen is None:
                    if loaded is None:
                        raise self._no_index()
                    return loaded
                if loaded is None or loaded.generation != gen.name:
                    try:
                        fresh = self._prepare(gen)
                    except Exception:
                        if loaded is None:
                            raise
                        log.exception("could not load index generation %s; still serving %s", gen.name, loaded.generation)
                        return loaded
                    if loaded is None or loaded.generation is None or fresh.generation > loaded.generation:
                        self._loaded = loaded = fresh
                return loaded
        if not self._reload_lock.acquire(blocking=False):
            return loaded  # another thread is checking right now
        try:
            self._checked_at = time.monotonic()
            try:
                gen = self._generation(beat=True)
            except StoreUnavailableError:
                return loaded  # keeps serving; ask() decides when it has been down too long
            if gen is None or gen.name == loaded.generation or gen.name == self._loading:
                return loaded
            if self._failed and self._failed[0] == gen.name and time.monotonic() - self._failed[1] < 10.0:
                return loaded
            self._loading = gen.name
            threading.Thread(target=self._load_in_background, args=(gen,), daemon=True,
                             name=f"index-loader-{gen.name}").start()
            return loaded
        finally:
            self._reload_lock.release()

    def _prepare(self, gen: Path) -> _Loaded:
        """Load one generation, and its subjects (stored at build time) now rather than on the
        first question: at a million passages that is seconds of JSON, which start-up or the
        reindex that made the generation pays instead of a reader."""
        if self._db is not None:
            fresh = _Loaded(self._db.load(gen), self.settings, gen.name)
        else:
            fresh = _Loaded(ix.load(self.settings.index_dir, path=gen), self.settings)
        try:
            from . import subjects

            subjects.for_index(fresh.index, self.settings.corpus_dir)
        except Exception:  # answering will try again (and report) on its own
            log.exception("could not prepare the subjects of %s", gen.name)
        return fresh

    def _load_in_background(self, gen: Path) -> None:
        try:
            fresh = self._prepare(gen)
        except Exception:
            log.exception("could not load index generation %s; still serving the previous one", gen.name)
            with self._reload_lock:
                self._failed = (gen.name, time.monotonic())
                self._loading = None
            return
        with self._reload_lock:
            self._loading = None
            old = self._loaded
            if old is None or old.generation is None or fresh.generation > old.generation:
                self._loaded = fresh
                log.info("now serving index generation %s (was %s)", fresh.generation, old.generation if old else None)

    def reindex(self, progress: bool = False, lock_timeout: float = 600.0,
                on_progress: Callable[[str, int, int], None] | None = None) -> ReindexReport:
        """Bring the index up to date with the corpus folder; answering goes on meanwhile.

        Waits up to `lock_timeout` seconds for another reindex (ReindexBusyError after that).
        When it returns, this Assistant answers with the new index. `on_progress(phase, done,
        total)` is called as files are read and passages embedded (the admin page's progress).
        """
        kw = {"on_progress": on_progress} if on_progress is not None else {}
        if self._db is not None:
            from . import pgstore

            report, _ = pgstore.build(self.settings, self.embedder, progress=progress, lock_timeout=lock_timeout, **kw)
        else:
            report = run_reindex(self.settings, self.embedder, progress=progress, lock_timeout=lock_timeout, **kw)
        try:
            self._current(force=True)
        except NotIndexedError:
            pass
        return report

    # --- asking ------------------------------------------------------------------------------

    def ask(self, question: str, history: list[str] | None = None, top_k: int = 3,
            capture: Any = None) -> AskResponse:
        """Answer with passages of the articles, verbatim and cited, or abstain.

        `capture`, if given, gets `.vector`: the query vector of what was searched (the question
        log groups unanswered questions by it without encoding them again)."""
        s = self.settings
        if not isinstance(question, str) or not question.strip():
            raise InvalidQuestionError("The question is empty: ask something about the articles.")
        if len(question) > s.max_question_chars:
            raise InvalidQuestionError(f"The question is {len(question)} characters long; the limit is {s.max_question_chars}.")
        history = [h for h in (history or []) if isinstance(h, str) and h.strip()]
        if len(history) > s.max_history:
            raise InvalidQuestionError(f"At most {s.max_history} earlier questions can be sent as history.")
        if not 1 <= top_k <= s.max_top_k:
            raise InvalidQuestionError(f"top_k must be between 1 and {s.max_top_k}.")
        loaded = self._current()
        if self._db is not None:
            self._db.check()
        check_compatible(loaded.index.manifest, self.embedder)
        embedder = self.embedder if capture is None else _Capturing(self.embedder, capture)
        resp = answer_turn(loaded.index, loaded.retriever, embedder, s, question, history, top_k)
        return _with_citations(resp, loaded.index)

    # --- documents ---------------------------------------------------------------------------

    def documents(self) -> list[DocumentInfo]:
        index = self._current().index
        return [
            DocumentInfo(doc_id=d.doc_id, title=d.title, path=d.path, passages=d.n_passages, indexed_at=d.indexed_at,
                         **_citation(d))
            for d in index.docs.values()
        ]

    def document(self, doc_id: str) -> ArticleView:
        index = self._current().index
        d = index.docs.get(doc_id) if ix.safe_doc_id(doc_id) else None
        if d is None:
            raise DocumentNotFoundError(f"No article with id {doc_id!r}. GET /documents lists them.")
        spans = [PassageSpan(id=p.id, start=p.start, end=p.end) for p in (index.passages[int(r)] for r in index.rows_of(doc_id))]
        return ArticleView(doc_id=d.doc_id, title=d.title, path=d.path, text=d.text, passages=spans,
                           indexed_at=d.indexed_at, **_citation(d))

    def health(self) -> Health:
        try:
            index = self._current().index
            if self._db is not None:
                self._db.check()
        except NotIndexedError:
            return Health(status="no index", index_loaded=False, articles=0, passages=0, model=MODEL_NAME, built_at=None)
        except StoreUnavailableError:
            return Health(status="database unavailable", index_loaded=False, articles=0, passages=0,
                          model=MODEL_NAME, built_at=None)
        return Health(
            status="ok", index_loaded=True, articles=len(index.docs), passages=len(index.passages),
            model=MODEL_NAME, built_at=index.built_at,
        )

    # --- database mode: the library lives in PostgreSQL ----------------------------------------

    @property
    def in_database(self) -> bool:
        """True when the index (and the library of original files) is in PostgreSQL."""
        return self._db is not None

    def upload(self, filename: str, data: bytes, replace: bool = False, lock_timeout: float = 600.0):
        """Database mode: store an article's original file in the library and publish a version
        with it (every replica picks it up). Returns (sources.Added, ReindexReport)."""
        from . import pgstore

        added, report, _ = pgstore.upload(self.settings, self.embedder, filename, data, replace, lock_timeout)
        self._current(force=True)
        return added, report

    def delete(self, doc_id: str, lock_timeout: float = 600.0):
        """Database mode: take an article out of the library. Returns (its stored path or None, ReindexReport)."""
        from . import pgstore

        path, report, _ = pgstore.delete(self.settings, self.embedder, doc_id, lock_timeout)
        self._current(force=True)
        return path, report

    def wait_for_replicas(self, timeout: float = 10.0) -> bool:
        """Database mode: wait until every live replica serves this one's version (or newer)."""
        from . import pgstore

        loaded = self._current()
        if self._db is None or loaded.generation is None:
            return True
        self._db.current(serving=loaded.generation)  # our own heartbeat first (this process serves it)
        return pgstore.wait_for_replicas(self._db.db, pgstore.Version(int(loaded.generation[1:])), timeout)
