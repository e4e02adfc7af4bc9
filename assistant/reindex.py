"""Build or update the index from the corpus folder, re-embedding only what changed.

Articles are compared by content hash: unchanged ones keep their passages, vectors and BM25
tokens, changed and new ones are cleaned, chunked, embedded and tokenised, removed ones leave
every store (FAISS and BM25). A file whose size, mtime and ctime match the previous build is
not even re-hashed. One reindex at a time (a lock file, released by the OS if the process
dies); the result is a new generation, swapped in atomically (see index.py).

An index built by different code is not trusted: the manifest records fingerprints of the
reading/chunking code (a change rebuilds from scratch) and of the BM25 tokenisation (a change
re-tokenises, vectors are kept).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from . import index as ix
from .chunking import Passage, chunk
from .config import MODEL_NAME, Settings
from .documents import SUPPORTED_SUFFIXES, UnreadableFileError, file_sha256, read_document
from .embedder import Embedder, index_vector_space
from .errors import AssistantError, ReindexBusyError
from .models import ReindexReport
from .records import DocTable, PassageTable

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
EMBED_BATCH = 8  # small, length-sorted batches: fastest on CPU, and questions get the model in between
EMBED_WINDOW = 4096  # texts sorted by length within a window of this many (bounded memory, little padding)
OUT_ON_DISK = 200_000  # from this many new texts, their vectors are gathered in a file, not in RAM
CACHE_DIR = ".embed-cache"  # vectors of an unfinished build, reused by the next one (EmbedCache)
TOKENIZE_BLOCK = 50_000  # passages tokenised (and their postings appended) at a time
RACY_SECONDS = 2.0  # a file modified this recently is hashed again next time (coarse timestamps)


class CorpusNotFoundError(AssistantError):
    """The corpus folder does not exist (an empty folder is fine: it empties the index)."""


# --- the lock --------------------------------------------------------------------------------

def _lock_holder(fh) -> str:
    try:
        fh.seek(0)
        pid, started = fh.read().split()[:2]
        return f" (pid {int(pid)}, running for {max(0.0, time.time() - float(started)):.0f}s)"
    except (ValueError, OSError):
        return ""


@contextlib.contextmanager
def reindex_lock(index_dir: Path, timeout: float = 600.0):
    """An exclusive lock on index/.lock, waiting up to `timeout` seconds (0: do not wait).

    flock() locks belong to the open file, so two threads of one process exclude each other
    too, and the OS releases the lock when the process dies (kill -9 included).
    Raises ReindexBusyError when the lock is still held after `timeout`.
    """
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / LOCK_NAME, "a+") as fh:
        deadline = time.monotonic() + max(0.0, timeout)
        warned = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if now >= deadline:
                    raise ReindexBusyError(
                        f"Another reindex of {index_dir}/ is running{_lock_holder(fh)}; "
                        "try again when it finishes."
                    ) from None
                if not warned and timeout >= 2.0:
                    log.warning("waiting for another reindex of %s/ to finish%s", index_dir, _lock_holder(fh))
                    warned = True
                time.sleep(min(0.05, max(0.0, deadline - now)))
        try:
            with contextlib.suppress(OSError):
                fh.seek(0)
                fh.truncate()
                fh.write(f"{os.getpid()} {time.time():.3f}\n")
                fh.flush()
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --- fingerprints of the code that shapes the index ------------------------------------------

def _source_hash(*objs) -> str:
    h = hashlib.sha256()
    for obj in objs:
        try:
            h.update(inspect.getsource(obj).encode())
        except (OSError, TypeError):
            h.update(getattr(obj, "__qualname__", repr(obj)).encode())
    return h.hexdigest()[:16]


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


@functools.lru_cache(maxsize=1)
def fingerprints() -> dict:
    """`content`: how articles are read, cleaned, chunked and what is embedded (a change
    rebuilds everything); `bm25`: how BM25 texts are tokenised (a change re-tokenises)."""
    from . import chunking, citation, documents

    return {
        "content": _source_hash(documents, citation, chunking, ix.passage_embed_text, ix.sentence_embed_text),
        "bm25": _source_hash(
            ix.tokenize, ix._catenate, ix._stopwords, ix.passage_bm25_text, ix.sentence_bm25_text,
            ix.passage_embed_text, ix.sentence_embed_text,
        ) + f"/bm25s-{_version('bm25s')}/PyStemmer-{_version('PyStemmer')}",
    }


# Taken at import: `inspect` reads the files as they are on disk when asked, so a process asked
# later would fingerprint an edit made since it started (an upgrade in place under a running
# server) instead of the code it runs, and its next reindex would re-embed everything.
fingerprints()


# --- the previous generation -----------------------------------------------------------------

def _chunk_params(settings: Settings) -> dict:
    return {"target_words": settings.passage_target_words, "max_words": settings.passage_max_words}


class _Previous:
    """The generation being served, read only as far as a reindex needs: its manifest, article
    records and file stats first (a no-op reindex stops there), the whole index (memory-mapped)
    and its token cache only when something changed."""

    def __init__(self, gen: Path, manifest: dict, docs: dict, files: dict, tokens_usable: bool) -> None:
        self.gen, self.manifest, self.docs, self.files = gen, manifest, docs, files
        self.tokens_usable = tokens_usable
        self._index: ix.Index | None = None
        self._tokens: tuple[ix.BM25Level, ix.BM25Level] | None = None
        self._tokens_read = False

    @property
    def index(self) -> ix.Index:
        if self._index is None:
            self._index = ix.load(self.gen.parent, path=self.gen)
        return self._index

    @property
    def postings(self) -> tuple[ix.BM25Level, ix.BM25Level] | None:
        """The BM25 levels of passages and sentences as segments (memory-mapped: the served
        ones; a generation of an earlier format has bm25s's arrays with term frequencies beside
        them, or its tokens as lists: converted once). None: re-tokenise."""
        if not self._tokens_read:
            self._tokens_read = True
            prev = self.index
            levels = None
            if self.tokens_usable and all(isinstance(x, ix.BM25Level) for x in (prev.bm25_passages, prev.bm25_sentences)):
                levels = (prev.bm25_passages, prev.bm25_sentences)
            elif self.tokens_usable:
                levels = ix.load_level_postings(self.gen)
            if levels is None and self.tokens_usable:
                tokens = ix.load_tokens(self.gen)
                if tokens is not None:
                    levels = (ix.BM25Level.from_tokens(tokens.passages), ix.BM25Level.from_tokens(tokens.sentences))
            if levels is not None and (levels[0].n_rows != len(prev.passages) or levels[1].n_rows != len(prev.sent_passage)):
                log.warning("BM25 postings of %s do not match its index; re-tokenising", self.gen.name)
                levels = None
            self._tokens = levels
        return self._tokens


def _previous(index_dir: Path, chunking: dict, prints: dict) -> _Previous | None:
    """The generation being served, if its passages and vectors can be reused."""
    gen = ix.current_generation(index_dir)
    if gen is None:
        return None
    try:
        m = json.loads((gen / "manifest.json").read_text())
        docs = ix.load_docs(gen)
    except Exception as e:  # an unreadable index: build from scratch
        log.warning("previous index %s unreadable (%s); rebuilding from scratch", gen.name, e)
        return None
    if m.get("format") not in ix.READABLE_FORMATS or m.get("model") != MODEL_NAME:
        log.info("index format or model changed; rebuilding from scratch")
        return None
    if m.get("chunking") != chunking:
        log.info("chunking settings changed; rebuilding from scratch")
        return None
    if (m.get("fingerprints") or {}).get("content") != prints["content"]:
        log.info("the reading or chunking code changed; rebuilding from scratch")
        return None
    usable = (m.get("fingerprints") or {}).get("bm25") == prints["bm25"] and (
        (gen / ix.TOKENS_FILE).is_file() or (gen / "bm25-sentences" / ix.BM25_TF).is_file()
        or (gen / "bm25-sentences" / ix.LEVEL_META).is_file())
    if not usable:
        log.info("BM25 tokenisation changed; re-tokenising every passage")
    return _Previous(gen, m, docs, ix.load_file_stats(gen), usable)


# --- reindex ---------------------------------------------------------------------------------

def reindex(
    settings: Settings,
    embedder: Embedder,
    progress: bool = False,
    lock_timeout: float = 600.0,
    timings: dict | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> ReindexReport:
    """Bring index_dir up to date with corpus_dir. Returns what changed.

    Waits up to `lock_timeout` seconds for another reindex to finish, then raises
    ReindexBusyError. `timings`, if given, is filled with seconds per phase. `on_progress`,
    if given, is called with (phase, done, total): ("reading", files, files) and
    ("embedding", passages, passages).
    """
    tick = on_progress or (lambda phase, done, total: None)
    t0 = time.perf_counter()
    tm = timings if timings is not None else {}
    clock = [t0]

    def lap(name: str) -> None:
        now = time.perf_counter()
        tm[name] = round(tm.get(name, 0.0) + now - clock[0], 4)
        clock[0] = now

    corpus_dir, index_dir = Path(settings.corpus_dir), Path(settings.index_dir)
    if not corpus_dir.is_dir():  # a missing (unmounted, mistyped) folder must not empty the index
        raise CorpusNotFoundError(f"The corpus folder {corpus_dir}/ does not exist; nothing was reindexed.")
    with reindex_lock(index_dir, lock_timeout):
        lap("lock")
        ix.prune(index_dir)  # leftovers of a build that crashed or was killed
        params = _chunk_params(settings)
        prints = fingerprints()
        prev = _previous(index_dir, params, prints)
        if prev is not None and index_vector_space(prev.manifest) != embedder.vector_space:
            log.info("the index holds vectors of another encoder; rebuilding from scratch")
            prev = None  # never mix vectors of encoders that differ
        prev_docs = prev.docs if prev else {}
        # what a file is compared with: a format-4 table answers without reading any article's text
        prev_meta = prev_docs.meta if isinstance(prev_docs, DocTable) else prev_docs.get
        lap("load_previous")
        report = ReindexReport(articles=0, passages=0)
        now = ix.now_iso()

        # 1. what changed: hash only files whose size/mtime/ctime differ from the last build
        kept_docs: dict[str, ix.DocRecord] = {}
        new_docs = []
        seen: set[str] = set()
        old_stats = prev.files if prev else {}
        stats: dict[str, list] = {}
        scan_started = time.time_ns()
        files = _discover_paths(corpus_dir)  # strings: no Path object per file (a million files)
        hashed = 0
        for n_read, path in enumerate(tqdm(files, desc="Reading", unit="file", disable=not progress, leave=False)):
            tick("reading", n_read, len(files))
            rel = _relative_posix(path, corpus_dir)
            suffix = os.path.splitext(path)[1]
            doc_id = rel[: len(rel) - len(suffix)] if suffix else rel  # documents.doc_id_for
            if doc_id in seen:  # a.md and a.txt: the first one wins
                log.warning("skipped %s: another file already has id %r", path, doc_id)
                report.skipped.append(rel)
                continue
            old = prev_meta(doc_id)
            try:
                st = os.stat(path)
                sig = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
                cached = old_stats.get(rel)
                if old is not None and old.path == rel and cached and cached[:3] == sig and cached[3] == old.sha256:
                    sha = old.sha256
                else:
                    sha = file_sha256(Path(path))
                    hashed += 1
            except FileNotFoundError:  # removed while we were looking
                continue
            except OSError as e:
                log.warning("skipped %s: cannot be read (%s)", path, e)
                report.skipped.append(rel)
                continue
            if st.st_mtime_ns < scan_started - int(RACY_SECONDS * 1e9):  # else a rewrite may keep its mtime
                stats[rel] = sig + [sha]
            if old is not None and old.sha256 == sha and old.path == rel:
                kept_docs[doc_id] = old
                seen.add(doc_id)
                continue
            try:
                doc = read_document(Path(path), corpus_dir)
            except UnreadableFileError as e:
                log.warning("skipped %s", e)
                report.skipped.append(rel)
                stats.pop(rel, None)
                continue
            if doc.sha256 != sha:  # changed between hashing and reading: what was read counts
                stats.pop(rel, None)
            seen.add(doc_id)
            new_docs.append(doc)
            (report.changed if old is not None else report.added).append(doc_id)
        if prev is not None:
            report.removed = sorted(d for d in prev_docs if d not in seen)
        report.unchanged = len(kept_docs)
        tick("reading", len(files), len(files))
        tm["files"], tm["hashed"] = len(files), hashed
        lap("scan")

        if prev is not None and not report.touched and prev.tokens_usable:
            # nothing to do (without a usable token cache, BM25 is rebuilt below: new tokenising code)
            if stats != old_stats:
                with contextlib.suppress(OSError):
                    ix.update_file_stats(prev.gen, stats)  # next time, no hashing
            _refresh_subjects(prev, corpus_dir)
            lap("subjects")
            report.articles = len(prev_docs)
            report.passages = int(prev.manifest.get("passages", sum(prev_meta(d).n_passages for d in prev_docs)))
            report.seconds = round(time.perf_counter() - t0, 3)
            lap("done")
            return report

        prev_index = prev.index if prev is not None else None
        # 2. chunk and embed the new and changed articles (length-sorted windows, each window's
        # vectors kept on disk as it finishes: an interrupted build resumes from there)
        new_passages: list[Passage] = []
        new_records: dict[str, ix.DocRecord] = {}
        for doc in new_docs:
            ps = chunk(doc, params["target_words"], params["max_words"])
            new_passages.extend(ps)
            new_records[doc.doc_id] = ix.doc_record(doc, now, len(ps))
        new_passages.sort(key=lambda p: (p.doc_id, p.start))
        lap("chunk")
        p_texts = [ix.passage_embed_text(p, new_records[p.doc_id].title, new_records[p.doc_id].text) for p in new_passages]
        s_texts = [ix.sentence_embed_text(p, s, new_records[p.doc_id].text) for p in new_passages for s in p.sentences]
        n_new = len(new_passages)
        cache = EmbedCache(index_dir / CACHE_DIR, embedder.dim)
        vecs = _embed(embedder, p_texts + s_texts, progress, cache=cache, stats=tm,
                      on_batch=lambda done, total: tick("embedding", round(done * n_new / total), n_new))
        p_vecs, s_vecs = vecs[: len(p_texts)], vecs[len(p_texts) :]
        del p_texts, s_texts
        report.embedded_passages = len(new_passages)
        lap("embed")

        # 3. assemble: the kept passages in their previous order, then the new ones in doc order
        # (so an HNSW store that only gains rows is extended, not rebuilt)
        docs = {**kept_docs, **new_records}
        kept_rows = np.zeros(0, dtype=np.int64)
        kept_sent_rows = np.zeros(0, dtype=np.int64)
        passages: list[Passage] | PassageTable = []
        post: tuple[ix.BM25Level, ix.BM25Level] | None = None
        tabled = prev_index is not None and isinstance(prev_index.passages, PassageTable)
        if prev_index is not None:
            if tabled:  # format 4: by article number, no passage read
                table = prev_index.passages
                kept_num = np.fromiter((d in kept_docs for d in prev_docs.ids), dtype=bool, count=len(prev_docs))
                keep = kept_num[np.asarray(table.doc_of)] if len(table) else np.zeros(0, dtype=bool)
            else:
                keep = np.fromiter((p.doc_id in kept_docs for p in prev_index.passages), dtype=bool,
                                   count=len(prev_index.passages))
            kept_rows = np.flatnonzero(keep)
            kept_sent_rows = _ranges(prev_index.sent_rows[kept_rows])
            if not tabled:
                passages = [prev_index.passages[r] for r in kept_rows]
            if prev.postings is not None:
                post = (prev.postings[0].keep(kept_rows), prev.postings[1].keep(kept_sent_rows))
        n_kept = len(kept_rows)
        counts = np.concatenate([np.diff(prev_index.sent_rows[kept_rows], axis=1).ravel() if prev_index is not None
                                 else np.zeros(0, np.int64), [len(p.sentences) for p in new_passages]]).astype(np.int64)
        if tabled:
            # the kept articles stay where they are (their segments are linked), the new ones are
            # written as one new segment; article numbers follow the sorted ids
            passages_of: dict[str, list[Passage]] = {}
            for p in new_passages:
                passages_of.setdefault(p.doc_id, []).append(p)
            docs = prev_docs.derive(list(kept_docs), new_records, passages_of)
            renum = np.fromiter((docs.number(d) if k else -1 for d, k in zip(prev_docs.ids, kept_num)),
                                dtype=np.int64, count=len(prev_docs))
            passages = PassageTable.build(docs, renum[np.asarray(table.doc_of)[kept_rows]],
                                          np.asarray(table.pos)[kept_rows],
                                          np.asarray(table.sentence_heading)[kept_sent_rows], new_passages)
        else:
            passages += new_passages
        sent_passage = np.repeat(np.arange(len(passages), dtype=np.int32), counts)
        dim = embedder.dim
        passage_store = _store(prev_index.passage_store if prev_index else None, prev_index.path / ix.PASSAGE_STORE
                               if prev_index and prev_index.path else None, kept_rows, p_vecs, dim, ix.PASSAGE_DTYPE,
                               progress, "Passage vectors", level="passages")
        sentence_store = _store(prev_index.sentence_store if prev_index else None, prev_index.path / ix.SENTENCE_STORE
                                if prev_index and prev_index.path else None, kept_sent_rows, s_vecs, dim,
                                ix.SENTENCE_DTYPE, progress, "Sentence vectors", level="sentences")
        del vecs, p_vecs, s_vecs
        # per-article centroids (retrieval's article prior): the kept articles' carried over,
        # the new articles' computed from their own passage vectors
        prev_cent = prev_index.centroids if prev_index is not None else None
        # (a passage level converted to another dtype: its centroids recomputed from the converted
        # rows, as a fresh build computes them, not carried over from the other dtype's)
        if prev_cent is not None and len(prev_cent.of_row) == len(prev_index.passages) \
                and prev_index.passage_store.dtype == passage_store.dtype:
            centroids = prev_cent.carry(kept_rows, [p.doc_id for p in new_passages],
                                        passage_store.matrix()[n_kept:] if new_passages else np.zeros((0, dim), np.float32))
        else:  # a build from nothing, or an older generation: one pass over the passage vectors
            keys = passages.doc_of if isinstance(passages, PassageTable) else [p.doc_id for p in passages]
            centroids = ix.ArticleCentroids.build(keys, passage_store.matrix(), dim)
        lap("assemble")

        # 4. BM25: the segments of kept rows are reused (removed rows become tombstones), the new
        # rows tokenised into the delta (a build from nothing: into postings made the main);
        # the segments are merged once the delta or the tombstones pass their share
        first_new = n_kept if post is not None else 0
        post_p, post_s = post if post is not None else (ix.Postings.empty(), ix.Postings.empty())
        del post
        for i in range(first_new, len(passages), TOKENIZE_BLOCK):  # a block at a time: bounded memory
            block = passages[i : i + TOKENIZE_BLOCK]
            post_p = post_p.extend(ix.tokenize([
                ix.passage_bm25_text(p, docs[p.doc_id].title, docs[p.doc_id].text) for p in block]))
            post_s = post_s.extend(ix.tokenize([
                ix.sentence_bm25_text(p, x, docs[p.doc_id].text, docs[p.doc_id].title) for p in block for x in p.sentences]))
        lap("tokenize")
        bm25_p = post_p.level() if isinstance(post_p, ix.Postings) else post_p.settled()
        bm25_s = post_s.level() if isinstance(post_s, ix.Postings) else post_s.settled()
        del post_p, post_s
        lap("bm25")

        manifest = {
            "format": ix.FORMAT_VERSION,
            "vector_search": {
                "passages": passage_store.describe(), "sentences": sentence_store.describe(),
                "ann_min_vectors": ix.ANN_MIN_VECTORS,
                "why": "exact (flat) search below ann_min_vectors vectors per level, passages PQ-scanned, sentences IVF (or HNSW) from there up; "
                       "candidates are always rescored exactly",
            },
            "model": MODEL_NAME,
            "encoder": embedder.encoder,
            "vector_space": embedder.vector_space,
            "dimension": dim,
            "similarity": "cosine (inner product of unit vectors)",
            "chunking": params,
            "fingerprints": prints,
            "corpus_fingerprint": ix.corpus_fingerprint(docs),
            "built_at": now,
            "articles": len(docs),
            "passages": len(passages),
            "sentences": int(len(sent_passage)),
        }
        new_index = ix.Index(
            manifest=manifest, docs=docs if isinstance(docs, DocTable) else dict(sorted(docs.items())), passages=passages,
            passage_store=passage_store, sentence_store=sentence_store, sent_passage=sent_passage,
            bm25_passages=bm25_p, bm25_sentences=bm25_s, centroids=centroids,
        )
        lap("index")
        from . import subjects as sj  # discovered now, stored with the generation: no question waits for it

        found = None
        prev_subjects = sj.saved_json(prev_index.path) if prev_index is not None else None
        if prev_subjects is not None and prev_subjects.get("glossary") == sj.glossary_hash(corpus_dir / sj.GLOSSARY_NAME):
            old_to_new = np.full(len(prev_index.passages), -1, dtype=np.int64)
            old_to_new[kept_rows] = np.arange(len(kept_rows))
            found = sj.carry_over(prev_subjects, new_index, old_to_new, n_kept, len(prev_index.passages) - len(kept_rows))
        if found is None:
            found = sj.discover_for_build(new_index, corpus_dir)
        lap("subjects")
        ix.write(index_dir, new_index, files=stats, subjects=found)
        cache.clear()  # the generation holds the vectors now
        lap("write")
        ix.prune(index_dir)
        lap("prune")
        report.articles, report.passages = len(docs), len(passages)
        report.seconds = round(time.perf_counter() - t0, 3)
        log.info("reindexed: %s", report.model_dump(exclude={"skipped"}))
        return report


def _relative_posix(path: Path, corpus_dir: Path) -> str:
    """`path.relative_to(corpus_dir).as_posix()`, by string when `path` is spelled under it."""
    s, base = str(path), str(corpus_dir)
    if base != "." and os.sep == "/" and s.startswith(base + "/"):
        return s[len(base) + 1 :]
    return Path(path).relative_to(corpus_dir).as_posix()


def _discover_paths(corpus_dir: Path) -> list[str]:
    """documents.discover with os.scandir, as string paths: no pathlib object per file (117k
    files: 0.83 s against 1.15 s with Path.rglob, warm; a Path per file then cost the reindex's
    scan another 1 s at a million; a test holds the two equal).
    Kept here: documents.py is part of the content fingerprint, and any change to it rebuilds
    every index from nothing."""
    found: list[str] = []

    def walk(folder: str) -> None:  # as Path.rglob: symlinked folders are not entered
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except (PermissionError, FileNotFoundError, NotADirectoryError):
            return
        for e in entries:
            if e.name.startswith((".", "_")):
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    walk(e.path)
                elif os.path.splitext(e.name)[1].lower() in SUPPORTED_SUFFIXES and e.is_file():
                    found.append(e.path)  # is_file follows a symlink to a file, as Path.is_file
            except OSError:
                continue

    walk(str(corpus_dir))
    return sorted(found, key=lambda s: s.split(os.sep))


def _discover(corpus_dir: Path) -> list[Path]:
    """`_discover_paths` as Path objects (what documents.discover returns)."""
    return [Path(s) for s in _discover_paths(corpus_dir)]


def _ranges(spans: np.ndarray) -> np.ndarray:
    """The rows of [start, end) spans, concatenated (no Python loop: a million passages)."""
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    lens = spans[:, 1] - spans[:, 0]
    if not lens.sum():
        return np.zeros(0, dtype=np.int64)
    return np.repeat(spans[:, 0] - (np.cumsum(lens) - lens), lens) + np.arange(int(lens.sum()))


def _refresh_subjects(prev: _Previous, corpus_dir: Path) -> None:
    """No article changed, but the glossary may have: rediscover into the served generation
    (subjects.json, which names its arrays file, replaced atomically; readers pick it up with the
    glossary change). Only then is the previous index loaded."""
    from . import subjects as sj

    want = sj.glossary_hash(corpus_dir / sj.GLOSSARY_NAME)
    saved = sj.saved_small(prev.gen)
    if saved is not None and saved.get("glossary") == want:
        return
    found = sj.discover_for_build(prev.index, corpus_dir)
    if found is None:
        return
    with contextlib.suppress(OSError):
        sj.save(prev.gen, found)


def _bm25(tokens: list[list[str]]) -> ix.BM25Level:
    """The BM25 level index.build_bm25 makes, from tokens already computed (one main segment;
    the scores of bm25s's own `index` of them, bit for bit)."""
    return ix.BM25Level.from_tokens(tokens)


def _embed(embedder: Embedder, texts: list[str], progress: bool, batch: int = EMBED_BATCH,
           cache: "EmbedCache | None" = None, stats: dict | None = None,
           on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Unit vectors of `texts`, in order.

    Texts already in `cache` (embedded by a build that was interrupted) are not embedded again.
    The rest go through in windows of EMBED_WINDOW texts, sorted by length within the window (a
    batch is padded to its longest text: mixing a 100-word passage with short sentences wastes
    most of the work); each finished window is appended to the cache. Batches are small, so a
    question asked meanwhile waits for one batch at most. A large result is a memory-mapped file
    in the cache folder, not RAM."""
    dim = embedder.dim
    n = len(texts)
    if not n:
        return np.zeros((0, dim), dtype=np.float32)
    if cache is not None and n >= OUT_ON_DISK:
        out = cache.scratch(n)
    else:
        out = np.zeros((n, dim), dtype=np.float32)
    keys = text_keys(texts)
    todo = np.arange(n)
    if cache is not None:
        found = cache.lookup(keys)
        hit = np.flatnonzero(found >= 0)
        for i in range(0, len(hit), 65_536):
            rows = hit[i : i + 65_536]
            out[rows] = cache.vectors(found[rows])
        todo = np.flatnonzero(found < 0)
        if len(hit):
            log.info("resuming: %d of %d texts were embedded by an interrupted build", len(hit), n)
    if stats is not None:
        stats["embedded_texts"], stats["reused_texts"] = int(len(todo)), int(n - len(todo))
    done = n - len(todo)  # texts with a vector so far (the cached ones count)
    with tqdm(total=len(todo), desc="Embedding", unit="text", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:
        for w in range(0, len(todo), EMBED_WINDOW):
            window = todo[w : w + EMBED_WINDOW]
            order = window[np.argsort([len(texts[j]) for j in window], kind="stable")]
            vecs = np.zeros((len(order), dim), dtype=np.float32)
            for i in range(0, len(order), batch):
                rows = order[i : i + batch]
                vecs[i : i + len(rows)] = embedder.encode_passages([texts[j] for j in rows], batch_size=batch)
                bar.update(len(rows))
                done += len(rows)
                if on_batch is not None:
                    on_batch(done, n)
                time.sleep(0.0005)  # let a question waiting for the model have it
            out[order] = vecs
            if cache is not None:
                cache.append(keys[order], vecs)
    return out


def text_keys(texts: list[str]) -> np.ndarray:
    """A content hash per text (20 bytes), with the model's name: what the resume cache is keyed by."""
    salt = MODEL_NAME.encode() + b"\x00"
    return np.array([hashlib.sha1(salt + t.encode("utf-8", "surrogatepass")).digest() for t in texts], dtype="S20")


class EmbedCache:
    """Vectors embedded by a build that has not finished, keyed by content hash, in
    index/.embed-cache/: shards `<n>.keys.npy` (S20) + `<n>.vecs.npy` (float32), each written
    under a temporary name and renamed, so a killed build leaves whole shards only. The next
    build reuses them; a build that completes clears the folder."""

    def __init__(self, folder: Path, dim: int) -> None:
        self.folder = Path(folder)
        self.dim = dim
        self._keys: np.ndarray | None = None
        self._where: np.ndarray | None = None  # sorted position -> (shard, row)
        self._shards: list[np.ndarray] = []

    def _load(self) -> None:
        if self._keys is not None:
            return
        keys, where, self._shards = [], [], []
        for kf in sorted(self.folder.glob("*.keys.npy")) if self.folder.is_dir() else []:
            vf = kf.with_name(kf.name.replace(".keys.npy", ".vecs.npy"))
            try:
                k = np.load(kf, allow_pickle=False)
                v = np.load(vf, allow_pickle=False, mmap_mode="r")
            except (OSError, ValueError) as e:
                log.warning("embedding cache shard %s unreadable (%s); ignored", kf.name, e)
                continue
            if len(k) != len(v) or v.ndim != 2 or v.shape[1] != self.dim:
                continue
            s = len(self._shards)
            self._shards.append(v)
            keys.append(k)
            where.append(np.stack([np.full(len(k), s), np.arange(len(k))], axis=1))
        if keys:
            allk = np.concatenate(keys)
            order = np.argsort(allk, kind="stable")
            self._keys, self._where = allk[order], np.concatenate(where)[order]
        else:
            self._keys, self._where = np.zeros(0, dtype="S20"), np.zeros((0, 2), dtype=np.int64)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Per key: its position in the cache, or -1."""
        self._load()
        if not len(self._keys):
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.searchsorted(self._keys, keys)
        pos[pos >= len(self._keys)] = 0
        return np.where(self._keys[pos] == keys, pos, -1)

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        w = self._where[positions]
        out = np.zeros((len(positions), self.dim), dtype=np.float32)
        for s in np.unique(w[:, 0]):
            m = w[:, 0] == s
            out[m] = self._shards[int(s)][w[m, 1]]
        return out

    def append(self, keys: np.ndarray, vecs: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{time.time_ns():020d}-{os.getpid()}"
        for suffix, arr in ((".vecs.npy", vecs), (".keys.npy", keys)):  # keys last: a shard counts once both exist
            tmp = self.folder / f".{name}{suffix}.tmp"
            with open(tmp, "wb") as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(arr), allow_pickle=False)
            os.replace(tmp, self.folder / f"{name}{suffix}")

    def scratch(self, n: int) -> np.ndarray:
        """An (n, dim) float32 array on disk (a large build's new vectors), removed by clear()."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return np.lib.format.open_memmap(self.folder / f".scratch-{os.getpid()}.npy", mode="w+",
                                         dtype=np.float32, shape=(n, self.dim))

    def clear(self) -> None:
        self._keys = self._where = None
        self._shards = []
        shutil.rmtree(self.folder, ignore_errors=True)


def _store(prev: ix.FaissStore | None, prev_path: Path | None, kept: np.ndarray, new: np.ndarray, dim: int,
           dtype: str, progress: bool, desc: str, level: str = "sentences") -> ix.FaissStore:
    """The new generation's store for one level: the previous store's `kept` rows, then `new`.

    The previous store is read from its file (memory-mapped) and kept: the rows of removed
    articles become tombstones and new rows go to its small exact delta (cost: the change, not
    the library; the file is linked into the new generation, not rewritten), until the
    tombstones reach MAX_TOMBSTONE_SHARE of its vectors or the delta DELTA_MAX_VECTORS, or the
    level crosses ANN_MIN_VECTORS, or its kind is no longer the one chosen (an HNSW level of an
    older build becomes IVF / PQ once, on the first reindex that changes it); then it is rebuilt
    from the rows (flat: a copy; IVF: cells trained on a sample, rows assigned; PQ: codebooks
    trained on a sample, rows coded; HNSW: a new graph)."""
    n = len(kept) + len(new)
    kind = ix.choose_kind(n, level)
    if prev is not None and prev_path is not None and prev.kind == kind and prev.dtype == ix.level_dtype(kind, dtype):
        total = prev.dead + len(prev) + len(new)
        dead = prev.dead + len(prev) - len(kept)
        if dead <= ix.MAX_TOMBSTONE_SHARE * total and prev.pending + len(new) <= ix.DELTA_MAX_VECTORS:
            store = ix.FaissStore.load(prev_path)
            store.keep_rows(kept)
            store.add(new, progress=progress, desc=desc)
            return store
    store = ix.FaissStore.create(dim, kind, dtype)
    if kind in ("ivf", "pq"):  # cells / codebooks from a sample of the whole level (kept rows and new)
        parts = ([(prev.matrix(), kept)] if prev is not None and len(kept) else []) + [new]
        size = ix.ivf_nlist(n) * ix.IVF_TRAIN_PER_CELL if kind == "ivf" else ix.PQ_TRAIN
        store.train(ix.training_sample(parts, size), n)
    if prev is not None and len(kept):
        m = prev.matrix()
        for i in range(0, len(kept), 65_536):
            store.add(np.asarray(m[kept[i : i + 65_536]], dtype=np.float32), progress=progress, desc=desc)
    store.add(new, progress=progress, desc=desc)
    return store
