"""Build or update the index from the corpus folder, re-embedding only what changed.

Articles are compared by content hash: unchanged ones keep their passages and vectors,
changed and new ones are cleaned, chunked and embedded, removed ones leave every store.
One reindex at a time (a lock file); the result is a new generation swapped in atomically.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import index as ix
from .chunking import Passage, chunk
from .config import MODEL_NAME, Settings
from .documents import UnreadableFileError, discover, doc_id_for, file_sha256, read_document
from .embedder import Embedder
from .errors import ReindexBusyError
from .models import ReindexReport

log = logging.getLogger(__name__)


@contextlib.contextmanager
def reindex_lock(index_dir: Path, timeout: float = 600.0):
    """An exclusive lock on index/.lock; released by the OS even if the process dies."""
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / ".lock", "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ReindexBusyError(f"another reindex of {index_dir}/ is running; try again when it finishes")
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _previous(index_dir: Path, chunking: dict) -> ix.Index | None:
    try:
        prev = ix.load(index_dir)
    except Exception as e:  # a missing or unreadable index: build from scratch
        if ix.current_generation(index_dir) is not None:
            log.warning("previous index unreadable (%s); rebuilding from scratch", e)
        return None
    if prev.manifest.get("format") != ix.FORMAT_VERSION or prev.manifest.get("model") != MODEL_NAME:
        log.info("index format or model changed; rebuilding from scratch")
        return None
    if prev.manifest.get("chunking") != chunking:
        log.info("chunking settings changed; rebuilding from scratch")
        return None
    return prev


def _chunk_params(settings: Settings) -> dict:
    return {"target_words": settings.passage_target_words, "max_words": settings.passage_max_words}


def reindex(settings: Settings, embedder: Embedder, progress: bool = False, lock_timeout: float = 600.0) -> ReindexReport:
    """Bring index_dir up to date with corpus_dir. Returns what changed."""
    t0 = time.perf_counter()
    corpus_dir, index_dir = Path(settings.corpus_dir), Path(settings.index_dir)
    with reindex_lock(index_dir, lock_timeout):
        ix.prune(index_dir)  # leftovers of a build that crashed
        params = _chunk_params(settings)
        prev = _previous(index_dir, params)
        report = ReindexReport(articles=0, passages=0)
        now = ix.now_iso()

        # 1. what changed
        kept_docs: dict[str, ix.DocRecord] = {}
        new_docs = []
        seen = set()
        files = discover(corpus_dir) if corpus_dir.exists() else []
        for path in tqdm(files, desc="Reading", unit="file", disable=not progress, leave=False):
            doc_id = doc_id_for(path, corpus_dir)
            if doc_id in seen:  # a.md and a.txt: the first one wins
                log.warning("skipped %s: another file already has id %r", path, doc_id)
                report.skipped.append(path.relative_to(corpus_dir).as_posix())
                continue
            try:
                sha = file_sha256(path)
            except OSError as e:
                log.warning("skipped %s: cannot be read (%s)", path, e)
                report.skipped.append(path.relative_to(corpus_dir).as_posix())
                continue
            old = prev.docs.get(doc_id) if prev else None
            rel = path.relative_to(corpus_dir).as_posix()
            if old is not None and old.sha256 == sha and old.path == rel:
                kept_docs[doc_id] = old
                seen.add(doc_id)
                continue
            try:
                doc = read_document(path, corpus_dir)
            except UnreadableFileError as e:
                log.warning("skipped %s", e)
                report.skipped.append(rel)
                continue
            seen.add(doc_id)
            new_docs.append(doc)
            (report.changed if old is not None else report.added).append(doc_id)
        if prev:
            report.removed = sorted(d for d in prev.docs if d not in seen)
        report.unchanged = len(kept_docs)

        if prev is not None and not report.touched and not report.skipped:
            report.articles, report.passages = len(prev.docs), len(prev.passages)
            report.seconds = round(time.perf_counter() - t0, 3)
            return report

        # 2. chunk and embed the new and changed articles
        new_passages: list[Passage] = []
        new_records: dict[str, ix.DocRecord] = {}
        for doc in new_docs:
            ps = chunk(doc, params["target_words"], params["max_words"])
            new_passages.extend(ps)
            new_records[doc.doc_id] = ix.doc_record(doc, now, len(ps))
        texts = {**{k: v.text for k, v in kept_docs.items()}, **{k: v.text for k, v in new_records.items()}}
        titles = {**{k: v.title for k, v in kept_docs.items()}, **{k: v.title for k, v in new_records.items()}}
        p_texts = [ix.passage_embed_text(p, titles[p.doc_id], texts[p.doc_id]) for p in new_passages]
        s_texts = [ix.sentence_embed_text(p, s, texts[p.doc_id]) for p in new_passages for s in p.sentences]
        vecs = _embed(embedder, p_texts + s_texts, progress)
        p_vecs, s_vecs = vecs[: len(p_texts)], vecs[len(p_texts) :]
        report.embedded_passages = len(new_passages)

        # 3. assemble: kept passages (with their stored vectors) + new ones, in doc order
        docs = {**kept_docs, **new_records}
        kept_passages = [p for p in (prev.passages if prev else []) if p.doc_id in kept_docs]
        passage_store, sentence_store = _stores(prev, embedder.dim)
        gone = [p for p in (prev.passages if prev else []) if p.doc_id not in kept_docs]
        passage_store.remove(np.array([ix.int_id(p.id) for p in gone], dtype=np.int64))
        sentence_store.remove(np.array([ix.sentence_int_id(p.id, j) for p in gone for j in range(len(p.sentences))], dtype=np.int64))
        passage_store.add(np.array([ix.int_id(p.id) for p in new_passages], dtype=np.int64), p_vecs)
        sentence_store.add(
            np.array([ix.sentence_int_id(p.id, j) for p in new_passages for j in range(len(p.sentences))], dtype=np.int64),
            s_vecs,
        )
        kept_pass_vecs = (
            prev.passage_vectors[[prev.row_of_pid[ix.int_id(p.id)] for p in kept_passages]]
            if kept_passages else np.zeros((0, embedder.dim), dtype=np.float32)
        )
        kept_sent_vecs = (
            np.vstack([prev.sent_vectors[slice(*prev.sent_rows[prev.row_of_pid[ix.int_id(p.id)]])] for p in kept_passages])
            if kept_passages else np.zeros((0, embedder.dim), dtype=np.float32)
        )
        order = sorted(range(len(kept_passages) + len(new_passages)), key=lambda i: _key(i, kept_passages, new_passages))
        all_passages = kept_passages + new_passages
        sent_blocks = _split_rows(kept_passages, kept_sent_vecs) + _split_rows(new_passages, s_vecs)
        passages = [all_passages[i] for i in order]
        sent_vectors = (
            np.vstack([sent_blocks[i] for i in order]).astype(np.float32) if passages
            else np.zeros((0, embedder.dim), dtype=np.float32)
        )
        passage_vectors = np.vstack([kept_pass_vecs, p_vecs])[order].astype(np.float32) if passages else np.zeros((0, embedder.dim), dtype=np.float32)
        sent_passage = np.repeat(np.arange(len(passages), dtype=np.int32), [len(p.sentences) for p in passages])

        # 4. BM25 over passages and sentences (cheap to rebuild, so always whole)
        bm25_p = ix.build_bm25([ix.passage_bm25_text(p, docs[p.doc_id].title, docs[p.doc_id].text) for p in passages])
        bm25_s = ix.build_bm25([
            ix.sentence_bm25_text(p, s, docs[p.doc_id].text, docs[p.doc_id].title) for p in passages for s in p.sentences
        ])
        manifest = {
            "format": ix.FORMAT_VERSION,
            "model": MODEL_NAME,
            "dimension": embedder.dim,
            "similarity": "cosine (inner product of unit vectors)",
            "chunking": params,
            "corpus_fingerprint": ix.corpus_fingerprint(docs),
            "built_at": now,
            "articles": len(docs),
            "passages": len(passages),
            "sentences": int(len(sent_passage)),
        }
        new_index = ix.Index(
            manifest=manifest, docs=dict(sorted(docs.items())), passages=passages,
            passage_store=passage_store, sentence_store=sentence_store,
            passage_vectors=passage_vectors, sent_passage=sent_passage, sent_vectors=sent_vectors, bm25_passages=bm25_p, bm25_sentences=bm25_s,
        )
        ix.write(index_dir, new_index)
        ix.prune(index_dir)
        report.articles, report.passages = len(docs), len(passages)
        report.seconds = round(time.perf_counter() - t0, 3)
        log.info("reindexed: %s", report.model_dump(exclude={"skipped"}))
        return report


def _embed(embedder: Embedder, texts: list[str], progress: bool, batch: int = 128) -> np.ndarray:
    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    parts = []
    with tqdm(total=len(texts), desc="Embedding", unit="text", disable=not progress, leave=False) as bar:
        for i in range(0, len(texts), batch):
            parts.append(embedder.encode_passages(texts[i : i + batch]))
            bar.update(len(texts[i : i + batch]))
    return np.vstack(parts)


def _stores(prev: ix.Index | None, dim: int) -> tuple[ix.FaissStore, ix.FaissStore]:
    """Fresh copies of the previous stores (the served index is never mutated), or empty ones."""
    if prev is None or prev.path is None:
        return ix.FaissStore(dim), ix.FaissStore(dim)
    return ix.FaissStore.load(prev.path / "passages.faiss"), ix.FaissStore.load(prev.path / "sentences.faiss")


def _split_rows(passages: list[Passage], vecs: np.ndarray) -> list[np.ndarray]:
    out, r = [], 0
    for p in passages:
        out.append(vecs[r : r + len(p.sentences)])
        r += len(p.sentences)
    return out


def _key(i: int, kept: list[Passage], new: list[Passage]):
    p = kept[i] if i < len(kept) else new[i - len(kept)]
    return (p.doc_id, p.start)
