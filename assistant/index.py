"""The index: documents, passages, sentences, their vectors (FAISS) and BM25, in one folder.

Layout of `index/`:
    CURRENT            name of the generation being served (written atomically)
    gen-<stamp>/       one complete build: manifest.json, documents.jsonl, passages.jsonl,
                       passages.faiss, sentences.faiss (the vectors, by row: flat or HNSW, memory-
                       mapped), sentence_passage.npy, bm25-passages/, bm25-sentences/ (BM25 as
                       segments: a main hard-linked from generation to generation, tombstones, a
                       small delta; see BM25Level), subjects.json (and the subjects-*.npz it names),
                       and for the next reindex only: files.json (size, mtime, ctime, sha256 per
                       article file)
    .tmp-gen-*/        a build being written (or left by a crash: removed by the next reindex)
    .lock              held while a reindex runs (holds the pid of the reindexing process)
    .serving/<host-pid> the generation each serving worker answers from (admin routes wait on it)

A build writes a new generation folder (fsynced, manifest last), renames it into place, then
replaces CURRENT atomically: a crash half-way leaves the previous generation serving, and
readers never see a half-written index. Servers poll CURRENT and swap to the new generation.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from .chunking import Passage, Sentence
from .documents import Document
from .errors import NotIndexedError

log = logging.getLogger(__name__)

# 2: BM25 tokens and file stats kept per generation (bm25-tokens.npz, files.json)
# 3: vectors stored once, in the FAISS files, by row (flat or HNSW; no *_vectors.npy)
# 4: article and passage records as linked segments + arrays (records.py); article centroids
# 5: the records' segments binary (records.py: text as UTF-8, layout as int32 arrays)
# 6: BM25 levels as segments (a linked main, tombstones, a small delta; scored when asked)
FORMAT_VERSION = 6
READABLE_FORMATS = (2, 3, 4, 5, 6)  # a format-2 generation is read (and reused by reindex) as flat stores
CURRENT = "CURRENT"
PASSAGE_STORE, SENTENCE_STORE = "passages.faiss", "sentences.faiss"
LIVE_SUFFIX = ".rows.npy"  # beside an HNSW store with tombstones: the id of each row
DELTA_SUFFIX = ".delta.faiss"  # beside an HNSW store: the rows added since its graph was written
SCAN_SUFFIX = ".pq.faiss"  # beside a 'pq' store's flat file: its product-quantised codes, by row
# A reindex rebuilds an HNSW level (graph of every row, no tombstones, no delta) once its
# tombstones reach this share of its vectors, or its delta this many vectors (the delta is
# searched exactly: 50,000 float16 vectors cost ~5 ms per question).
MAX_TOMBSTONE_SHARE = 0.2


# --- settings from the environment -----------------------------------------------------------
# Read once at import; a value that is not a number is kept aside (the default used meanwhile)
# and said by check_env(): the CLI exits 2 with the message, and building a store raises it.
ENV_ERRORS: list[str] = []


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < minimum:
        ENV_ERRORS.append(f"{name}={raw!r} must be a whole number of at least {minimum}.")
        return default
    return int(raw)


def _env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        ENV_ERRORS.append(f"{name}={raw!r} is not one of {', '.join(choices)}.")
        return default
    return raw


def check_env() -> None:
    """Raise AssistantError naming every ASSISTANT_* vector setting that could not be read."""
    from .errors import AssistantError

    if ENV_ERRORS:
        raise AssistantError(" ".join(ENV_ERRORS))


DELTA_MAX_VECTORS = _env_int("ASSISTANT_DELTA_MAX_VECTORS", 50_000)


# --- vector store ----------------------------------------------------------------------------

# Exact search reads every vector per question; from this many vectors a level (passages or
# sentences) gets an approximate store instead, candidates still rescored exactly. Measured on
# the 100k bench library's own vectors with its 240 real XQuAD questions (tests/bench_ann.py,
# README "A large library"): at 25,000 passages the PQ scan finds 0.992 of the exact top 50 in
# 0.5 ms against 6.7 ms for flat; at 109,000 sentences IVF finds 0.981 of the top 100 against
# 34 ms for flat (loaded machine).
ANN_MIN_VECTORS = _env_int("ASSISTANT_ANN_MIN_VECTORS", 25_000)
# The approximate kind of each level, chosen by measurement (README "A large library"):
# - sentences 'ivf' (inverted lists: k-means cells, IVF_NPROBE of them scanned): the sentence
#   vectors come in clusters, and IVF reaches recall 0.98 scanning a few percent of them;
# - passages 'pq' (every passage's 48-byte product-quantised code scanned, the PQ_RESCORE best
#   rescored exactly from the flat vectors): passage vectors are spread evenly, and no partition
#   (IVF cells, HNSW graph) finds 0.98 of their exact top 50 without reading most of them.
# 'hnsw' graphs (older builds) are still read and served. ASSISTANT_ANN_KIND forces one kind
# for both levels.
ANN_KINDS = ("pq", "ivf", "hnsw")
ANN_KIND: str | None = _env_choice("ASSISTANT_ANN_KIND", ANN_KINDS, "") or None
LEVEL_ANN_KIND = {"passages": "pq", "sentences": "ivf"}
# pq: dimensions per 4-bit sub-quantiser (384-d: 96 of them, 48 bytes a vector), and the
# candidates rescored exactly per search (1,000: recall@50 0.985 at 1M passages, 6 ms; 800 gave
# 0.992 / 0.988 / 0.979 at 25k / 92k / 1M; past ~1,000 FAISS's fast scan keeps its candidates
# another way, 10-20 ms slower)
PQ_DIMS_PER_CODE = 4
PQ_RESCORE = _env_int("ASSISTANT_PQ_RESCORE", 1000)
# IVF: cells per level (0: IVF_CELLS_PER_SQRT * sqrt(vectors), a power of two) and cells scanned
# per search (96: recall@100 0.981 at 109k sentences, 64 gave 0.968 there and 0.980 at 402k);
# a level is trained (k-means) on a sample of IVF_TRAIN_PER_CELL vectors per cell.
IVF_NLIST = _env_int("ASSISTANT_IVF_NLIST", 0, minimum=0)
IVF_CELLS_PER_SQRT = 2
IVF_NPROBE = _env_int("ASSISTANT_IVF_NPROBE", 96)
IVF_TRAIN_PER_CELL = 40
# Graph degree and construction effort of new graphs, and candidates explored per search (a
# graph keeps the M and efConstruction it was built with; the manifest records them). Measured
# (README "A large library"): efSearch alone stops short of recall 0.98 on a graph of M 16.
HNSW_M = _env_int("ASSISTANT_HNSW_M", 16, minimum=2)
HNSW_EF_CONSTRUCTION = _env_int("ASSISTANT_HNSW_EF_CONSTRUCTION", 64)
HNSW_EF_SEARCH = _env_int("ASSISTANT_HNSW_EF_SEARCH", 192)
# A level's dtype -> the numpy dtype its rows are read back in ("int8" rows are decoded from their
# 8-bit codes; float16 holds the decoded values to well below the codes' own step).
DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.float16}
# The dtype of new levels, each kind alike (flat: IndexScalarQuantizer fp16; PQ: its flat file of
# vectors for rescoring; IVF / HNSW: their SQ fp16 variants). A store read from a file keeps the
# dtype the file has; a reindex that changes the library converts a level of the other dtype
# once, from its stored vectors (reindex._store). Passages are float16 by default: the same
# top answer as float32 exact search on XQuAD and COVID-QA (README "Scale"), and half the bytes
# (passages at a million: a 0.77 GB flat file instead of 1.5 GB). Sentences are "int8": an IVF
# level keeps 8-bit scalar-quantised codes (per dimension, its range trained on the level's
# sample), a quarter of float32's bytes (3.1 -> 1.5 GB at a million passages' 4M sentences), the
# same top answer as exact float16 search on every XQuAD and covidqa-dev question (README "Int8
# sentence vectors"); flat levels (below ANN_MIN_VECTORS) and an IVF level's delta stay float16
# (`level_dtype`): their exact search reads few vectors.
PASSAGE_DTYPE = _env_choice("ASSISTANT_PASSAGE_DTYPE", ("float32", "float16"), "float16")
SENTENCE_DTYPE = _env_choice("ASSISTANT_SENTENCE_DTYPE", tuple(DTYPES), "int8")


def level_dtype(kind: str, dtype: str) -> str:
    """What a store of `kind` asked for `dtype` holds: int8 codes only in IVF lists, float16
    elsewhere (a flat level, a PQ level's rescoring file, an HNSW graph's storage)."""
    return "float16" if dtype == "int8" and kind != "ivf" else dtype


class VectorStore(Protocol):
    """What retrieval needs from a vector store: rows in, rows out (FAISS on disk here, pgvector
    next). Row i is the i-th passage (or sentence) of the Index; vectors are unit length, so the
    inner product is the cosine.

    - `search(q, k)`: the (up to) k best rows for one query vector, best first, with scores; may
      be approximate (retrieval rescores every candidate exactly with `matrix()`).
    - `matrix()`: every vector, row-aligned, as a numpy array (a memory-mapped or zero-copy view:
      the store holds the only copy). Only the rows retrieval rescores are ever touched.
    - `add(vectors)`: append rows. `save(path)` / `load(path)`: one file per store.
    - `describe()`: what the manifest records about the store (kind, dtype, parameters).
    """

    def __len__(self) -> int: ...
    def add(self, vectors: np.ndarray) -> None: ...
    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def matrix(self) -> np.ndarray: ...
    def describe(self) -> dict: ...
    def save(self, path: Path) -> None: ...
    @classmethod
    def load(cls, path: Path) -> "VectorStore": ...


def choose_kind(n: int, level: str = "sentences") -> str:
    """'flat' (exact) for small levels; from ANN_MIN_VECTORS vectors up, the level's approximate
    kind (passages 'pq', sentences 'ivf'; ANN_KIND if set)."""
    return (ANN_KIND or LEVEL_ANN_KIND[level]) if n >= ANN_MIN_VECTORS else "flat"


def ivf_nlist(n: int) -> int:
    """Cells of an IVF level of n vectors: IVF_NLIST, or IVF_CELLS_PER_SQRT * sqrt(n) rounded to
    a power of two (at least 16), never more than n / IVF_TRAIN_PER_CELL (k-means needs samples)."""
    if IVF_NLIST:
        return IVF_NLIST
    want = 2 ** round(np.log2(max(1.0, IVF_CELLS_PER_SQRT * np.sqrt(max(n, 1)))))
    return int(max(1, min(max(16, want), n // IVF_TRAIN_PER_CELL)))


def training_sample(parts: list, n: int, seed: int = 0) -> np.ndarray:
    """Up to n rows drawn evenly at random from `parts`, float32: what an IVF level's k-means is
    trained on. A part is an array (or row view) or (source, rows): the rows `rows` of source,
    read in ascending order (a memory-mapped source is read where the sample falls, not whole)."""
    parts = [p if isinstance(p, tuple) else (p, None) for p in parts]
    sizes = [len(src) if rows is None else len(rows) for src, rows in parts]
    total = sum(sizes)
    pick = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    out, start = [], 0
    for (src, rows), size in zip(parts, sizes):
        mine = pick[(pick >= start) & (pick < start + size)] - start
        if len(mine):
            out.append(np.asarray(src[mine if rows is None else np.asarray(rows)[mine]], dtype=np.float32))
        start += size
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class FaissStore:
    """Vectors by row in one FAISS index that is also their only copy (no side `.npy`).

    kind 'flat': IndexFlatIP (float32) or IndexScalarQuantizer fp16 — exact search.
    kind 'ivf': IndexIVFFlat / IndexIVFScalarQuantizer fp16 over a flat k-means quantizer —
    approximate search (IVF_NPROBE cells scanned), exact vectors in its lists, a direct map
    (row -> list, offset) to read rows; trained on a sample before the first add.
    kind 'hnsw': IndexHNSWFlat / IndexHNSWSQ fp16 — approximate search, exact vectors in its
    storage (still read and served; new levels are PQ / IVF unless ASSISTANT_ANN_KIND=hnsw).
    kind 'pq': a flat index (the vectors, as kind 'flat') and beside it (`SCAN_SUFFIX`) 4-bit
    product-quantised codes (IndexPQFastScan); a search scans every code and rescores the
    PQ_RESCORE best exactly from the flat vectors.
    Loaded with IO_FLAG_MMAP_IFC: the vector codes stay on disk, paged in as read.

    A store read from a file changes without touching it: rows of removed articles become
    tombstones (`live[row]` is the id of each row; searches skip the others) and added rows go to
    a small exact `delta` beside it (ids after the file's). The file (an HNSW graph, or a flat
    level's codes) is never rewritten: the next generation links to it, and a reindex reads it
    memory-mapped like a server. A reindex rebuilds the level once tombstones reach
    MAX_TOMBSTONE_SHARE or the delta DELTA_MAX_VECTORS.
    """

    def __init__(self, index, kind: str, dtype: str, live: np.ndarray | None = None, delta=None,
                 source: Path | None = None, scan=None) -> None:
        self.index = index
        self.kind = kind
        self.dtype = dtype
        self.dim = int(index.d)
        self.live = None if live is None else np.asarray(live, dtype=np.int64)
        self.delta = delta  # a flat FAISS index of rows added since the graph was written, or None
        self.source = source  # the file the graph was read from (unchanged: linked, not rewritten)
        self._selector = None
        self.scan = scan  # kind 'pq': the product-quantised codes scanned first (IndexPQFastScan)

    @classmethod
    def create(cls, dim: int, kind: str = "flat", dtype: str = "float32") -> "FaissStore":
        import faiss

        check_env()
        ip = faiss.METRIC_INNER_PRODUCT
        dtype = level_dtype(kind, dtype)
        fp16 = dtype == "float16"
        if kind == "flat":
            index = _flat_index(dim, dtype)
        elif kind == "ivf":  # untrained: train() (or the first add) sizes and trains it
            index = _ivf_index(dim, dtype, 1)
        elif kind == "pq":  # the vectors in a flat index (rescoring), their codes beside it (scan)
            return cls(_flat_index(dim, dtype), kind, dtype, scan=_pq_index(dim))
        elif kind == "hnsw":
            index = (faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_fp16, HNSW_M, ip) if fp16
                     else faiss.IndexHNSWFlat(dim, HNSW_M, ip))
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = HNSW_EF_SEARCH
            if not index.is_trained:  # fp16 needs no statistics; train on nothing
                index.train(np.zeros((1, dim), dtype=np.float32))
        else:
            raise ValueError(f"unknown vector store kind {kind!r}")
        return cls(index, kind, dtype)

    @classmethod
    def build(cls, vectors: np.ndarray, kind: str | None = None, dtype: str = "float32",
              progress: bool = False, desc: str = "Vectors") -> "FaissStore":
        """A store of `vectors` (rows in order); kind chosen by size unless given."""
        store = cls.create(vectors.shape[1], kind or choose_kind(len(vectors)), dtype)
        store.add(vectors, progress=progress, desc=desc)
        return store

    def train(self, sample: np.ndarray, n: int) -> None:
        """An empty IVF store's cells for a level of about n vectors: k-means on `sample`
        (IVF_TRAIN_PER_CELL rows per cell are enough; training_sample draws them); or an empty
        PQ store's codebooks (PQ_TRAIN rows)."""
        import faiss

        if self.kind not in ("ivf", "pq") or self.index.ntotal:
            raise ValueError("only an empty IVF or PQ store is trained")
        check_env()
        sample = np.ascontiguousarray(sample, dtype=np.float32)
        if self.kind == "pq":  # 16 centroids per sub-quantiser: a tiny level's rows are repeated
            sample = np.tile(sample, (-(-640 // max(1, len(sample))), 1)) if len(sample) < 640 else sample
            self.scan = _pq_index(self.dim)
            # one thread: 96 small k-means (16 centroids each) gain nothing from more, and on a
            # busy machine OpenMP's waiting made it 10x slower (2.7 s against 28 s for 65,536 rows)
            faiss.omp_set_num_threads(1)
            self.scan.train(sample)
            return
        nlist = max(1, min(ivf_nlist(n), len(sample)))
        self.index = _ivf_index(self.dim, self.dtype, nlist)
        faiss.omp_set_num_threads(max(1, os.cpu_count() or 1))
        try:
            self.index.train(sample)
        finally:
            faiss.omp_set_num_threads(1)
        self.index.nprobe = IVF_NPROBE

    @property
    def _total(self) -> int:
        """Vectors held, tombstones included (graph, then delta)."""
        return int(self.index.ntotal) + (int(self.delta.ntotal) if self.delta is not None else 0)

    def __len__(self) -> int:
        return self._total if self.live is None else len(self.live)

    @property
    def dead(self) -> int:
        """Vectors of removed rows still held (tombstones)."""
        return 0 if self.live is None else self._total - len(self.live)

    @property
    def pending(self) -> int:
        """Rows in the delta (added since the graph was written)."""
        return int(self.delta.ntotal) if self.delta is not None else 0

    def keep_rows(self, rows: np.ndarray) -> None:
        """Only `rows` (ascending) stay, renumbered 0..len(rows)-1; the others become tombstones
        (cost: the rows, not the graph)."""
        rows = np.asarray(rows, dtype=np.int64)
        ids = rows if self.live is None else self.live[rows]
        self.live = None if len(ids) == self._total else ids
        self._selector = None

    def add(self, vectors: np.ndarray, progress: bool = False, desc: str = "Vectors") -> None:
        """Append rows, in batches (an HNSW insert of a million vectors takes a while: a bar).
        A graph read from a file is not changed: its new rows go to the delta."""
        n = len(vectors)
        if not n:
            return
        import faiss

        before = self._total
        to_delta = self.source is not None or self.delta is not None
        if to_delta and self.delta is None:
            self.delta = _flat_index(self.dim, self.dtype)
        if not to_delta and self.kind == "ivf" and not self.index.is_trained:
            self.train(training_sample([vectors], ivf_nlist(n) * IVF_TRAIN_PER_CELL), n)  # not trained yet
        if not to_delta and self.kind == "pq" and not self.scan.is_trained:
            self.train(training_sample([vectors], PQ_TRAIN), n)
        target = self.delta if to_delta else self.index
        step = 20_000
        # inserting into a graph or assigning to cells is the one long FAISS job: it may use every
        # core (no model runs meanwhile); searching goes back to the one thread beside torch
        # (embedder._limit_threads)
        wide = self.kind in ("hnsw", "ivf", "pq") and not to_delta and n >= step
        if wide:
            faiss.omp_set_num_threads(max(1, os.cpu_count() or 1))
        try:
            with tqdm(total=n, desc=f"{desc} ({self.kind})", unit="vec", disable=not progress or n < step,
                      leave=False) as bar:
                for i in range(0, n, step):
                    chunk = np.ascontiguousarray(vectors[i : i + step], dtype=np.float32)
                    target.add(chunk)
                    if self.kind == "pq" and not to_delta:
                        self.scan.add(chunk)
                    bar.update(len(chunk))
        finally:
            if wide:
                faiss.omp_set_num_threads(1)
        if not to_delta:
            self.source = None  # the graph changed: it is written anew
        if self.live is not None:
            self.live = np.concatenate([self.live, np.arange(before, before + n, dtype=np.int64)])
        self._selector = None

    def _codes(self):
        import faiss

        inner = self.index.storage if self.kind == "hnsw" else self.index
        return faiss.downcast_index(inner)

    def _main_rows(self):
        """The file's vectors by id: a zero-copy array (flat, HNSW), or IVFRows (IVF)."""
        return IVFRows(self) if self.kind == "ivf" else self._view(self._codes())

    def _view(self, flat) -> np.ndarray:
        """A zero-copy array over a flat FAISS index's codes (kept alive by the view)."""
        import faiss

        dt = DTYPES[self.dtype]
        total = int(flat.ntotal)
        if total == 0:
            return np.zeros((0, self.dim), dtype=dt)
        nbytes = total * flat.code_size
        addr = np.asarray(faiss.rev_swig_ptr(flat.codes.data(), nbytes)).__array_interface__["data"][0]
        # the view must keep this store (and so its memory, often a mapping of the file) alive
        buf = (ctypes.c_uint8 * nbytes).from_address(addr)
        buf._owner = self  # type: ignore[attr-defined]
        return np.frombuffer(buf, dtype=dt).reshape(total, self.dim)

    def matrix(self) -> np.ndarray:
        """Every vector, row-aligned: a zero-copy view of the index's own codes (float32 or
        float16), or with tombstones or a delta a RowView that reads the rows asked for. The
        view keeps the store alive; it is invalid once the store is added to."""
        main = self._main_rows()
        if self.live is None and self.delta is None:
            return main
        parts = [main] + ([self._view(self.delta)] if self.delta is not None else [])
        return RowView(parts, self.live if self.live is not None else np.arange(self._total, dtype=np.int64))

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (rows, scores) for one query vector, best first."""
        k = min(k, len(self))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if self.live is None and self.delta is None:
            if self.kind == "hnsw":
                self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
            elif self.kind == "ivf":
                self.index.nprobe = IVF_NPROBE
            elif self.kind == "pq":
                ids, scores = self._scan(q[0], k, None)
                return ids, scores
            scores, ids = self.index.search(q, k)
            keep = ids[0] >= 0
            return ids[0][keep].astype(np.int64), scores[0][keep]
        import faiss

        n_main = int(self.index.ntotal)
        if self._selector is None:
            live = self.live if self.live is not None else np.arange(self._total, dtype=np.int64)
            row_of = np.full(self._total, -1, dtype=np.int64)
            row_of[live] = np.arange(len(live))
            mask = row_of[:n_main] >= 0
            bits = np.packbits(mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits)) if not mask.all() else None
            delta_live = np.flatnonzero(row_of[n_main:] >= 0)
            self._selector = (sel, bits, row_of, delta_live)
        sel, _, row_of, delta_live = self._selector
        ids_all, scores_all = [], []
        if n_main and self.kind == "pq":
            ids, scores = self._scan(q[0], k, None if sel is None else row_of[:n_main] >= 0)
            ids_all.append(ids)
            scores_all.append(scores)
        elif n_main:
            if self.kind == "hnsw":
                params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(HNSW_EF_SEARCH, k)) if sel is not None \
                    else faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, k))
            elif self.kind == "ivf":
                params = faiss.SearchParametersIVF(sel=sel, nprobe=IVF_NPROBE) if sel is not None \
                    else faiss.SearchParametersIVF(nprobe=IVF_NPROBE)
            else:
                params = faiss.SearchParameters(sel=sel) if sel is not None else None
            scores, ids = self.index.search(q, k, params=params)
            keep = ids[0] >= 0
            ids_all.append(ids[0][keep].astype(np.int64))
            scores_all.append(scores[0][keep])
        if len(delta_live):  # the delta is small: exact
            d_rows, d_scores = exact_topk(self._view(self.delta)[delta_live], q[0], k)
            ids_all.append(delta_live[d_rows] + n_main)
            scores_all.append(d_scores)
        ids = np.concatenate(ids_all) if ids_all else np.zeros(0, np.int64)
        scores = np.concatenate(scores_all) if scores_all else np.zeros(0, np.float32)
        rows = row_of[ids]
        best = topk(scores, k)
        return rows[best], scores[best]

    def _scan(self, q: np.ndarray, k: int, alive: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """kind 'pq': the PQ_RESCORE best ids by their codes (more while tombstones are among
        them), rescored exactly from the flat vectors; the k best (ids of the file, scores)."""
        n = int(self.index.ntotal)
        want = max(PQ_RESCORE, k)
        if alive is not None:  # tombstones are skipped after the scan: ask for their share more
            want = int(want * n / max(1, int(alive.sum()))) + 1
        _, cand = self.scan.search(q.reshape(1, -1), min(want, n))
        cand = cand[0][cand[0] >= 0]
        if alive is not None:
            cand = cand[alive[cand]]
        cand = np.sort(cand)  # ascending rows: the mapped file read in order
        exact = np.asarray(self._view(self.index)[cand], dtype=np.float32) @ q
        best = topk(exact, k)
        return cand[best].astype(np.int64), exact[best]

    def exact_search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by reading every vector (what 'flat' does; the reference for an HNSW store)."""
        return exact_topk(self.matrix(), query, k)

    def describe(self) -> dict:
        d = {"kind": self.kind, "dtype": self.dtype, "vectors": len(self)}
        if self.kind == "hnsw":  # the graph's own parameters (it may predate a change of the defaults)
            h = self.index.hnsw
            d.update(M=int(h.nb_neighbors(1)), ef_construction=int(h.efConstruction), ef_search=HNSW_EF_SEARCH)
        elif self.kind == "ivf":  # the cells it was trained with; cells scanned per search now
            d.update(nlist=int(self.index.nlist), nprobe=IVF_NPROBE)
        elif self.kind == "pq":  # bytes of code per vector; candidates rescored exactly per search
            d.update(code_bytes=int(self.scan.code_size), rescored=PQ_RESCORE)
        if self.dead or self.pending:
            d.update(tombstones=self.dead, delta=self.pending)
        return d

    def save(self, path: Path) -> None:
        """One file for the graph (a link to the file it was read from when unchanged), and
        beside it the delta and the row ids when there are any."""
        import faiss

        path = Path(path)
        if self.source is not None and Path(self.source).exists():
            try:
                os.link(self.source, path)
            except OSError:
                shutil.copyfile(self.source, path)
        else:
            faiss.write_index(self.index, str(path))
        if self.scan is not None:
            scan_source = Path(str(self.source) + SCAN_SUFFIX) if self.source is not None else None
            if scan_source is not None and scan_source.exists():
                try:
                    os.link(scan_source, str(path) + SCAN_SUFFIX)
                except OSError:
                    shutil.copyfile(scan_source, str(path) + SCAN_SUFFIX)
            else:
                faiss.write_index(self.scan, str(path) + SCAN_SUFFIX)
        if self.delta is not None:
            faiss.write_index(self.delta, str(path) + DELTA_SUFFIX)
        if self.live is not None:  # which ids are rows (the rest are tombstones)
            np.save(Path(str(path) + LIVE_SUFFIX), self.live, allow_pickle=False)

    @classmethod
    def load(cls, path: Path, mmap: bool = True) -> "FaissStore":
        """mmap: vector codes mapped from the file (read-only: rows added later go to a delta)."""
        import faiss

        check_env()
        raw = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
        index = faiss.downcast_index(raw)
        if index is not raw:  # the typed proxy must own the C++ index, or it dies with `raw`
            raw.this.disown()
            index.this.own(True)
        kind = "hnsw" if isinstance(index, faiss.IndexHNSW) else "ivf" if isinstance(index, faiss.IndexIVF) else "flat"
        inner = faiss.downcast_index(index.storage) if kind == "hnsw" else index
        dtype = "float16" if isinstance(inner, (faiss.IndexScalarQuantizer, faiss.IndexIVFScalarQuantizer)) else "float32"
        if dtype == "float16" and inner.sq.qtype == faiss.ScalarQuantizer.QT_8bit:
            dtype = "int8"
        if kind == "hnsw":
            index.hnsw.efSearch = HNSW_EF_SEARCH
        elif kind == "ivf":
            index.nprobe = IVF_NPROBE
        live_path, delta_path = Path(str(path) + LIVE_SUFFIX), Path(str(path) + DELTA_SUFFIX)
        live = np.load(live_path, allow_pickle=False) if live_path.exists() else None
        delta = faiss_downcast(faiss.read_index(str(delta_path))) if delta_path.exists() else None
        scan_path = Path(str(path) + SCAN_SUFFIX)
        scan = faiss_downcast(faiss.read_index(str(scan_path))) if kind == "flat" and scan_path.exists() else None
        return cls(index, "pq" if scan is not None else kind, dtype, live, delta, source=Path(path), scan=scan)


def _flat_index(dim: int, dtype: str):
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if level_dtype("flat", dtype) == "float16":  # an int8 IVF level's delta: float16, searched exactly
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, ip)
        index.train(np.zeros((1, dim), dtype=np.float32))
        return index
    return faiss.IndexFlatIP(dim)


PQ_TRAIN = 65_536  # vectors a PQ level's codebooks are trained on


def _pq_index(dim: int):
    """Untrained 4-bit product quantiser codes of PQ_DIMS_PER_CODE dimensions each, scanned
    with SIMD lookup tables (IndexPQFastScan): 48 bytes per 384-d vector."""
    import faiss

    m = dim // PQ_DIMS_PER_CODE if dim % PQ_DIMS_PER_CODE == 0 else dim
    return faiss.IndexPQFastScan(dim, m, 4, faiss.METRIC_INNER_PRODUCT)


def _ivf_index(dim: int, dtype: str, nlist: int):
    """An empty, untrained IVF level (inner product) that keeps row -> (list, offset), so that
    rows can be read back (exact rescoring, a rebuild) without a second copy of the vectors."""
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    quantizer = faiss.IndexFlatIP(dim)
    if dtype in ("float16", "int8"):
        qtype = faiss.ScalarQuantizer.QT_fp16 if dtype == "float16" else faiss.ScalarQuantizer.QT_8bit
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, qtype, ip)
        # codes are of the vectors themselves, not of residuals: a row reads back without its cell
        # (int8: each dimension's range is trained on the same sample as the cells)
        index.by_residual = False
    else:
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, ip)
    quantizer.this.disown()  # the IVF index owns (and frees) its quantizer
    index.own_fields = True
    index.set_direct_map_type(faiss.DirectMap.Array)
    index.nprobe = IVF_NPROBE
    return index


class IVFRows:
    """An IVF store's vectors by id, read through its direct map (only the rows asked for; the
    lists are memory-mapped). Indexing as a 2-d array: an int, a slice, an array of ids."""

    def __init__(self, store: "FaissStore") -> None:
        self.store, self.index = store, store.index
        self.dtype = np.dtype(DTYPES[store.dtype])
        self.shape = (int(self.index.ntotal), store.dim)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows):
        if isinstance(rows, tuple):
            head = self[rows[0]]
            return head[(slice(None),) + rows[1:]] if np.ndim(head) > 1 else head[rows[1:]]
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(len(self)), dtype=np.int64)
        ids = np.asarray(rows, dtype=np.int64)
        if ids.ndim == 0:
            return self[ids.reshape(1)][0]
        flat = ids.ravel()
        if len(flat) and (flat.min() < -len(self) or flat.max() >= len(self)):
            raise IndexError("row out of range")
        flat = np.where(flat < 0, flat + len(self), flat)
        out = self.index.reconstruct_batch(flat) if len(flat) else np.zeros((0, self.shape[1]), np.float32)
        return out.astype(self.dtype, copy=False).reshape(ids.shape + (self.shape[1],))

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)


