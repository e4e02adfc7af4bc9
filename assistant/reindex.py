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
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from . import index as ix
from .chunking import Passage, chunk
from .config import MODEL_NAME, Settings
from .documents import UnreadableFileError, discover, doc_id_for, file_sha256, read_document
from .embedder import Embedder, index_vector_space
from .errors import AssistantError, ReindexBusyError
from .models import ReindexReport

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
EMBED_BATCH = 8  # small, length-sorted batches: fastest on CPU, and questions get the model in between
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


# --- the previous generation -----------------------------------------------------------------

def _chunk_params(settings: Settings) -> dict:
    return {"target_words": settings.passage_target_words, "max_words": settings.passage_max_words}


@dataclass
class _Previous:
    index: ix.Index
    tokens: ix.TokenCache | None
    files: dict = field(default_factory=dict)


def _previous(index_dir: Path, chunking: dict, prints: dict) -> _Previous | None:
    """The generation being served, if its passages and vectors can be reused."""
    gen = ix.current_generation(index_dir)
    if gen is None:
        return None
    try:
        prev = ix.load(index_dir, path=gen)
    except Exception as e:  # an unreadable index: build from scratch
        log.warning("previous index %s unreadable (%s); rebuilding from scratch", gen.name, e)
        return None
    m = prev.manifest
    if m.get("format") != ix.FORMAT_VERSION or m.get("model") != MODEL_NAME:
        log.info("index format or model changed; rebuilding from scratch")
        return None
    if m.get("chunking") != chunking:
        log.info("chunking settings changed; rebuilding from scratch")
        return None
    if (m.get("fingerprints") or {}).get("content") != prints["content"]:
        log.info("the reading or chunking code changed; rebuilding from scratch")
        return None
    tokens = None
    if (m.get("fingerprints") or {}).get("bm25") == prints["bm25"]:
        tokens = ix.load_tokens(gen)
        if tokens is not None and (
            len(tokens.passages) != len(prev.passages) or len(tokens.sentences) != len(prev.sent_passage)
        ):
            log.warning("token cache of %s does not match its index; re-tokenising", gen.name)
            tokens = None
    else:
        log.info("BM25 tokenisation changed; re-tokenising every passage")
    return _Previous(prev, tokens, ix.load_file_stats(gen))


# --- reindex ---------------------------------------------------------------------------------

