"""The index: documents, passages, sentences, their vectors (FAISS) and BM25, in one folder.

Layout of `index/`:
    CURRENT            name of the generation being served (written atomically)
    gen-<stamp>/       one complete build: manifest.json, documents.jsonl, passages.jsonl,
                       passages.faiss, sentences.faiss, *_vectors.npy, bm25-passages/, bm25-sentences/,
                       and for the next reindex only: bm25-tokens.npz (BM25 tokens per passage and
                       sentence) and files.json (size, mtime, ctime, sha256 per article file)
    .tmp-gen-*/        a build being written (or left by a crash: removed by the next reindex)
    .lock              held while a reindex runs (holds the pid of the reindexing process)
    .serving/<host-pid> the generation each serving worker answers from (admin routes wait on it)

A build writes a new generation folder (fsynced, manifest last), renames it into place, then
replaces CURRENT atomically: a crash half-way leaves the previous generation serving, and
readers never see a half-written index. Servers poll CURRENT and swap to the new generation.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np

from .chunking import Passage, Sentence
from .documents import Document
from .errors import NotIndexedError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: BM25 tokens and file stats kept per generation (bm25-tokens.npz, files.json)
CURRENT = "CURRENT"


# --- vector store ----------------------------------------------------------------------------

class VectorStore(Protocol):
    """What retrieval needs from a vector store; FAISS on disk here, pgvector later."""

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, ids: np.ndarray) -> None: ...
    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def save(self, path: Path) -> None: ...
    @classmethod
    def load(cls, path: Path) -> "VectorStore": ...


class FaissStore:
    """Exact inner-product search over unit vectors (= cosine), keyed by int64 ids."""

    def __init__(self, dim: int, index=None) -> None:
        import faiss

        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(np.asarray(ids, dtype=np.int64))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, scores) for one query vector, best first."""
        k = min(k, len(self))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores, ids = self.index.search(query.reshape(1, -1).astype(np.float32), k)
        keep = ids[0] >= 0
        return ids[0][keep], scores[0][keep]

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these ids (for reuse when reindexing)."""
        if not len(ids):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.vstack([self.index.reconstruct(int(i)) for i in ids]).astype(np.float32)

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path) -> "FaissStore":
        import faiss

        index = faiss.read_index(str(path))
        return cls(index.d, index)


def int_id(hex_id: str) -> int:
    """A content hash as a positive int64 FAISS id."""
    return int(hex_id[:15], 16)


# --- BM25 ------------------------------------------------------------------------------------

_STEMMER = None


_HYPHENATED = re.compile(r"\b[A-Za-z]+(?:-[A-Za-z]+)+\b")


def _catenate(text: str) -> str:
    """Add the joined form of hyphenated words ("micro-needling" -> also "microneedling"), so
    either spelling finds the other (Lucene's word-delimiter filter with catenate_words)."""
    return _HYPHENATED.sub(lambda m: f"{m.group(0)} {m.group(0).replace('-', '')}", text)


def tokenize(texts: list[str]) -> list[list[str]]:
    """Lower-cased, stop-worded, Snowball-stemmed tokens (bm25s + PyStemmer), hyphenated words
    both split and joined."""
    global _STEMMER
    import bm25s
    import Stemmer

    if _STEMMER is None:
        _STEMMER = Stemmer.Stemmer("english")
    texts = [_catenate(t) if "-" in t else t for t in texts]
    return bm25s.tokenize(texts, stopwords=_stopwords(), stemmer=_STEMMER, return_ids=False, show_progress=False)


@functools.lru_cache(maxsize=1)
def _stopwords() -> list[str]:
    """bm25s's extended English list plus the question words it leaves in ("also", "much")."""
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    extra = {"also", "much", "many", "would", "could", "should", "can", "may", "might", "must", "shall",
             # light verbs of questions ("Who should not get X?", "How is X made?"), as in the
             # SMART and closed-class stop lists: they match any passage that happens to use them
             "get", "gets", "got", "gotten", "getting", "make", "makes", "made", "making", "done"}
    return sorted(set(STOPWORDS_EN_PLUS) | extra)


def build_bm25(texts: list[str]):
    import bm25s

    retriever = bm25s.BM25()
    tokens = tokenize(texts) if texts else []
    retriever.index(tokens or [[""]], show_progress=False)
    return retriever


def bm25_scores(retriever, query_tokens: list[str], n: int) -> np.ndarray:
    """Scores of every indexed text for one tokenised query (zeros for unknown words)."""
    vocab = retriever.vocab_dict
    known = [t for t in query_tokens if t in vocab]
    if not known or n == 0:
        return np.zeros(n, dtype=np.float32)
    return np.asarray(retriever.get_scores(known), dtype=np.float32)[:n]


# --- the index -------------------------------------------------------------------------------

@dataclass
class DocRecord:
    doc_id: str
    title: str
    path: str
    sha256: str
    indexed_at: str
    text: str
    n_passages: int = 0
    # citation metadata (optional: generations written before it load with None)
    author: str | None = None
    published: str | None = None
    site: str | None = None
    original_url: str | None = None


@dataclass
class Index:
    """Everything retrieval and extraction read, loaded into memory from one generation."""

    manifest: dict
    docs: dict[str, DocRecord]
    passages: list[Passage]
    passage_store: FaissStore
    sentence_store: FaissStore
    passage_vectors: np.ndarray  # passage row -> unit vector (exact rescoring of candidates)
    sent_passage: np.ndarray  # sentence row -> passage row
    sent_vectors: np.ndarray  # sentence row -> unit vector (for highlighting and dedup)
    bm25_passages: object
    bm25_sentences: object
    path: Path | None = None
    row_of_pid: dict[int, int] = field(default_factory=dict)
    row_of_sid: dict[int, int] = field(default_factory=dict)
    sent_rows: list[tuple[int, int]] = field(default_factory=list)  # passage row -> [first, last) sentence rows
    vocab: set = field(default_factory=set)
    sent_is_heading: np.ndarray | None = None
    idf: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.row_of_pid = {int_id(p.id): i for i, p in enumerate(self.passages)}
        self.row_of_sid = {}
        self.sent_rows = []
        self.sent_is_heading = np.array([s.heading for p in self.passages for s in p.sentences], dtype=bool)
        r = 0
        for i, p in enumerate(self.passages):
            for j in range(len(p.sentences)):
                self.row_of_sid[sentence_int_id(p.id, j)] = r + j
            self.sent_rows.append((r, r + len(p.sentences)))
            r += len(p.sentences)
        vocab = getattr(self.bm25_passages, "vocab_dict", {}) or {}
        self.vocab = set(vocab)
        # document frequencies from the BM25 matrix (token-major CSC): df = entries per token
        indptr = np.asarray(self.bm25_passages.scores["indptr"])
        n = max(1, len(self.passages))
        self.idf = {}
        for tok, tid in vocab.items():
            if tid + 1 < len(indptr):
                df = int(indptr[tid + 1] - indptr[tid])
                self.idf[tok] = float(np.log(1 + (n - df + 0.5) / (df + 0.5)))

    @property
    def built_at(self) -> str | None:
        return self.manifest.get("built_at")

    def sentence_text(self, row: int) -> str:
        p = self.passages[int(self.sent_passage[row])]
        s = p.sentences[row - self.sent_rows[int(self.sent_passage[row])][0]]
        return self.docs[p.doc_id].text[s.start : s.end]


def sentence_int_id(passage_hex: str, j: int) -> int:
    return (int_id(passage_hex) * 131 + j + 1) & 0x7FFFFFFFFFFFFFFF


def passage_embed_text(p: Passage, title: str, doc_text: str) -> str:
    """What the dense side sees for a passage: title and section heading give it context."""
    body = doc_text[p.start : p.end]
    head = p.heading if p.heading and not body.startswith(p.heading) else ""
    return " \n".join(x for x in (title, head, body) if x)


def sentence_embed_text(p: Passage, s: Sentence, doc_text: str) -> str:
    """A sentence is embedded with its section heading: list items lean on it ("Pain and Recovery")."""
    body = doc_text[s.start : s.end]
    if p.heading and not s.heading and not body.startswith(p.heading):
        return f"{p.heading} {body}"
    return body


def sentence_bm25_text(p: Passage, s: Sentence, doc_text: str, title: str) -> str:
    return f"{title} {sentence_embed_text(p, s, doc_text)}"


def passage_bm25_text(p: Passage, title: str, doc_text: str) -> str:
    return passage_embed_text(p, title, doc_text)


# --- reading and writing ---------------------------------------------------------------------

TOKENS_FILE = "bm25-tokens.npz"  # BM25 tokens per passage and per sentence (reused by reindex)
FILES_FILE = "files.json"  # size, mtime and sha256 of each article file (reindex skips hashing)


@dataclass
class TokenCache:
    """BM25 tokens of every passage and sentence of a generation, row-aligned with the index.

    A reindex reuses the tokens of unchanged articles instead of re-tokenising the corpus.
    """

    passages: list[list[str]]
    sentences: list[list[str]]


def current_generation(index_dir: Path) -> Path | None:
    pointer = Path(index_dir) / CURRENT
    try:
        name = pointer.read_text().strip()
    except OSError:
        return None
    if not name or "/" in name or name.startswith("."):
        return None
    gen = Path(index_dir) / name
    return gen if (gen / "manifest.json").exists() else None


def load(index_dir: Path, path: Path | None = None) -> Index:
    """The generation CURRENT names (or the generation folder `path`). Raises NotIndexedError when there is none."""
    import bm25s

    gen = Path(path) if path is not None else current_generation(index_dir)
    if gen is None:
        raise NotIndexedError(
            f"No index in {index_dir}/. Build one with `assistant reindex` (or `make run`)."
        )
    manifest = json.loads((gen / "manifest.json").read_text())
    docs = {}
    for line in (gen / "documents.jsonl").read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        docs[d["doc_id"]] = DocRecord(**d)
    passages = []
    for line in (gen / "passages.jsonl").read_text(encoding="utf-8").splitlines():
        d = json.loads(line)
        text = docs[d["doc_id"]].text[d["start"] : d["end"]]
        passages.append(
            Passage(
                id=d["id"], doc_id=d["doc_id"], start=d["start"], end=d["end"], text=text,
                sentences=[Sentence(s, e, bool(h)) for s, e, h in d["sentences"]], heading=d.get("heading", ""),
            )
        )
    sent_passage = np.load(gen / "sentence_passage.npy", allow_pickle=False)
    return Index(
        manifest=manifest,
        docs=docs,
        passages=passages,
        passage_store=FaissStore.load(gen / "passages.faiss"),
        sentence_store=FaissStore.load(gen / "sentences.faiss"),
        passage_vectors=np.load(gen / "passage_vectors.npy", allow_pickle=False),
        sent_passage=sent_passage,
        sent_vectors=np.load(gen / "sentence_vectors.npy", allow_pickle=False),
        bm25_passages=bm25s.BM25.load(gen / "bm25-passages", show_progress=False, verbosity=0),
        bm25_sentences=bm25s.BM25.load(gen / "bm25-sentences", show_progress=False, verbosity=0),
        path=gen,
    )


def write(index_dir: Path, index: Index, tokens: TokenCache | None = None, files: dict | None = None) -> Path:
    """Write a new generation folder, then point CURRENT at it (atomic rename).

    `tokens` (the BM25 tokens the index was built from) and `files` (path -> [size, mtime_ns,
    sha256]) are kept for the next reindex; readers never need them.
    """
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    tmp = index_dir / f".tmp-gen-{stamp}-{os.getpid()}"
    final = index_dir / f"gen-{stamp}"
    tmp.mkdir()
    with open(tmp / "documents.jsonl", "w", encoding="utf-8") as f:
        for d in index.docs.values():
            f.write(json.dumps(d.__dict__, ensure_ascii=False) + "\n")
    with open(tmp / "passages.jsonl", "w", encoding="utf-8") as f:
        for p in index.passages:
            f.write(json.dumps({
                "id": p.id, "doc_id": p.doc_id, "start": p.start, "end": p.end, "heading": p.heading,
                "sentences": [[s.start, s.end, int(s.heading)] for s in p.sentences],
            }, ensure_ascii=False) + "\n")
    index.passage_store.save(tmp / "passages.faiss")
    index.sentence_store.save(tmp / "sentences.faiss")
    np.save(tmp / "passage_vectors.npy", index.passage_vectors, allow_pickle=False)
    np.save(tmp / "sentence_passage.npy", index.sent_passage, allow_pickle=False)
    np.save(tmp / "sentence_vectors.npy", index.sent_vectors, allow_pickle=False)
    index.bm25_passages.save(tmp / "bm25-passages", show_progress=False)
    index.bm25_sentences.save(tmp / "bm25-sentences", show_progress=False)
    if tokens is not None:
        save_tokens(tmp / TOKENS_FILE, tokens)
    if files is not None:
        (tmp / FILES_FILE).write_text(json.dumps(files, ensure_ascii=False, sort_keys=True))
    # the manifest last: a generation without one is never loaded
    (tmp / "manifest.json").write_text(json.dumps(index.manifest, indent=2))
    _fsync_tree(tmp)
    os.rename(tmp, final)
    _fsync_dir_entry(index_dir)
    pointer_tmp = index_dir / f".{CURRENT}.{os.getpid()}.tmp"
    with open(pointer_tmp, "w") as fh:
        fh.write(final.name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(pointer_tmp, index_dir / CURRENT)
    _fsync_dir_entry(index_dir)
    index.path = final
    return final


def save_tokens(path: Path, tokens: TokenCache) -> None:
    """Tokens as ids into one vocabulary: compact, and no pickle."""
    vocab: dict[str, int] = {}

    def flat(rows: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        ids = [vocab.setdefault(t, len(vocab)) for row in rows for t in row]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        return np.asarray(ids, dtype=np.int32), offsets

    p_ids, p_off = flat(tokens.passages)
    s_ids, s_off = flat(tokens.sentences)
    words = list(vocab)
    assert not any("\n" in w for w in words)
    with open(path, "wb") as fh:
        np.savez(fh, vocab=np.array("\n".join(words)), p_ids=p_ids, p_off=p_off, s_ids=s_ids, s_off=s_off)


def load_tokens(gen: Path) -> TokenCache | None:
    """The BM25 tokens stored with a generation, or None (older format, missing or damaged)."""
    path = Path(gen) / TOKENS_FILE
    try:
        with np.load(path, allow_pickle=False) as z:
            words = str(z["vocab"]).split("\n") if str(z["vocab"]) else []
            arrays = {k: z[k] for k in ("p_ids", "p_off", "s_ids", "s_off")}
    except (OSError, KeyError, ValueError) as e:
        if path.exists():
            log.warning("token cache %s unreadable (%s); re-tokenising", path, e)
        return None
    vocab = np.array(words, dtype=object)

    def rows(ids: np.ndarray, off: np.ndarray) -> list[list[str]]:
        toks = vocab[ids].tolist() if len(ids) else []
        return [toks[off[i] : off[i + 1]] for i in range(len(off) - 1)]

    return TokenCache(rows(arrays["p_ids"], arrays["p_off"]), rows(arrays["s_ids"], arrays["s_off"]))


def load_file_stats(gen: Path) -> dict:
    """path -> [size, mtime_ns, sha256] of the articles a generation was built from ({} if unknown)."""
    try:
        data = json.loads((Path(gen) / FILES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_file_stats(gen: Path, files: dict) -> None:
    """Refresh a generation's file stats in place (atomic; readers of the index never use them)."""
    tmp = Path(gen) / f".{FILES_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(files, ensure_ascii=False, sort_keys=True))
    os.replace(tmp, Path(gen) / FILES_FILE)


def _fsync_tree(path: Path) -> None:
    """Flush every file under `path` (and the folders) to disk before the generation is published."""
    for root, dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir_entry(Path(root))


def _fsync_dir_entry(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- which generation each serving process answers from ----------------------------------------

SERVING_DIR = ".serving"  # one file per serving process: "<host>-<pid>" holding a generation name


def _worker_id(pid: int | None = None) -> str:
    import socket

    return f"{socket.gethostname()}-{pid or os.getpid()}"


def mark_serving(index_dir: Path, generation: str | None) -> None:
    """Record that this process now answers from `generation` (None: it stopped serving)."""
    folder = Path(index_dir) / SERVING_DIR
    path = folder / _worker_id()
    try:
        if generation is None:
            path.unlink(missing_ok=True)
            return
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{path.name}.tmp"
        tmp.write_text(generation + "\n")
        os.replace(tmp, path)
    except OSError as e:  # a read-only index folder: serving works, the bookkeeping does not
        log.debug("could not record the served generation in %s: %s", folder, e)


def serving_generations(index_dir: Path) -> dict[int, str]:
    """pid -> generation of the live serving processes on this host (stale entries removed)."""
    import socket

    folder = Path(index_dir) / SERVING_DIR
    prefix = f"{socket.gethostname()}-"
    out: dict[int, str] = {}
    try:
        entries = list(folder.iterdir())
    except OSError:
        return out
    for f in entries:
        if not f.name.startswith(prefix) or not f.name[len(prefix):].isdigit():
            continue
        pid = int(f.name[len(prefix):])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                f.unlink()
            continue
        except PermissionError:
            pass
        with contextlib.suppress(OSError):
            out[pid] = f.read_text().strip()
    return out


def prune(index_dir: Path, keep: int = 2) -> None:
    """Remove half-written temp folders and all but the newest `keep` generations.

    Call it only while holding the reindex lock (a temp folder may be a build in progress).
    The previous generation is kept so that a server still answering on it is not pulled
    from under its feet; a reader holds loaded data in memory anyway. The generation CURRENT
    names is never removed.
    """
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        return
    cur = current_generation(index_dir)
    for tmp in index_dir.glob(".tmp-gen-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for tmp in index_dir.glob(f".{CURRENT}.*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
    gens = sorted(g for g in index_dir.glob("gen-*") if g.is_dir())
    for g in gens[:-keep] if keep else gens:
        if cur is None or g.resolve() != cur.resolve():
            shutil.rmtree(g, ignore_errors=True)


def corpus_fingerprint(docs: dict[str, DocRecord]) -> str:
    import hashlib

    h = hashlib.sha256()
    for doc_id in sorted(docs):
        h.update(f"{doc_id}\x00{docs[doc_id].sha256}\n".encode())
    return h.hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def doc_record(doc: Document, indexed_at: str, n_passages: int) -> DocRecord:
    return DocRecord(doc.doc_id, doc.title, doc.path, doc.sha256, indexed_at, doc.text, n_passages,
                     author=doc.author, published=doc.published, site=doc.site, original_url=doc.original_url)


def safe_doc_id(doc_id: str) -> bool:
    """Ids come from relative paths; anything that climbs out is refused."""
    return bool(doc_id) and ".." not in doc_id.split("/") and not doc_id.startswith("/") and not re.search(r"[\x00\\]", doc_id)