def faiss_downcast(index):
    import faiss

    out = faiss.downcast_index(index)
    if out is not index:
        index.this.disown()
        out.this.own(True)
    return out


class RowView:
    """The vectors of a store with tombstones or a delta, by row: indexing reads only the rows
    asked for (row i is id live[i]: ids of the graph, then of the delta); np.asarray() gathers
    them all."""

    def __init__(self, parts: list[np.ndarray], live: np.ndarray) -> None:
        self.parts, self.live = parts, live
        self.n0 = len(parts[0])
        self.dtype = parts[0].dtype
        self.shape = (len(live), parts[0].shape[1])
        self.ndim = 2

    def __len__(self) -> int:
        return len(self.live)

    def _gather(self, ids) -> np.ndarray:
        if len(self.parts) == 1:
            return self.parts[0][ids]
        ids = np.asarray(ids)
        if ids.ndim == 0:
            i = int(ids)
            return self.parts[0][i] if i < self.n0 else self.parts[1][i - self.n0]
        out = np.empty(ids.shape + (self.shape[1],), dtype=self.dtype)
        m = ids < self.n0
        out[m] = self.parts[0][ids[m]]
        out[~m] = self.parts[1][ids[~m] - self.n0]
        return out

    def __getitem__(self, rows):
        if isinstance(rows, tuple):
            head = self[rows[0]]
            return head[(slice(None),) + rows[1:]] if np.ndim(head) > 1 else head[rows[1:]]
        return self._gather(self.live[rows])

    def __array__(self, dtype=None, copy=None):
        out = self._gather(self.live)
        return out if dtype is None else out.astype(dtype, copy=False)