@dataclass
class _Entry:
    """One passage of the new index with everything stored per passage."""

    passage: Passage
    vector: np.ndarray
    sent_vectors: np.ndarray
    tokens: list[str] | None
    sent_tokens: list[list[str]] | None


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
        if prev is not None and index_vector_space(prev.index.manifest) != embedder.vector_space:
            log.info("the index holds vectors of another encoder; rebuilding from scratch")
            prev = None  # never mix vectors of encoders that differ
        prev_index = prev.index if prev else None
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
        files = discover(corpus_dir)
        hashed = 0
        for n_read, path in enumerate(tqdm(files, desc="Reading", unit="file", disable=not progress, leave=False)):
            tick("reading", n_read, len(files))
            rel = path.relative_to(corpus_dir).as_posix()
            doc_id = doc_id_for(path, corpus_dir)
            if doc_id in seen:  # a.md and a.txt: the first one wins
                log.warning("skipped %s: another file already has id %r", path, doc_id)
                report.skipped.append(rel)
                continue
            old = prev_index.docs.get(doc_id) if prev_index else None
            try:
                st = path.stat()
                sig = [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
                cached = old_stats.get(rel)
                if old is not None and old.path == rel and cached and cached[:3] == sig and cached[3] == old.sha256:
                    sha = old.sha256
                else:
                    sha = file_sha256(path)
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
                doc = read_document(path, corpus_dir)
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
        if prev_index:
            report.removed = sorted(d for d in prev_index.docs if d not in seen)
        report.unchanged = len(kept_docs)
        tick("reading", len(files), len(files))
        tm["files"], tm["hashed"] = len(files), hashed
        lap("scan")

        if prev_index is not None and not report.touched and prev.tokens is not None:
            # nothing to do (without a usable token cache, BM25 is rebuilt below: new tokenising code)
            if stats != old_stats and prev_index.path is not None:
                with contextlib.suppress(OSError):
                    ix.update_file_stats(prev_index.path, stats)  # next time, no hashing
            report.articles, report.passages = len(prev_index.docs), len(prev_index.passages)
            report.seconds = round(time.perf_counter() - t0, 3)
            lap("done")
            return report

        # 2. chunk and embed the new and changed articles
        new_passages: list[Passage] = []
        new_records: dict[str, ix.DocRecord] = {}
        for doc in new_docs:
            ps = chunk(doc, params["target_words"], params["max_words"])
            new_passages.extend(ps)
            new_records[doc.doc_id] = ix.doc_record(doc, now, len(ps))
        lap("chunk")
        p_texts = [ix.passage_embed_text(p, new_records[p.doc_id].title, new_records[p.doc_id].text) for p in new_passages]
        s_texts = [ix.sentence_embed_text(p, s, new_records[p.doc_id].text) for p in new_passages for s in p.sentences]
        n_new = len(new_passages)
        vecs = _embed(embedder, p_texts + s_texts, progress,
                      on_batch=lambda done, total: tick("embedding", round(done * n_new / total), n_new))
        p_vecs, s_vecs = vecs[: len(p_texts)], vecs[len(p_texts) :]
        report.embedded_passages = len(new_passages)
        lap("embed")

        # 3. assemble: kept passages (with their stored vectors and tokens) + new ones, in doc order
        docs = {**kept_docs, **new_records}
        entries: list[_Entry] = []
        gone: list[Passage] = []
        if prev_index is not None:
            tok = prev.tokens
            for row, p in enumerate(prev_index.passages):
                if p.doc_id not in kept_docs:
                    gone.append(p)
                    continue
                a, b = prev_index.sent_rows[row]
                entries.append(_Entry(
                    p, prev_index.passage_vectors[row], prev_index.sent_vectors[a:b],
                    tok.passages[row] if tok else None, tok.sentences[a:b] if tok else None,
                ))
        r = 0
        for i, p in enumerate(new_passages):
            n = len(p.sentences)
            entries.append(_Entry(p, p_vecs[i], s_vecs[r : r + n], None, None))
            r += n
        entries.sort(key=lambda e: (e.passage.doc_id, e.passage.start))
        passages = [e.passage for e in entries]
        dim = embedder.dim
        passage_vectors = (
            np.vstack([e.vector for e in entries]).astype(np.float32) if entries else np.zeros((0, dim), np.float32)
        )
        sent_vectors = (
            np.vstack([e.sent_vectors for e in entries]).astype(np.float32) if entries else np.zeros((0, dim), np.float32)
        )
        sent_passage = np.repeat(np.arange(len(passages), dtype=np.int32), [len(p.sentences) for p in passages])

        # the vector stores: the previous ones minus what left, plus what arrived
        passage_store, sentence_store = _stores(prev_index, dim)
        passage_store.remove(np.array([ix.int_id(p.id) for p in gone], dtype=np.int64))
        sentence_store.remove(np.array([ix.sentence_int_id(p.id, j) for p in gone for j in range(len(p.sentences))], dtype=np.int64))
        passage_store.add(np.array([ix.int_id(p.id) for p in new_passages], dtype=np.int64), p_vecs)
        sentence_store.add(
            np.array([ix.sentence_int_id(p.id, j) for p in new_passages for j in range(len(p.sentences))], dtype=np.int64),
            s_vecs,
        )
        if len(passage_store) != len(passages) or len(sentence_store) != len(sent_passage):
            # repeated passage ids (the same paragraph twice in an article) make id-wise edits
            # ambiguous: rebuild the stores from the rows, which are right by construction
            log.info("rebuilding vector stores from the assembled rows")
            passage_store, sentence_store = ix.FaissStore(dim), ix.FaissStore(dim)
            passage_store.add(np.array([ix.int_id(p.id) for p in passages], dtype=np.int64), passage_vectors)
            sentence_store.add(
                np.array([ix.sentence_int_id(p.id, j) for p in passages for j in range(len(p.sentences))], dtype=np.int64),
                sent_vectors,
            )
        lap("assemble")

        # 4. BM25 over passages and sentences: tokens of kept passages come from the cache
        missing = [i for i, e in enumerate(entries) if e.tokens is None]
        if missing:
            fresh = ix.tokenize([
                ix.passage_bm25_text(entries[i].passage, docs[entries[i].passage.doc_id].title, docs[entries[i].passage.doc_id].text)
                for i in missing
            ])
            s_fresh = ix.tokenize([
                ix.sentence_bm25_text(entries[i].passage, s, docs[entries[i].passage.doc_id].text, docs[entries[i].passage.doc_id].title)
                for i in missing for s in entries[i].passage.sentences
            ]) if any(entries[i].passage.sentences for i in missing) else []
            k = 0
            for j, i in enumerate(missing):
                e = entries[i]
                e.tokens = list(fresh[j])
                n = len(e.passage.sentences)
                e.sent_tokens = [list(t) for t in s_fresh[k : k + n]]
                k += n
        tokens = ix.TokenCache(
            passages=[e.tokens for e in entries],
            sentences=[t for e in entries for t in e.sent_tokens],
        )
        lap("tokenize")
        bm25_p = _bm25(tokens.passages)
        bm25_s = _bm25(tokens.sentences)
        lap("bm25")

        manifest = {
            "format": ix.FORMAT_VERSION,
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
            manifest=manifest, docs=dict(sorted(docs.items())), passages=passages,
            passage_store=passage_store, sentence_store=sentence_store,
            passage_vectors=passage_vectors, sent_passage=sent_passage, sent_vectors=sent_vectors,
            bm25_passages=bm25_p, bm25_sentences=bm25_s,
        )
        lap("index")
        ix.write(index_dir, new_index, tokens=tokens, files=stats)
        lap("write")
        ix.prune(index_dir)
        lap("prune")
        report.articles, report.passages = len(docs), len(passages)
        report.seconds = round(time.perf_counter() - t0, 3)
        log.info("reindexed: %s", report.model_dump(exclude={"skipped"}))
        return report


def _bm25(tokens: list[list[str]]):
    """The same retriever index.build_bm25 makes, from tokens already computed."""
    import bm25s

    bm25_log = logging.getLogger("bm25s")
    if bm25_log.level == logging.DEBUG:  # bm25s sets DEBUG on import: "Building index from tokens" each time
        bm25_log.setLevel(logging.WARNING)
    retriever = bm25s.BM25()
    retriever.index(tokens or [[""]], show_progress=False)
    return retriever


def _embed(embedder: Embedder, texts: list[str], progress: bool, batch: int = EMBED_BATCH,
           on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Unit vectors of `texts`, in order. Texts are batched by length (a batch is padded to its
    longest text: mixing a 100-word passage with short sentences wastes most of the work), and
    batches are small, so a question asked meanwhile waits for one batch at most."""
    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    with tqdm(total=len(texts), desc="Embedding", unit="text", disable=not progress, leave=False) as bar:
        for i in range(0, len(texts), batch):
            rows = order[i : i + batch]
            out[rows] = embedder.encode_passages([texts[j] for j in rows], batch_size=batch)
            bar.update(len(rows))
            if on_batch is not None:
                on_batch(min(i + batch, len(texts)), len(texts))
            time.sleep(0.0005)  # let a question waiting for the model have it
    return out


def _stores(prev: ix.Index | None, dim: int) -> tuple[ix.FaissStore, ix.FaissStore]:
    """The previous generation's stores (this process loaded them for itself: never the served
    index, which lives in another object or process), or empty ones."""
    if prev is None:
        return ix.FaissStore(dim), ix.FaissStore(dim)
    return prev.passage_store, prev.sentence_store