class ArticleCentroids:
    """Per-article unit mean vectors of the passages (retrieval's article prior), computed when a
    generation is built, so that no question reads every passage vector.

    `of_row[r]` is the centroid id of passage row r's article; the vectors are a base file
    (`article_centroids.npy`, linked into the next generation unchanged, like a FAISS level) and
    a small delta of the articles added since it was written (`article_centroids.delta.npy`).
    Ids of removed articles are simply no longer referenced; once they reach
    MAX_TOMBSTONE_SHARE of the ids, or the delta DELTA_MAX_VECTORS, the base is rewritten.
    A centroid is the float32 sum of its article's passage vectors in row order, normalised:
    the same numbers whether computed for the whole library or for one article."""

    BASE, DELTA, ROWS = "article_centroids.npy", "article_centroids.delta.npy", "passage_centroid.npy"

    def __init__(self, of_row: np.ndarray, base: np.ndarray, delta: np.ndarray | None = None,
                 source: Path | None = None) -> None:
        self.of_row = of_row
        self.base = base
        self.delta = delta if delta is not None else np.zeros((0, base.shape[1]), dtype=np.float32)
        self.source = source  # the base's file, when unchanged since it was read (linked, not rewritten)

    @property
    def n_ids(self) -> int:
        return len(self.base) + len(self.delta)

    @staticmethod
    def compute(groups: np.ndarray, vectors, dim: int) -> np.ndarray:
        """Unit mean vector per group (groups numbered 0..g-1, in row order), reading `vectors`
        (row-aligned with `groups`) in blocks."""
        groups = np.asarray(groups, dtype=np.int64)
        g = int(groups.max()) + 1 if len(groups) else 0
        cent = np.zeros((g, dim), dtype=np.float32)
        for i in range(0, len(groups), 65_536):
            np.add.at(cent, groups[i : i + 65_536], np.asarray(vectors[i : i + 65_536], dtype=np.float32))
        cent /= np.maximum(np.linalg.norm(cent, axis=1, keepdims=True), 1e-9)
        return cent

    @staticmethod
    def number(keys) -> np.ndarray:
        """Group numbers by order of first appearance of each key (an article's passages are contiguous)."""
        numbers: dict = {}
        return np.fromiter((numbers.setdefault(k, len(numbers)) for k in keys), dtype=np.int64)

    @classmethod
    def build(cls, doc_of_row, vectors, dim: int) -> "ArticleCentroids":
        groups = cls.number(doc_of_row)
        return cls(groups.astype(np.int32), cls.compute(groups, vectors, dim))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        nb = len(self.base)
        if not len(self.delta):
            return np.asarray(self.base[ids], dtype=np.float32)
        out = np.empty((len(ids), self.base.shape[1]), dtype=np.float32)
        m = ids < nb
        out[m] = self.base[ids[m]]
        out[~m] = self.delta[ids[~m] - nb]
        return out

    def carry(self, kept_rows: np.ndarray, new_doc_of_row, new_vectors: np.ndarray) -> "ArticleCentroids":
        """The next generation's: the kept passage rows' ids, then the new rows' articles
        (their centroids computed from `new_vectors` alone). Cost: the change (and one int32 per
        passage row)."""
        kept_ids = np.asarray(self.of_row, dtype=np.int64)[np.asarray(kept_rows, dtype=np.int64)]
        groups = self.number(new_doc_of_row)
        dim = self.base.shape[1]
        new = self.compute(groups, new_vectors, dim) if len(groups) else np.zeros((0, dim), np.float32)
        of_row = np.concatenate([kept_ids, groups + self.n_ids]).astype(np.int32)
        out = ArticleCentroids(of_row, self.base, np.concatenate([np.asarray(self.delta, np.float32), new]),
                               self.source)
        live = np.unique(of_row)
        if (out.n_ids - len(live)) > MAX_TOMBSTONE_SHARE * out.n_ids or len(out.delta) > DELTA_MAX_VECTORS:
            out = out.compacted(live)
        return out

    def compacted(self, live: np.ndarray | None = None) -> "ArticleCentroids":
        """Only the referenced ids, renumbered, in one base (no delta)."""
        if live is None:
            live = np.unique(self.of_row)
        remap = np.full(self.n_ids, -1, dtype=np.int64)
        remap[live] = np.arange(len(live))
        return ArticleCentroids(remap[np.asarray(self.of_row, dtype=np.int64)].astype(np.int32), self.vectors(live))

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        if self.source is not None and Path(self.source).exists():
            try:
                os.link(self.source, folder / self.BASE)
            except OSError:
                shutil.copyfile(self.source, folder / self.BASE)
        else:
            np.save(folder / self.BASE, np.ascontiguousarray(self.base, dtype=np.float32), allow_pickle=False)
        if len(self.delta):
            np.save(folder / self.DELTA, np.asarray(self.delta, dtype=np.float32), allow_pickle=False)
        np.save(folder / self.ROWS, np.asarray(self.of_row, dtype=np.int32), allow_pickle=False)

    @classmethod
    def load(cls, folder: Path) -> "ArticleCentroids | None":
        folder = Path(folder)
        if not (folder / cls.ROWS).exists():
            return None
        base = np.load(folder / cls.BASE, allow_pickle=False, mmap_mode="r")
        delta = np.load(folder / cls.DELTA, allow_pickle=False) if (folder / cls.DELTA).exists() else None
        return cls(np.load(folder / cls.ROWS, allow_pickle=False, mmap_mode="r"), base, delta, folder / cls.BASE)


def exact_topk(matrix: np.ndarray, query: np.ndarray, k: int, block: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows by inner product, reading `matrix` in blocks (float16 is widened per block)."""
    n = len(matrix)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    q = np.asarray(query, dtype=np.float32)
    scores = np.empty(n, dtype=np.float32)
    for i in range(0, n, block):
        scores[i : i + block] = np.asarray(matrix[i : i + block], dtype=np.float32) @ q
    rows = topk(scores, k)
    return rows, scores[rows]


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the k highest scores, best first (ties: lower row first), without sorting all
    of them: argpartition is linear, a full argsort is n log n (240 ms vs 18 ms at 5M)."""
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < n:
        # the k-th best score; ties at it go to the lowest rows, as a stable sort would do
        thr = scores[np.argpartition(-scores, k - 1)[k - 1]]
        above = np.flatnonzero(scores > thr)
        part = np.concatenate([above, np.flatnonzero(scores == thr)[: k - len(above)]])
    else:
        part = np.arange(n)
    return part[np.lexsort((part, -scores[part]))].astype(np.int64)


def int_id(hex_id: str) -> int:
    """A content hash as a positive int64 id."""
    return int(hex_id[:15], 16)


# --- BM25 ------------------------------------------------------------------------------------

_STEMMER = None


_HYPHENATED = re.compile(r"\b[A-Za-z]+(?:-[A-Za-z]+)+\b")


def _catenate(text: str) -> str:
    """Add the joined form of hyphenated words ("micro-needling" -> also "microneedling"), so
    either spelling finds the other (Lucene's word-delimiter filter with catenate_words)."""
    return _HYPHENATED.sub(lambda m: f"{m.group(0)} {m.group(0).replace('-', '')}", text)


_WORDS = re.compile(r"(?u)\b\w\w+\b").findall  # bm25s's (and scikit-learn's) token pattern


def tokenize(texts: list[str]) -> list[list[str]]:
    """Lower-cased, stop-worded, Snowball-stemmed tokens, hyphenated words both split and joined.

    The same tokens as `bm25s.tokenize(texts, stopwords=..., stemmer=..., return_ids=False)`
    (a test holds them equal), without its per-call progress bars and per-text stop-word set:
    questions call this hundreds of times."""
    global _STEMMER
    if _STEMMER is None:
        import Stemmer

        _STEMMER = Stemmer.Stemmer("english")
    stop = _stopword_set()
    rows = [[w for w in _WORDS((_catenate(t) if "-" in t else t).lower()) if w not in stop] for t in texts]
    unique = list({w: None for row in rows for w in row})
    stem = dict(zip(unique, _STEMMER.stemWords(unique))) if unique else {}
    return [[stem[w] for w in row] for row in rows]


_LETTERS = re.compile(r"[^\W\d_]+")


def typed_words(text: str) -> dict[str, str]:
    """A text's BM25 tokens -> the word as typed, lower-cased (tokens made of one word only):
    what a person wrote, for the steps that read words rather than stems (spelling, bridging)."""
    words = list(dict.fromkeys(_LETTERS.findall(text.lower())))
    out: dict[str, str] = {}
    for w, toks in zip(words, tokenize(words)):
        if len(toks) == 1:
            out.setdefault(toks[0], w)
    return out


@functools.lru_cache(maxsize=1)
def _stopword_set() -> frozenset[str]:
    return frozenset(_stopwords())


@functools.lru_cache(maxsize=1)
def _stopwords() -> list[str]:
    """bm25s's extended English list plus the question words it leaves in ("also", "much")."""
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    extra = {"also", "much", "many", "would", "could", "should", "can", "may", "might", "must", "shall",
             # light verbs of questions ("Who should not get X?", "How is X made?"), as in the
             # SMART and closed-class stop lists: they match any passage that happens to use them
             "get", "gets", "got", "gotten", "getting", "make", "makes", "made", "making", "done"}
    return sorted(set(STOPWORDS_EN_PLUS) | extra)


def build_bm25(texts: list[str]) -> "BM25Level":
    return BM25Level.from_tokens(tokenize(texts) if texts else [])


def bm25_scores(retriever, query_tokens: list[str], n: int) -> np.ndarray:
    """Scores of every indexed text for one tokenised query (zeros for unknown words), summed
    token by token in query order, as bm25s's own `get_scores` sums them."""
    out = np.zeros(n, dtype=np.float32)
    ids = retriever.ids(query_tokens)
    if not ids or n == 0:
        return out
    full = np.zeros(max(n, retriever.n_rows) + 1, dtype=np.float32)  # (+1: where removed rows' entries land)
    for t in ids:
        rows, scores = retriever.postings(t)
        np.add.at(full, rows, scores)
    out[:] = full[:n]
    return out


def bm25_topk(retriever, query_tokens: list[str], n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best-scoring rows (best first; ties: lower row first) and their scores, taken from
    the query words' postings alone: rows no query word occurs in score nothing and are never
    returned. Cost: the postings of the query's words, not the size of the library.

    The scores are the numbers `bm25_scores` gives at those rows, summed the same way (token by
    token, in query order) into a zeroed scratch array that is zeroed again after (only at the
    rows touched). The best k rows are then found among the touched entries: a row appears
    there at most once per query word, so the best k × (query words) entries hold every row of
    the top k (ties at the boundary are all taken, then ordered by row).

    The sums are kept by *slot* (`BM25Level.slots`: the main's row ids as they are, no map per
    entry); slots of removed rows are set to -inf before the best are taken, and only the best
    are mapped to rows."""
    ids = retriever.ids(query_tokens)
    empty = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if not ids or n <= 0 or k <= 0:
        return empty
    got: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    spans = []
    for t in ids:  # a repeated word's postings are scored once
        if t not in got:
            got[t] = retriever.slots(t)
        if len(got[t][0]):
            spans.append(got[t])
    if not spans:
        return empty
    dead = retriever.dead  # slots of removed rows: never among the best
    entries = sum(len(r) for r, _ in spans)
    by_slot = len(dead) <= 2 * entries  # else (many removed rows) look the touched entries up instead
    with _scratch(max(n, retriever.n_slots)) as buf:
        touched: list[np.ndarray] = []
        try:
            for rows, scores in spans:
                touched.append(rows)
                np.add.at(buf, rows, scores)
            if len(dead) and by_slot:
                buf[dead] = -np.inf
            rows = touched[0] if len(touched) == 1 else np.concatenate(touched)
            vals = buf[rows]
            if len(dead) and not by_slot:
                vals[retriever.dead_mask()[rows]] = -np.inf
            head = min(len(vals), k * len(spans))
            if head < len(vals):
                thr = vals[np.argpartition(-vals, head - 1)[head - 1]]
                rows = rows[vals >= thr]
            cand = np.unique(rows).astype(np.int64)
            scores = buf[cand]
        finally:
            for r in touched:
                buf[r] = 0.0
            if len(dead) and by_slot:
                buf[dead] = 0.0
    cand = retriever.to_rows(cand)
    keep = (scores > 0) & (cand < min(n, retriever.n_rows))
    cand, scores = cand[keep], scores[keep]
    order = np.lexsort((cand, -scores))[:k]
    return cand[order], scores[order]


_SCRATCH: dict[int, list[np.ndarray]] = {}  # size -> zeroed float32 arrays not in use
_SCRATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _scratch(n: int):
    """A float32 array of n zeros, lent for one BM25 top-k and zeroed again by the borrower at
    the rows it touched: a fresh 16 MB array per question at 4M sentences costs page faults.
    Arrays are pooled, not per thread: a server's thread pool has dozens of threads, but only
    as many arrays exist as questions ever summed BM25 at the same moment."""
    with _SCRATCH_LOCK:
        free = _SCRATCH.get(n)
        buf = free.pop() if free else None
    if buf is None:
        buf = np.zeros(n, dtype=np.float32)
    try:
        yield buf
    finally:
        with _SCRATCH_LOCK:
            for size in [x for x in _SCRATCH if x != n][: max(0, len(_SCRATCH) - 3)]:
                del _SCRATCH[size]  # sizes of libraries served before a reindex
            _SCRATCH.setdefault(n, []).append(buf)


def bm25_scores_for(retriever, query_tokens: list[str], rows: np.ndarray) -> np.ndarray:
    """Scores of only these rows, the same numbers `bm25_scores(...)[rows]` gives, from the
    postings of the query's words (cost: those postings, not the size of the library).

    A text's score is the sum of its entries over the query's tokens, a repeated token counted
    each time, in query order (so float32 sums match bm25s's own bit for bit). Each token's rows
    are ascending in its postings, which lets a common word be searched from the rows' side."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.zeros(len(rows), dtype=np.float32)
    ids = retriever.ids(query_tokens)
    if not ids or not len(rows):
        return out
    uniq, inv = np.unique(rows, return_inverse=True)
    uniq = retriever.to_slots(uniq)  # (ascending: the slots of live rows keep their order)
    acc = np.zeros(len(uniq), dtype=np.float32)
    for t in ids:
        if retriever.entries(t) > 2 * len(uniq):
            # a common word: look the rows up in its postings (ascending), rows x log(postings),
            # instead of each of its postings among the rows (at a million passages a word can
            # sit in 400,000 sentences, and a question looks up ~1,300); only the entries found
            # are scored
            acc += retriever.scores_at(t, uniq)
            continue
        docs, scores = retriever.slots(t)
        if not len(docs):
            continue
        pos = np.searchsorted(uniq, docs)
        pos[pos >= len(uniq)] = 0
        hit = uniq[pos] == docs
        if hit.any():
            np.add.at(acc, pos[hit], scores[hit])
    return acc[inv]


# --- BM25 as segments: what a reindex updates in proportion to the change ----------------------

BM25_K1, BM25_B = 1.5, 0.75  # bm25s's defaults (method "lucene"): every level is scored with them
BM25_TF, BM25_DOCLEN = "tf.npy", "doclen.npy"  # format 5: beside bm25s's own files (read, converted)
LEVEL_META = "level.json"  # a BM25 level kept as segments (below); absent: bm25s's own arrays
MAIN_VOCAB = "main.vocab.txt"
MAIN_FILES = ("main.indptr.npy", "main.indices.npy", "main.code.npy", "main.doclen.npy", "main.pairs.npy", MAIN_VOCAB)
# the delta is merged into a new main past this share of the main's entries (and this many)
BM25_DELTA_SHARE = float(os.environ.get("ASSISTANT_BM25_DELTA_SHARE", "0.05"))
BM25_DELTA_MIN = _env_int("ASSISTANT_BM25_DELTA_MIN", 200_000)


def _idf(n: int, d: int) -> np.float32:
    """bm25s's lucene idf of a word in d of n rows, as float32 (what its `index` stores)."""
    import math

    return np.float32(math.log(1 + (n - d + 0.5) / (d + 0.5)))


@dataclass
class Postings:
    """Term frequencies token-major (token t's rows are indices[indptr[t]:indptr[t+1]],
    ascending; tf beside them) and each row's length: what a BM25 level is computed from. Used
    to build a level from nothing, to merge a level's segments and to read older generations."""

    vocab: list[str]  # token id -> token
    indptr: np.ndarray  # int64, len(vocab) + 1
    indices: np.ndarray  # int32 rows
    tf: np.ndarray  # term frequency of each entry (an integer type; float32 in format 5)
    doclen: np.ndarray  # int32 tokens per row

    @property
    def n_rows(self) -> int:
        return int(len(self.doclen))

    @classmethod
    def empty(cls) -> "Postings":
        return cls([], np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.uint32), np.zeros(0, np.int32))

    @classmethod
    def from_tokens(cls, rows: list[list[str]]) -> "Postings":
        return cls.empty().extend(rows)

    def keep(self, rows: np.ndarray) -> "Postings":
        """Only `rows` (ascending), renumbered 0..len(rows)-1. Cost: one pass over the entries."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == self.n_rows:  # rows ascending and unique: all of them, in order
            return self
        old_to_new = np.full(self.n_rows, -1, dtype=np.int32)  # int32 like `indices`: half the traffic
        old_to_new[rows] = np.arange(len(rows), dtype=np.int32)
        indptr = np.asarray(self.indptr, dtype=np.int64)
        new_rows = old_to_new[np.asarray(self.indices)]
        m = new_rows >= 0
        # entries dropped per token from the dropped entries' positions (few for a small change),
        # not a cumulative sum over every entry (68M at a million passages' sentences: 4 s)
        gone = np.flatnonzero(~m)
        counts = np.diff(indptr) - np.bincount(np.searchsorted(indptr, gone, side="right") - 1,
                                               minlength=len(indptr) - 1)
        out_ptr = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=out_ptr[1:])
        return Postings(list(self.vocab), out_ptr, new_rows[m], np.asarray(self.tf)[m],
                        np.asarray(self.doclen)[rows])

    def extend(self, rows: list[list[str]]) -> "Postings":
        """These tokenised texts appended as rows n_rows, n_rows+1, ... (cost: their tokens,
        plus one copy of the arrays to insert their entries)."""
        if not rows:
            return self
        vocab = {t: i for i, t in enumerate(self.vocab)}
        tok, row, tf, lens = _entries(rows, vocab)
        return self.insert(list(vocab), tok, row + self.n_rows, tf, lens)

    def insert(self, vocab: list[str], tok: np.ndarray, row: np.ndarray, tf: np.ndarray,
               lens: np.ndarray) -> "Postings":
        """Entries (sorted by token, then row) of rows appended after the last, each placed after
        its token's entries (`vocab`: this one's, then the tokens new to it)."""
        v_old, v_new = len(self.vocab), len(vocab)
        old_ptr = np.asarray(self.indptr, dtype=np.int64)
        old_counts = np.zeros(v_new, dtype=np.int64)
        old_counts[:v_old] = np.diff(old_ptr)
        counts = old_counts + np.bincount(tok, minlength=v_new)
        ptr = np.zeros(v_new + 1, dtype=np.int64)
        np.cumsum(counts, out=ptr[1:])
        at = old_ptr[np.minimum(np.asarray(tok, dtype=np.int64) + 1, v_old)]  # after the token's old entries
        dtype = np.result_type(np.asarray(self.tf).dtype, np.asarray(tf).dtype)
        indices = np.insert(np.asarray(self.indices, dtype=np.int32), at, np.asarray(row, dtype=np.int32))
        tfs = np.insert(np.asarray(self.tf, dtype=dtype), at, np.asarray(tf, dtype=dtype))
        return Postings(vocab, ptr, indices, tfs,
                        np.concatenate([np.asarray(self.doclen, dtype=np.int32), np.asarray(lens, dtype=np.int32)]))

    def compact(self) -> "Postings":
        """Without the tokens no row uses any more (a full build would not know them)."""
        counts = np.diff(np.asarray(self.indptr, dtype=np.int64))
        used = counts > 0
        if used.all():
            return self
        ptr = np.zeros(int(used.sum()) + 1, dtype=np.int64)
        np.cumsum(counts[used], out=ptr[1:])
        return Postings([t for t, u in zip(self.vocab, used) if u], ptr, self.indices, self.tf, self.doclen)

    def level(self) -> "BM25Level":
        """These postings as a BM25 level of one (main) segment."""
        return BM25Level.from_postings(self)

    def token_rows(self) -> list[list[str]]:
        """Each row's tokens as a bag (token order is lost; BM25 does not use it)."""
        indptr = np.asarray(self.indptr, dtype=np.int64)
        tok = np.repeat(np.arange(len(self.vocab), dtype=np.int64), np.diff(indptr))
        rows = np.asarray(self.indices, dtype=np.int64)
        order = np.lexsort((tok, rows))
        reps = np.asarray(self.tf)[order].astype(np.int64)
        flat = np.repeat(tok[order], reps)
        lens = np.bincount(rows, weights=np.asarray(self.tf, dtype=np.float64), minlength=self.n_rows).astype(np.int64)
        words = np.array(self.vocab, dtype=object)[flat].tolist() if len(flat) else []
        out, at = [], 0
        for n in lens.tolist():
            out.append(words[at : at + n])
            at += n
        return out


def _entries(rows: list[list[str]], vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The (token, row, tf) entries of tokenised rows, sorted by token then row (rows from 0),
    and each row's length; tokens new to `vocab` are added to it."""
    ids = np.fromiter((vocab.setdefault(t, len(vocab)) for row in rows for t in row), dtype=np.int64)
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    n_new = len(rows)
    row = np.repeat(np.arange(n_new, dtype=np.int64), lens)
    keys, tf = np.unique(ids * n_new + row, return_counts=True)  # by token, then row
    return keys // n_new, keys % n_new, tf.astype(np.uint32), lens


class ScoredLevel:
    """BM25 as bm25s keeps it: a float32 score per entry, token-major (data/indices/indptr).
    Generations written before segments are served from it as they were (the next reindex
    converts them), and tests compare the segments with bm25s's own `index` through it."""

    def __init__(self, retriever) -> None:
        self.retriever = retriever
        m = retriever.scores
        self.data, self.indices, self.indptr = m["data"], m["indices"], np.asarray(m["indptr"])
        self.n_rows = self.n_slots = int(m["num_docs"])
        self.vocab_dict = {t: i for t, i in (retriever.vocab_dict or {}).items() if t and i + 1 < len(self.indptr)}

    def ids(self, tokens: list[str]) -> list[int]:
        """The ids of the tokens some row holds, in query order (repeats kept)."""
        v = self.vocab_dict
        return [v[t] for t in tokens if t in v]

    def entries(self, t: int) -> int:
        return int(self.indptr[t + 1] - self.indptr[t])

    def postings(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = int(self.indptr[t]), int(self.indptr[t + 1])
        return np.asarray(self.indices[a:b]), np.asarray(self.data[a:b], dtype=np.float32)

    slots = postings  # (a BM25Level's questions sum in slots; here they are the rows)
    dead = np.zeros(0, np.int64)

    def dead_mask(self) -> np.ndarray:
        return np.zeros(self.n_rows, dtype=bool)

    @staticmethod
    def to_rows(ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64)

    to_slots = to_rows

    def rows(self, t: int) -> np.ndarray:
        return np.asarray(self.indices[int(self.indptr[t]) : int(self.indptr[t + 1])])

    def scores_at(self, t: int, rows: np.ndarray) -> np.ndarray:
        """Token t's scores at these rows (ascending, unique); 0 where it is absent."""
        docs, out = self.rows(t), np.zeros(len(rows), dtype=np.float32)
        if len(docs):
            pos = np.minimum(np.searchsorted(docs, rows), len(docs) - 1)
            hit = docs[pos] == rows
            a = int(self.indptr[t])
            out[hit] = np.asarray(self.data[a + pos[hit]], dtype=np.float32) if hit.any() else 0
        return out

    def known(self) -> tuple[list[str], np.ndarray]:
        """The tokens some row holds and the number of rows holding each."""
        toks = list(self.vocab_dict)
        tids = np.fromiter(self.vocab_dict.values(), dtype=np.int64, count=len(toks))
        return toks, self.indptr[tids + 1] - self.indptr[tids]

    def save(self, folder: Path) -> None:
        self.retriever.save(folder, show_progress=False)


class BM25Level:
    """One BM25 level (passages or sentences) as segments, the way search engines keep an
    inverted index: what a reindex changes is proportional to the change, not to the library.

    - the *main* segment, token-major: indptr over the main's vocabulary, indices = main rows
      (ascending per token) and per entry a 2-byte code of its (term frequency, row length)
      pair (`pairs`: the few hundred distinct pairs a level holds), and each row's length;
      written once, then hard-linked into every later generation until a merge writes another;
    - *tombstones*: `rowmap` (main row -> row of the level; a removed row -> n_rows, a slot
      past the last row that every reader ignores) and `live` (the reverse), None when every
      main row lives; the live main rows are the level's first rows, in main order;
    - the *delta*: the rows added since the main was written (entries sorted by token then row:
      tok, rows from 0, code; and their lengths), rows n_live_main.. of the level;
    - global statistics, small and updated per reindex: each token's df over live rows and the
      total length (so avgdl).

    Scores are computed when asked: per pair, tf / (k1 × ((1 - b) + b × length / avgdl) + tf)
    in float64 (a table of a few hundred, per level), times the token's idf, as float32: the
    float ops bm25s's `index` does per entry (lucene, k1 1.5, b 0.75), so the scores are bit for
    bit those of a build from nothing. The delta is merged into a new main past BM25_DELTA_SHARE
    of the main's entries, tombstones past MAX_TOMBSTONE_SHARE of its rows."""

    def __init__(self, vocab: list[str], vocab_dict: dict[str, int], main: Postings, pairs: np.ndarray,
                 rowmap: np.ndarray | None, live: np.ndarray | None,
                 delta: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], df: np.ndarray,
                 sum_doclen: int, v_main: int, p_main: int, source: Path | None = None) -> None:
        # main.tf holds the entries' pair codes; pairs[code] = (tf, row length)
        self.vocab, self.vocab_dict, self.main, self.pairs = vocab, vocab_dict, main, pairs
        self.rowmap, self.live = rowmap, live
        self.delta_tok, self.delta_rows, self.delta_code, self.delta_doclen = delta
        self.df, self.sum_doclen = df, int(sum_doclen)
        self.v_main, self.p_main = v_main, p_main  # the main's vocabulary and pairs: prefixes of the level's
        self.source = source  # the folder the main segment's files were read from (linked, not rewritten)
        self.n_main = main.n_rows
        self.n_live_main = self.n_main if live is None else len(live)
        self.n_rows = self.n_live_main + len(self.delta_doclen)
        self.n_slots = self.n_main + len(self.delta_doclen)  # see `slots`
        self._dead: np.ndarray | None = None
        self._dead_mask: np.ndarray | None = None
        if live is not None and rowmap is None:  # (the slot moves with n_rows: the map is made anew)
            self.rowmap = np.full(self.n_main, self.n_rows, dtype=np.int32)
            self.rowmap[np.asarray(live)] = np.arange(len(live), dtype=np.int32)
        self._indptr = np.asarray(main.indptr, dtype=np.int64)
        self._tfc: np.ndarray | None = None
        self._pair_ids: dict[tuple[int, int], int] | None = None

    # --- building and updating ---------------------------------------------------------------

    @classmethod
    def empty(cls) -> "BM25Level":
        return cls.from_postings(Postings.empty())

    @classmethod
    def from_tokens(cls, rows: list[list[str]]) -> "BM25Level":
        return cls.from_postings(Postings.from_tokens(rows))

    @classmethod
    def from_postings(cls, p: Postings) -> "BM25Level":
        """A level whose main segment is these postings (written in full by the next save)."""
        p = p.compact()
        indices = np.ascontiguousarray(p.indices, dtype=np.int32)
        doclen = np.ascontiguousarray(p.doclen, dtype=np.int32)
        pairs, code = _pair_codes(p.tf, indices, doclen)
        main = Postings(list(p.vocab), np.asarray(p.indptr, dtype=np.int64), indices, code, doclen)
        empty = (np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, code.dtype), np.zeros(0, np.int32))
        return cls(list(main.vocab), {t: i for i, t in enumerate(main.vocab)}, main, pairs, None, None, empty,
                   np.diff(main.indptr).astype(np.int64), int(doclen.sum(dtype=np.int64)), len(main.vocab), len(pairs))

    def _with(self, **kw) -> "BM25Level":
        args = dict(vocab=self.vocab, vocab_dict=self.vocab_dict, main=self.main, pairs=self.pairs,
                    rowmap=self.rowmap, live=self.live,
                    delta=(self.delta_tok, self.delta_rows, self.delta_code, self.delta_doclen), df=self.df,
                    sum_doclen=self.sum_doclen, v_main=self.v_main, p_main=self.p_main, source=self.source)
        args.update(kw)
        return BM25Level(**args)

    def keep(self, rows: np.ndarray) -> "BM25Level":
        """Only `rows` (ascending), renumbered 0..len(rows)-1: removed main rows become
        tombstones, removed delta rows are dropped. df loses the removed rows' entries: a pass
        over the main's row ids when a main row goes (none when only delta rows go)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == self.n_rows:
            return self
        df = self.df.copy()
        live = np.asarray(self.live) if self.live is not None else np.arange(self.n_main, dtype=np.int32)
        kept_main = live[rows[rows < self.n_live_main]].astype(np.int32)
        sum_doclen = self.sum_doclen
        kept_delta = rows[rows >= self.n_live_main] - self.n_live_main
        if len(kept_main) < self.n_live_main:
            gone = np.zeros(self.n_main, dtype=bool)
            gone[live] = True
            gone[kept_main] = False
            sum_doclen -= int(np.asarray(self.main.doclen)[gone].sum(dtype=np.int64))
            at = np.flatnonzero(gone[np.asarray(self.main.indices)])  # the one pass over every entry
            df[: self.v_main] -= np.bincount(np.searchsorted(self._indptr, at, side="right") - 1, minlength=self.v_main)
            live = kept_main
        else:
            live = self.live
        delta = (self.delta_tok, self.delta_rows, self.delta_code, self.delta_doclen)
        if len(kept_delta) < len(self.delta_doclen):
            new_of = np.full(len(self.delta_doclen), -1, dtype=np.int32)
            new_of[kept_delta] = np.arange(len(kept_delta), dtype=np.int32)
            r = new_of[self.delta_rows]
            m = r >= 0
            df -= np.bincount(self.delta_tok[~m], minlength=len(df))
            dl = np.asarray(self.delta_doclen, dtype=np.int64)
            sum_doclen -= int(dl.sum() - dl[kept_delta].sum())
            delta = (self.delta_tok[m], r[m], self.delta_code[m], self.delta_doclen[kept_delta])
        return self._with(rowmap=None, live=live, delta=delta, df=df, sum_doclen=sum_doclen)

    def extend(self, rows: list[list[str]]) -> "BM25Level":
        """These tokenised texts appended as the last rows, into the delta (cost: their tokens
        and the delta's size; the main is not touched)."""
        if not rows:
            return self
        vocab, vocab_dict = self.vocab, self.vocab_dict
        new = [t for t in dict.fromkeys(t for row in rows for t in row) if t not in vocab_dict]
        if new:  # the previous level may still be serving: its vocabulary is not changed
            vocab_dict = dict(vocab_dict)
            vocab_dict.update((t, len(vocab) + i) for i, t in enumerate(new))
            vocab = vocab + new
        tok, row, tf, lens = _entries(rows, vocab_dict)
        df = np.zeros(len(vocab), dtype=np.int64)
        df[: len(self.df)] = self.df
        df += np.bincount(tok, minlength=len(vocab))
        # each entry's (tf, length) pair: the level's code for it, new pairs appended
        keys = tf.astype(np.int64) << 32 | lens[row]
        uk, inv = np.unique(keys, return_inverse=True)
        ids = self._pair_index()
        pairs = self.pairs
        fresh = [(int(k >> 32), int(k & 0xFFFFFFFF)) for k in uk.tolist() if (int(k >> 32), int(k & 0xFFFFFFFF)) not in ids]
        if fresh:
            pairs = np.concatenate([pairs, np.array(fresh, dtype=np.int64).reshape(-1, 2)])
            ids = {**ids, **{p: len(self.pairs) + i for i, p in enumerate(fresh)}}
        code = np.array([ids[(int(k >> 32), int(k & 0xFFFFFFFF))] for k in uk.tolist()], dtype=np.int64)[inv]
        n_delta = len(self.delta_doclen)
        all_tok = np.concatenate([self.delta_tok, tok.astype(np.int32)])
        order = np.argsort(all_tok, kind="stable")  # by token; within one, the new rows come last
        code_dtype = np.uint16 if len(pairs) <= 1 << 16 else np.uint32
        delta = (all_tok[order], np.concatenate([self.delta_rows, (row + n_delta).astype(np.int32)])[order],
                 np.concatenate([self.delta_code.astype(code_dtype), code.astype(code_dtype)])[order],
                 np.concatenate([self.delta_doclen, lens.astype(np.int32)]))
        out = self._with(vocab=vocab, vocab_dict=vocab_dict, pairs=pairs, delta=delta, df=df, rowmap=None,
                         sum_doclen=self.sum_doclen + int(lens.sum()))
        out._pair_ids = ids
        return out

    def _pair_index(self) -> dict[tuple[int, int], int]:
        if self._pair_ids is None:
            self._pair_ids = {(int(a), int(b)): i for i, (a, b) in enumerate(np.asarray(self.pairs).tolist())}
        return self._pair_ids

    def due(self) -> bool:
        """Whether the delta or the tombstones passed their share (then `merged` is written)."""
        dead = self.n_main - self.n_live_main
        return bool((dead and dead > MAX_TOMBSTONE_SHARE * self.n_main)
                    or len(self.delta_tok) > max(BM25_DELTA_MIN, BM25_DELTA_SHARE * len(self.main.indices)))

    def postings_all(self) -> Postings:
        """Every live entry as one token-major Postings (term frequencies) over the level's rows:
        what a merge writes as the new main, and the token lists of older callers."""
        tf_of = np.asarray(self.pairs)[:, 0].astype(np.uint32)
        main = Postings(self.vocab[: self.v_main], self._indptr, self.main.indices,
                        tf_of[np.asarray(self.main.tf)], self.main.doclen)
        if self.live is not None:
            main = main.keep(np.asarray(self.live))
        if len(self.delta_doclen) or len(self.vocab) > self.v_main:
            main = main.insert(list(self.vocab), self.delta_tok, self.delta_rows.astype(np.int64) + self.n_live_main,
                               tf_of[self.delta_code], self.delta_doclen)
        return main.compact()

    def merged(self) -> "BM25Level":
        """One main segment of the live rows, no tombstones, no delta (the same scores)."""
        return BM25Level.from_postings(self.postings_all())

    def settled(self) -> "BM25Level":
        return self.merged() if self.due() else self

    # --- asking ------------------------------------------------------------------------------

    def ids(self, tokens: list[str]) -> list[int]:
        """The ids of the tokens some live row holds, in query order (repeats kept)."""
        v, df = self.vocab_dict, self.df
        return [i for i in (v.get(t) for t in tokens) if i is not None and df[i] > 0]

    def _tfcs(self) -> np.ndarray:
        """tf / (k1 × ((1 - b) + b × length / avgdl) + tf) for each (tf, length) pair, float64:
        the per-entry factor bm25s computes, with the same ops (so the same bits)."""
        if self._tfc is None:
            pairs = np.asarray(self.pairs, dtype=np.int64).reshape(-1, 2)
            avg = self.sum_doclen / self.n_rows if self.n_rows else 1.0  # = numpy's mean of the int lengths
            denom = BM25_K1 * ((1 - BM25_B) + BM25_B * pairs[:, 1] / avg)
            tf = pairs[:, 0].astype(np.float32)
            self._tfc = tf / (denom + tf)
        return self._tfc

    def _score(self, t: int, codes: np.ndarray) -> np.ndarray:
        """float32 scores of token t's entries from their pair codes."""
        idf = np.float64(_idf(self.n_rows, int(self.df[t])))
        tfc = self._tfcs()
        if len(codes) > len(tfc):  # a common word: the pairs scored once, then looked up
            return (idf * tfc).astype(np.float32)[codes]
        return (idf * tfc[codes]).astype(np.float32)

    def entries(self, t: int) -> int:
        """Token t's entries (an upper bound of its live rows)."""
        n = int(self._indptr[t + 1] - self._indptr[t]) if t < self.v_main else 0
        a, b = self._delta_span(t)
        return n + b - a

    # Questions sum scores in *slots*: main row r is slot r (removed ones included), delta row d
    # is slot n_main + d. A word's slots are then a view of the main's row ids (no gather per
    # entry); only the few candidates are mapped to rows, and removed rows' slots are set to
    # -inf before the best are taken (`dead`: as many as were removed, not as many entries).

    def slots(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Token t's slots (ascending; removed main rows' included) and float32 scores."""
        ids, codes = [], []
        if t < self.v_main:
            a, b = int(self._indptr[t]), int(self._indptr[t + 1])
            if b > a:
                ids.append(self.main.indices[a:b])
                codes.append(self.main.tf[a:b])
        a, b = self._delta_span(t)
        if b > a:
            ids.append(self.delta_rows[a:b] + self.n_main)
            codes.append(self.delta_code[a:b])
        if not ids:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        if len(ids) == 1:
            return ids[0], self._score(t, codes[0])
        return np.concatenate(ids), self._score(t, np.concatenate(codes))

    def _delta_span(self, t: int) -> tuple[int, int]:
        if not len(self.delta_tok):
            return 0, 0
        return int(np.searchsorted(self.delta_tok, t, "left")), int(np.searchsorted(self.delta_tok, t, "right"))

    @property
    def dead(self) -> np.ndarray:
        """The slots of removed main rows (empty without tombstones)."""
        if self._dead is None:
            self._dead = np.zeros(0, np.int64) if self.live is None else \
                np.flatnonzero(np.asarray(self.rowmap) >= self.n_rows)
        return self._dead

    def dead_mask(self) -> np.ndarray:
        """Per slot: a removed main row's (made once per level, when there are removed rows)."""
        if self._dead_mask is None:
            self._dead_mask = np.zeros(self.n_slots, dtype=bool)
            self._dead_mask[self.dead] = True
        return self._dead_mask

    def to_rows(self, ids: np.ndarray) -> np.ndarray:
        """Slots -> rows of the level (a removed main row -> n_rows; without tombstones slots
        are rows)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.live is None:
            return ids
        out = ids - self.n_main + self.n_live_main
        m = ids < self.n_main
        out[m] = ids[m] if self.rowmap is None else np.asarray(self.rowmap)[ids[m]]
        return out

    def to_slots(self, rows: np.ndarray) -> np.ndarray:
        """Rows of the level -> slots (ascending rows give ascending slots)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.live is None:
            return rows
        out = rows - self.n_live_main + self.n_main
        m = rows < self.n_live_main
        out[m] = np.asarray(self.live)[rows[m]]
        return out

    def postings(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Token t's rows and their float32 scores (a removed main row's entries at n_rows)."""
        ids, scores = self.slots(t)
        return self.to_rows(ids), scores

    def rows(self, t: int) -> np.ndarray:
        """Token t's live rows (ascending)."""
        if t >= len(self.df) or not self.df[t]:
            return np.zeros(0, np.int32)
        rows = self.postings(t)[0]
        return rows[rows < self.n_rows] if self.live is not None else rows

    def scores_at(self, t: int, ids: np.ndarray) -> np.ndarray:
        """Token t's scores at these slots (ascending, unique); 0 where it is absent. Each slot
        is looked up in the token's postings (slots x log(postings)); only the entries found are
        scored."""
        out = np.zeros(len(ids), dtype=np.float32)
        ids = np.asarray(ids, dtype=np.int64)
        for lo, (a, b), docs_of, codes_of, base in (
                ((0, self.n_main), (int(self._indptr[t]), int(self._indptr[t + 1])) if t < self.v_main else (0, 0),
                 self.main.indices, self.main.tf, 0),
                ((self.n_main, self.n_slots), self._delta_span(t), self.delta_rows, self.delta_code, self.n_main)):
            if b <= a:
                continue
            mine = np.flatnonzero((ids >= lo[0]) & (ids < lo[1]))
            if not len(mine):
                continue
            want = ids[mine] - base
            docs = docs_of[a:b]
            pos = np.minimum(np.searchsorted(docs, want), b - a - 1)
            hit = docs[pos] == want
            if hit.any():
                out[mine[hit]] = self._score(t, codes_of[a + pos[hit]])
        return out

    def known(self) -> tuple[list[str], np.ndarray]:
        """The tokens some live row holds and the number of rows holding each."""
        used = np.flatnonzero(self.df > 0)
        return [self.vocab[i] for i in used.tolist()], self.df[used]

    # --- on disk -----------------------------------------------------------------------------

    def save(self, folder: Path) -> None:
        """The main segment linked from the folder it was read from (written when new), the
        delta, tombstones and statistics written (small)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        src = self.source
        if src is not None and all((src / f).exists() for f in MAIN_FILES):
            for f in MAIN_FILES:
                try:
                    os.link(src / f, folder / f)
                except OSError:
                    shutil.copyfile(src / f, folder / f)
        else:
            m = self.main
            for name, a in zip(MAIN_FILES, (m.indptr, m.indices, m.tf, m.doclen,
                                            np.asarray(self.pairs)[: self.p_main].astype(np.int32))):
                np.save(folder / name, np.asarray(a), allow_pickle=False)
            _save_words(folder / MAIN_VOCAB, self.vocab[: self.v_main])
        _save_words(folder / "delta.vocab.txt", self.vocab[self.v_main :])
        for name, a in (("delta.tok.npy", self.delta_tok), ("delta.rows.npy", self.delta_rows),
                        ("delta.code.npy", self.delta_code), ("delta.doclen.npy", self.delta_doclen),
                        ("delta.pairs.npy", np.asarray(self.pairs)[self.p_main :].astype(np.int32)),
                        ("df.npy", np.asarray(self.df, dtype=np.int32))):
            np.save(folder / name, np.asarray(a), allow_pickle=False)
        if self.live is not None:
            np.save(folder / "rowmap.npy", np.asarray(self.rowmap, dtype=np.int32), allow_pickle=False)
            np.save(folder / "live.npy", np.asarray(self.live, dtype=np.int32), allow_pickle=False)
        meta = {"kind": "segments", "k1": BM25_K1, "b": BM25_B, "rows": self.n_rows, "main_rows": self.n_main,
                "main_live": self.n_live_main, "main_vocab": self.v_main, "main_pairs": self.p_main,
                "main_entries": int(len(self.main.indices)), "delta_rows": int(len(self.delta_doclen)),
                "delta_entries": int(len(self.delta_tok)), "vocab": len(self.vocab), "pairs": int(len(self.pairs)),
                "sum_doclen": self.sum_doclen, "tombstones": self.live is not None}
        (folder / LEVEL_META).write_text(json.dumps(meta))

    def moved(self, folder: Path) -> None:
        """Saved into a folder since renamed to `folder`: the next save links its main from there."""
        if self.source is None:
            self.source = Path(folder)

    @classmethod
    def load(cls, folder: Path) -> "BM25Level":
        """A level's segments memory-mapped (the delta and statistics read: small)."""
        folder = Path(folder)
        meta = json.loads((folder / LEVEL_META).read_text())

        def arr(name: str, mmap: bool = True) -> np.ndarray:
            return _plain(np.load(folder / name, allow_pickle=False, mmap_mode="r" if mmap else None))

        words = _load_words(folder / MAIN_VOCAB) + _load_words(folder / "delta.vocab.txt")
        main = Postings(words[: meta["main_vocab"]], arr(MAIN_FILES[0], False), arr(MAIN_FILES[1]),
                        arr(MAIN_FILES[2]), arr(MAIN_FILES[3]))
        pairs = np.concatenate([arr(MAIN_FILES[4], False), arr("delta.pairs.npy", False)]).astype(np.int64).reshape(-1, 2)
        rowmap, live = (arr("rowmap.npy"), arr("live.npy")) if meta.get("tombstones") else (None, None)
        delta = tuple(arr(f"delta.{x}.npy", False) for x in ("tok", "rows", "code", "doclen"))
        df = arr("df.npy", False).astype(np.int64)
        if len(main.indptr) != meta["main_vocab"] + 1 or len(words) != meta["vocab"] or len(df) != len(words) \
                or len(main.doclen) != meta["main_rows"] or len(pairs) != meta["pairs"]:
            raise ValueError(f"BM25 level {folder} is inconsistent")
        level = cls(words, {t: i for i, t in enumerate(words)}, main, pairs, rowmap, live, delta, df,
                    meta["sum_doclen"], meta["main_vocab"], meta["main_pairs"], source=folder)
        if level.n_rows != meta["rows"]:
            raise ValueError(f"BM25 level {folder} is inconsistent")
        return level


def _pair_codes(tf: np.ndarray, indices: np.ndarray, doclen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (tf, row length) pairs of these entries (sorted) and each entry's index in
    them, in 2 bytes (4 past 65,536 pairs). Small integers: a dense table over tf × length when
    it fits (a block of entries at a time: bounded memory), np.unique otherwise."""
    n = len(tf)
    doclen = np.asarray(doclen, dtype=np.int64)
    if not n:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.uint16)
    step = CODE_BLOCK
    blocks = [(i, min(i + step, n)) for i in range(0, n, step)]
    width = int(doclen.max(initial=0)) + 1
    size = (int(np.asarray(tf).max()) + 1) * width
    if size > 1 << 24:  # unusual lengths or frequencies: sorted unique keys
        key = np.asarray(tf).astype(np.int64) << 32 | doclen[np.asarray(indices)]
        uk, code = np.unique(key, return_inverse=True)
        pairs = np.stack([uk >> 32, uk & 0xFFFFFFFF], axis=1)
        return pairs, code.astype(np.uint16 if len(uk) <= 1 << 16 else np.uint32)
    dl32 = doclen.astype(np.int32)

    def keys(i: int, j: int) -> np.ndarray:
        return np.asarray(tf[i:j]).astype(np.int32) * np.int32(width) + dl32[np.asarray(indices[i:j])]

    present = np.zeros(size, dtype=bool)
    for i, j in blocks:
        present[keys(i, j)] = True
    uk = np.flatnonzero(present)
    ids = (np.cumsum(present, dtype=np.int64) - 1).astype(np.uint16 if len(uk) <= 1 << 16 else np.uint32)
    code = np.empty(n, dtype=ids.dtype)
    for i, j in blocks:
        code[i:j] = ids[keys(i, j)]
    return np.stack([uk // width, uk % width], axis=1).astype(np.int64), code


CODE_BLOCK = 1 << 22  # entries coded at a time when a main segment is made (bounded memory)


def _save_words(path: Path, words: list[str]) -> None:
    assert not any("\n" in w for w in words)
    path.write_text("\n".join(words), encoding="utf-8")


def _load_words(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return text.split("\n") if text else []


def _bm25s_from_tokens(tokens: list[list[str]]) -> ScoredLevel:
    """bm25s's own `index` of these tokens (the reference the segments are held equal to)."""
    import bm25s

    bm25_log = logging.getLogger("bm25s")
    if bm25_log.level == logging.DEBUG:  # bm25s sets DEBUG on import
        bm25_log.setLevel(logging.WARNING)
    retriever = bm25s.BM25()
    retriever.index(tokens or [[""]], show_progress=False)
    return ScoredLevel(retriever)


def load_postings(retriever: ScoredLevel, folder: Path) -> Postings | None:
    """The postings a format-5 generation's BM25 level was computed from (tf.npy and doclen.npy
    beside bm25s's arrays, memory-mapped), or None (written before they were kept, or damaged)."""
    folder = Path(folder)
    try:
        tf = np.load(folder / BM25_TF, allow_pickle=False, mmap_mode="r")
        doclen = np.load(folder / BM25_DOCLEN, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError):
        return None
    vocab_dict = getattr(retriever.retriever, "vocab_dict", None) or {}
    indptr, indices = retriever.indptr, retriever.indices
    v = len(indptr) - 1
    vocab = [""] * v
    for t, i in vocab_dict.items():
        if 0 <= i < v:
            vocab[i] = t
    if len(tf) != len(indices) or len(doclen) != retriever.n_rows or (v and "" in vocab):
        log.warning("BM25 postings in %s do not match their scores; re-tokenising", folder)
        return None
    return Postings(vocab, indptr, indices, tf, doclen)


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
    """Everything retrieval and extraction read, from one generation.

    Build one with `Index(manifest=, docs=, passages=, passage_store=, sentence_store=,
    sent_passage=, bm25_passages=, bm25_sentences=)`: row i of `passage_store` is `passages[i]`,
    row j of `sentence_store` is sentence j in passage order (`sent_passage[j]` its passage row).
    The vectors live only in the stores; `passage_vectors` / `sent_vectors` are views of them.
    """

    manifest: dict
    docs: dict[str, DocRecord]
    passages: list[Passage]
    passage_store: VectorStore
    sentence_store: VectorStore
    sent_passage: np.ndarray  # sentence row -> passage row
    bm25_passages: "BM25Level | ScoredLevel"
    bm25_sentences: "BM25Level | ScoredLevel"
    path: Path | None = None
    sent_rows: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))  # passage row -> [first, last) sentence rows
    vocab: set = field(default_factory=set)
    sent_is_heading: np.ndarray | None = None
    idf: dict = field(default_factory=dict)
    centroids: ArticleCentroids | None = None  # per-article mean vectors, made at build time

    def __post_init__(self) -> None:
        from .records import PassageTable

        if isinstance(self.passages, PassageTable):  # read from arrays: no passage is parsed
            counts = np.bincount(np.asarray(self.sent_passage, dtype=np.int64), minlength=len(self.passages))
            self.sent_is_heading = np.asarray(self.passages.sentence_heading, dtype=bool)
            ends = np.cumsum(counts)
        else:
            counts = np.fromiter((len(p.sentences) for p in self.passages), dtype=np.int64, count=len(self.passages))
            ends = np.cumsum(counts)
            self.sent_is_heading = np.fromiter((s.heading for p in self.passages for s in p.sentences), dtype=bool,
                                               count=int(ends[-1]) if len(ends) else 0)
        self.sent_rows = np.stack([ends - counts, ends], axis=1) if len(counts) else np.zeros((0, 2), np.int64)
        self._row_of_pid: dict[int, int] | None = None
        # the words some passage holds, and their document frequencies (kept by the BM25 level)
        toks, df = self.bm25_passages.known()
        self.vocab = set(toks)
        n = max(1, len(self.passages))
        idf = np.log(1 + (n - np.asarray(df, dtype=np.float64) + 0.5) / (np.asarray(df, dtype=np.float64) + 0.5))
        self.idf = dict(zip(toks, idf.tolist()))

    @property
    def passage_vectors(self) -> np.ndarray:
        """passage row -> unit vector (a view of the passage store: exact rescoring of candidates)."""
        return self.passage_store.matrix()

    @property
    def sent_vectors(self) -> np.ndarray:
        """sentence row -> unit vector (float16 or float32; a view of the sentence store)."""
        return self.sentence_store.matrix()

    @property
    def row_of_pid(self) -> dict[int, int]:
        """int_id(passage id) -> row (built on first use: nothing per question needs it)."""
        if self._row_of_pid is None:
            self._row_of_pid = {int_id(p.id): i for i, p in enumerate(self.passages)}
        return self._row_of_pid

    @property
    def built_at(self) -> str | None:
        return self.manifest.get("built_at")

    def rows_of(self, doc_id: str) -> np.ndarray:
        """The passage rows of one article."""
        from .records import PassageTable

        if isinstance(self.passages, PassageTable):
            return self.passages.rows_of(doc_id)
        return np.array([r for r, p in enumerate(self.passages) if p.doc_id == doc_id], dtype=np.int64)

    def sentence_text(self, row: int) -> str:
        pr = int(self.sent_passage[row])
        j = row - int(self.sent_rows[pr][0])
        if hasattr(self.passages, "sentence_text"):  # records.PassageTable: no Passage made
            return self.passages.sentence_text(pr, j)
        p = self.passages[pr]
        s = p.sentences[j]
        return self.docs[p.doc_id].text[s.start : s.end]


def remembered(index: "Index", name: str, key, make, limit: int):
    """`make()`, remembered per loaded index in the cache `name` (at most `limit` entries, emptied
    when full): what the best passages of related questions need is read again and again. Safe
    under concurrent questions (the value returned never reads the cache back)."""
    cache = index.__dict__.setdefault(name, {})
    got = cache.get(key)
    if got is None:
        if len(cache) >= limit:
            cache.clear()
        got = cache[key] = make()
    return got


def candidate_rows(index: "Index", vector: np.ndarray, tokens: list[str], c: int) -> np.ndarray:
    """Passage rows worth scoring exactly for one question: the top `c` passages and top `2c`
    sentences by the dense store and by BM25 (sentences count for their passage), deduplicated.

    Cost per question: the store searches (HNSW: logarithmic; flat: linear but only below
    ANN_MIN_VECTORS) and a sparse BM25 sum with argpartition; nothing sorts the whole library."""
    n_p, n_s = len(index.passages), int(len(index.sent_passage))
    parts = []
    if n_p:
        parts.append(index.passage_store.search(vector, c)[0])
        parts.append(bm25_topk(index.bm25_passages, tokens, n_p, c)[0])
    if n_s:
        parts.append(np.asarray(index.sent_passage)[index.sentence_store.search(vector, 2 * c)[0]])
        parts.append(np.asarray(index.sent_passage)[bm25_topk(index.bm25_sentences, tokens, n_s, 2 * c)[0]])
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(parts).astype(np.int64))


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


def load_docs(gen: Path):
    """The article records of a generation (what a reindex compares the corpus folder with): a
    records.DocTable (format 4: read as needed; `meta(doc_id)` without the text) or a dict."""
    from .records import TABLE, DocTable

    if (Path(gen) / TABLE).exists():
        return DocTable.load(gen)
    docs = {}
    with open(Path(gen) / "documents.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                docs[d["doc_id"]] = DocRecord(**d)
    return docs


def load(index_dir: Path, path: Path | None = None, mmap: bool = True) -> Index:
    """The generation CURRENT names (or the generation folder `path`). Raises NotIndexedError when there is none.

    Vectors and BM25 arrays are memory-mapped (`mmap`): a process holds in RAM what it reads."""
    gen = Path(path) if path is not None else current_generation(index_dir)
    if gen is None:
        raise NotIndexedError(
            f"No index in {index_dir}/. Build one with `assistant reindex` (or `make run`)."
        )
    manifest = json.loads((gen / "manifest.json").read_text())
    docs = load_docs(gen)
    from .records import DocTable, PassageTable

    passages = PassageTable.load(gen, docs) if isinstance(docs, DocTable) else []
    for line in (gen / "passages.jsonl").read_text(encoding="utf-8").splitlines() if not isinstance(docs, DocTable) else ():
        d = json.loads(line)
        text = docs[d["doc_id"]].text[d["start"] : d["end"]]
        passages.append(
            Passage(
                id=d["id"], doc_id=d["doc_id"], start=d["start"], end=d["end"], text=text,
                sentences=[Sentence(s, e, bool(h)) for s, e, h in d["sentences"]], heading=d.get("heading", ""),
            )
        )
    sent_passage = _plain(np.load(gen / "sentence_passage.npy", allow_pickle=False, mmap_mode="r"))
    if manifest.get("format", 0) < 3:  # vectors in .npy beside id-keyed FAISS indexes: rows from the .npy
        p_store = FaissStore.build(np.load(gen / "passage_vectors.npy", allow_pickle=False), "flat")
        s_store = FaissStore.build(np.load(gen / "sentence_vectors.npy", allow_pickle=False), "flat")
    else:
        p_store, s_store = FaissStore.load(gen / PASSAGE_STORE, mmap=mmap), FaissStore.load(gen / SENTENCE_STORE, mmap=mmap)
    return Index(
        manifest=manifest,
        docs=docs,
        passages=passages,
        passage_store=p_store,
        sentence_store=s_store,
        sent_passage=sent_passage,
        bm25_passages=_load_bm25(gen / "bm25-passages"),
        bm25_sentences=_load_bm25(gen / "bm25-sentences"),
        path=gen,
        centroids=ArticleCentroids.load(gen),
    )


def _load_bm25(path: Path) -> "BM25Level | ScoredLevel":
    """A BM25 level memory-mapped (only the postings of a question's words are read): segments,
    or bm25s's own arrays in a generation written before them."""
    import bm25s

    if (Path(path) / LEVEL_META).exists():
        return BM25Level.load(path)
    retriever = bm25s.BM25.load(path, show_progress=False, verbosity=0, mmap=True)
    retriever.scores = {k: _plain(v) for k, v in retriever.scores.items()}
    return ScoredLevel(retriever)


def _plain(a):
    """A memory-mapped array as a plain ndarray over the same mapping (no copy): slicing an
    np.memmap costs ~4 us in Python-level bookkeeping, a plain view ~0.6 us, and a question
    slices the postings of each of its words many times."""
    return a.view(np.ndarray) if isinstance(a, np.memmap) else a


def write(index_dir: Path, index: Index, tokens: TokenCache | None = None, files: dict | None = None,
          subjects: dict | None = None) -> Path:
    """Write a new generation folder, then point CURRENT at it (atomic rename).

    `subjects`: the discovery made at build time (subjects.py, its saved form), stored as subjects.json
    and the arrays file it names.
    `tokens` (the BM25 tokens the index was built from) and `files` (path -> [size, mtime_ns,
    sha256]) are kept for the next reindex; readers never need them.
    """
    index_dir = Path(index_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    tmp = index_dir / f".tmp-gen-{stamp}-{os.getpid()}"
    final = index_dir / f"gen-{stamp}"
    tmp.mkdir()
    from .records import DocTable, PassageTable

    docs, passages = index.docs, index.passages
    if not (isinstance(docs, DocTable) and isinstance(passages, PassageTable) and passages.docs is docs):
        passages_of: dict[str, list[Passage]] = {}
        for p in passages:  # an index held as lists (a format-3 generation, pgstore): every record anew
            passages_of.setdefault(p.doc_id, []).append(p)
        docs = DocTable.from_records(dict(docs), passages_of)
        passages = PassageTable.from_list(docs, list(passages))
    docs.save(tmp, stamp)  # the segments still used linked, the new articles' records in a new one
    passages.save(tmp)
    index.passage_store.save(tmp / PASSAGE_STORE)
    index.sentence_store.save(tmp / SENTENCE_STORE)
    if index.centroids is not None:
        index.centroids.save(tmp)
    np.save(tmp / "sentence_passage.npy", np.asarray(index.sent_passage), allow_pickle=False)
    # BM25 as segments: the main linked from the previous generation, delta and statistics written
    index.bm25_passages.save(tmp / "bm25-passages")
    index.bm25_sentences.save(tmp / "bm25-sentences")
    kept = isinstance(index.bm25_passages, BM25Level) and isinstance(index.bm25_sentences, BM25Level)
    if tokens is not None and not kept:  # bm25s's own arrays carry no term frequencies: the tokens
        save_tokens(tmp / TOKENS_FILE, tokens)
    if files is not None:
        (tmp / FILES_FILE).write_text(json.dumps(files, ensure_ascii=False, sort_keys=True))
    if subjects is not None:  # subjects.json and the arrays it names (subjects.save)
        from . import subjects as sj  # (it imports this module)

        sj.save(tmp, subjects)
    # the manifest last: a generation without one is never loaded (its files are this format's,
    # whatever the index was read from)
    index.manifest = {**index.manifest, "format": FORMAT_VERSION}
    (tmp / "manifest.json").write_text(json.dumps(index.manifest, indent=2))
    _fsync_tree(tmp)
    os.rename(tmp, final)
    docs.moved(final)
    for level, name in ((index.bm25_passages, "bm25-passages"), (index.bm25_sentences, "bm25-sentences")):
        if isinstance(level, BM25Level):
            level.moved(final / name)
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
    """The BM25 tokens stored with a generation (as bags of words when they are kept as
    postings), or None (older format, missing or damaged). Python lists: for small libraries
    and the Postgres store only; a reindex reads `load_level_postings` instead."""
    path = Path(gen) / TOKENS_FILE
    if not path.exists():
        levels = load_level_postings(gen)
        if levels is None:
            return None
        return TokenCache(levels[0].postings_all().token_rows(), levels[1].postings_all().token_rows())
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


def load_level_postings(gen: Path) -> tuple[BM25Level, BM25Level] | None:
    """The BM25 levels of a generation's passages and sentences as segments a reindex updates
    (memory-mapped; a format-5 level, bm25s's arrays with tf.npy beside them, converted to one
    main segment), else None (the caller re-tokenises)."""
    out = []
    for level in ("bm25-passages", "bm25-sentences"):
        folder = Path(gen) / level
        try:
            if (folder / LEVEL_META).exists():
                out.append(BM25Level.load(folder))
                continue
            if not (folder / BM25_TF).exists():
                return None
            p = load_postings(_load_bm25(folder), folder)
        except Exception as e:  # damaged: the caller re-tokenises
            log.warning("BM25 of %s unreadable (%s)", folder, e)
            return None
        if p is None:
            return None
        out.append(BM25Level.from_postings(p))
    return out[0], out[1]


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


def corpus_fingerprint(docs) -> str:
    import hashlib

    from .records import DocTable

    sha = dict(zip(docs.ids, docs.shas)) if isinstance(docs, DocTable) else {d: r.sha256 for d, r in docs.items()}
    h = hashlib.sha256()
    for doc_id in sorted(sha):
        h.update(f"{doc_id}\x00{sha[doc_id]}\n".encode())
    return h.hexdigest()


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def doc_record(doc: Document, indexed_at: str, n_passages: int) -> DocRecord:
    return DocRecord(doc.doc_id, doc.title, doc.path, doc.sha256, indexed_at, doc.text, n_passages,
                     author=doc.author, published=doc.published, site=doc.site, original_url=doc.original_url)


def safe_doc_id(doc_id: str) -> bool:
    """Ids come from relative paths; anything that climbs out is refused."""
    return bool(doc_id) and ".." not in doc_id.split("/") and not doc_id.startswith("/") and not re.search(r"[\x00\\]", doc_id)
