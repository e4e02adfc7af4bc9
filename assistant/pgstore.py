"""The index in PostgreSQL with pgvector: one library shared by any number of stateless replicas.

Why this shape (see docs-pending/pg.md, "Scaling out"):

- **Rows are content-addressed.** A document's rows (its clean text, passages, sentences, their
  vectors and BM25 tokens) are keyed by `doc_key`, a hash of its id, its file's sha256 and the
  fingerprints of the code that read, chunked and tokenised it. A version is a set of doc_keys
  (`versions` + `version_docs`), so an incremental reindex writes only the rows of new and
  changed articles, and making a version current is one small transaction.
- **Builds reuse the embedded pipeline.** A reindex materialises the library (the original files,
  kept in `sources`) and the current version into a temporary folder and runs the very same
  incremental `reindex()` the FAISS folder uses: same chunking, same vectors, same BM25 tokens,
  only new and changed articles embedded. The result is written back as a new version.
- **Replicas answer from memory.** Each replica loads the current version into the same
  `index.Index` object retrieval already reads (BM25 rebuilt by bm25s from the stored tokens,
  vectors from the pgvector columns), so answers equal the FAISS backend's on the same library.
  It polls the one-row `current` table about once a second and swaps in a new version in the
  background (Assistant._current). `ASSISTANT_PG_DENSE=hnsw` instead asks the HNSW indexes for
  dense candidates (exact rescoring stays in memory).
- **One reindex at a time, across machines:** a session-level advisory lock, released by the
  server when the holder's connection dies (kill -9 included).
- **Old versions are cleaned up** once no replica heartbeats them (`replicas`), and so are rows
  no remaining version uses.

Every table lives in one schema (`ASSISTANT_DATABASE_SCHEMA`, default `assistant`).
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from . import index as ix
from .chunking import Passage, Sentence
from .config import MODEL_NAME, Settings
from .errors import NotIndexedError, ReindexBusyError, StoreUnavailableError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
LOCK_KEY = 0x61737369  # pg_advisory_lock key ("assi"), combined with the schema name's hash
HEARTBEAT_SECONDS = 5.0  # a replica refreshes its row at least this often
REPLICA_TTL_SECONDS = 20.0  # a replica silent for longer no longer holds its version
WRITE_BATCH_DOCS = 50  # documents written per transaction while building a version
BULK_TIMEOUT = "15min"  # statement timeout of loading or writing a whole version (questions keep the short one)


# --- connections -----------------------------------------------------------------------------

def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "the database"
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    user = f"{parts.username}@" if parts.username else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Database:
    """A psycopg 3 connection pool on one schema, with statement timeouts and clear errors.

    Every failure to reach the server (refused, unknown host, timed out, dropped) becomes a
    StoreUnavailableError whose message names the database (without its password).
    """

    def __init__(self, url: str, schema: str = "assistant", statement_timeout_ms: int = 30_000,
                 connect_timeout: float = 5.0, max_size: int = 4) -> None:
        from psycopg_pool import ConnectionPool

        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}: use lower-case letters, digits and _")
        self.url, self.schema, self.where = url, schema, redact(url)
        self.connect_timeout = connect_timeout
        self.pool = ConnectionPool(
            url, min_size=1, max_size=max_size, open=False, timeout=connect_timeout + 1.0,
            kwargs={
                "connect_timeout": max(1, int(connect_timeout)),
                "application_name": "assistant",
                "options": f"-c statement_timeout={int(statement_timeout_ms)} -c search_path={schema},public",
            },
            configure=self._configure, check=ConnectionPool.check_connection, name=f"assistant-{schema}",
        )
        self._opened = False
        self._open_lock = threading.Lock()
        self._reached = False  # until one connection succeeded, fail fast with the server's own reason

    @staticmethod
    def _configure(conn) -> None:
        from pgvector.psycopg import register_vector

        conn.autocommit = True
        with contextlib.suppress(Exception):  # the extension is not there yet (before the first build)
            register_vector(conn)

    def unavailable(self, e: BaseException) -> StoreUnavailableError:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return StoreUnavailableError(
            f"The database {self.where} is unreachable or not answering ({reason}). "
            "Check that PostgreSQL is running and ASSISTANT_DATABASE_URL / --database is right."
        )

    @contextlib.contextmanager
    def connection(self):
        """A pooled connection (autocommit; use `conn.transaction()`); connection trouble -> StoreUnavailableError."""
        import psycopg
        from psycopg_pool import PoolTimeout

        if not self._reached:
            self._probe()
        try:
            if not self._opened:
                with self._open_lock:
                    if not self._opened:
                        self.pool.open(wait=False)
                        self._opened = True
            with self.pool.connection(timeout=self.connect_timeout + 1.0) as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as e:
            if isinstance(e, psycopg.errors.QueryCanceled):
                raise StoreUnavailableError(f"The database {self.where} did not answer in time ({e}).") from e
            raise self.unavailable(e) from e

    def _probe(self) -> None:
        """One direct connection: 'connection refused' or 'password authentication failed' at
        once, rather than the pool retrying until its timeout."""
        import psycopg

        try:
            psycopg.connect(self.url, connect_timeout=max(1, int(self.connect_timeout))).close()
        except psycopg.OperationalError as e:
            raise self.unavailable(e) from e
        self._reached = True

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.pool.close(timeout=2.0)

    def lock_key(self) -> int:
        return LOCK_KEY ^ int(hashlib.sha256(self.schema.encode()).hexdigest()[:7], 16)


_DATABASES: dict[tuple[str, str], Database] = {}
_DATABASES_LOCK = threading.Lock()


def database(settings: Settings) -> Database:
    """The process-wide pool for these settings' database and schema."""
    key = (settings.database_url or "", settings.database_schema)
    with _DATABASES_LOCK:
        db = _DATABASES.get(key)
        if db is None:
            db = _DATABASES[key] = Database(key[0], key[1], settings.database_statement_timeout_ms)
        return db


def close_database(settings: Settings) -> None:
    """Close and forget the pool for these settings (a throw-away schema is done with)."""
    with _DATABASES_LOCK:
        db = _DATABASES.pop((settings.database_url or "", settings.database_schema), None)
    if db is not None:
        db.close()


# --- schema ----------------------------------------------------------------------------------

def _ddl(dim: int) -> list[str]:
    return [
        "CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value jsonb NOT NULL)",
        # the library: the original file of every article (folder imports, uploads, `assistant add`)
        """CREATE TABLE IF NOT EXISTS sources (
            doc_id text PRIMARY KEY, path text NOT NULL, sha256 text NOT NULL, data bytea NOT NULL,
            origin text NOT NULL CHECK (origin IN ('folder', 'upload')), updated_at timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE IF NOT EXISTS documents (
            doc_key text PRIMARY KEY, doc_id text NOT NULL, title text NOT NULL, path text NOT NULL,
            sha256 text NOT NULL, indexed_at text NOT NULL, text text NOT NULL, n_passages int NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS passages (
            doc_key text NOT NULL REFERENCES documents ON DELETE CASCADE, ord int NOT NULL,
            id text NOT NULL, dense_id bigint NOT NULL, start_at int NOT NULL, end_at int NOT NULL,
            heading text NOT NULL, sentences jsonb NOT NULL, tokens text[] NOT NULL, vector vector({dim}) NOT NULL,
            PRIMARY KEY (doc_key, ord))""",
        f"""CREATE TABLE IF NOT EXISTS sentences (
            doc_key text NOT NULL REFERENCES documents ON DELETE CASCADE, ord int NOT NULL, j int NOT NULL,
            dense_id bigint NOT NULL, tokens text[] NOT NULL, vector vector({dim}) NOT NULL,
            PRIMARY KEY (doc_key, ord, j))""",
        "CREATE INDEX IF NOT EXISTS passages_hnsw ON passages USING hnsw (vector vector_ip_ops)",
        "CREATE INDEX IF NOT EXISTS sentences_hnsw ON sentences USING hnsw (vector vector_ip_ops)",
        """CREATE TABLE IF NOT EXISTS versions (
            version bigint PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now(), manifest jsonb NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS version_docs (
            version bigint NOT NULL REFERENCES versions ON DELETE CASCADE,
            doc_key text NOT NULL REFERENCES documents, PRIMARY KEY (version, doc_key))""",
        "CREATE INDEX IF NOT EXISTS version_docs_doc ON version_docs (doc_key)",
        """CREATE TABLE IF NOT EXISTS current (
            one boolean PRIMARY KEY DEFAULT true CHECK (one), version bigint NOT NULL REFERENCES versions)""",
        """CREATE TABLE IF NOT EXISTS replicas (
            replica text PRIMARY KEY, version bigint, seen_at timestamptz NOT NULL DEFAULT now())""",
        # added with the large-library index: citation metadata per article, subjects per version
        "ALTER TABLE documents ADD COLUMN IF NOT EXISTS meta jsonb",
        "ALTER TABLE versions ADD COLUMN IF NOT EXISTS subjects jsonb",
    ]


def ensure_schema(db: Database, dim: int) -> None:
    """Create the extension, the schema and its tables if missing (under the reindex lock)."""
    import psycopg

    with db.connection() as conn:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.errors.InsufficientPrivilege as e:
            raise StoreUnavailableError(
                f"The pgvector extension is not installed in {db.where} and this user may not create it "
                f"({e.diag.message_primary}). Ask the administrator to run CREATE EXTENSION vector."
            ) from e
        except psycopg.errors.FeatureNotSupported as e:
            raise StoreUnavailableError(f"{db.where} has no pgvector extension available ({e}).") from e
        from pgvector.psycopg import register_vector

        register_vector(conn)
        with conn.transaction():
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {db.schema}")
            for stmt in _ddl(dim):
                conn.execute(stmt)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', %s)", (json.dumps(SCHEMA_VERSION),))
            elif row[0] != SCHEMA_VERSION:
                raise StoreUnavailableError(
                    f"The schema {db.schema} in {db.where} has layout version {row[0]}; this assistant "
                    f"reads version {SCHEMA_VERSION}. Reindex into a new schema (ASSISTANT_DATABASE_SCHEMA)."
                )
            dims = conn.execute(
                "SELECT atttypmod FROM pg_attribute WHERE attrelid = 'passages'::regclass AND attname = 'vector'"
            ).fetchone()
            if dims and dims[0] != dim:
                raise StoreUnavailableError(
                    f"The schema {db.schema} holds {dims[0]}-dimensional vectors; the model makes {dim}."
                )


def drop_schema(db: Database) -> None:
    """Remove the schema and everything in it (throw-away evaluation libraries)."""
    with db.connection() as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {db.schema} CASCADE")


# --- versions --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Version:
    """A version of the library; `name` orders like the version number (as generation names do)."""

    number: int

    @property
    def name(self) -> str:
        return f"v{self.number:012d}"


def current_version(db: Database) -> Version | None:
    """The version replicas should answer from (None before the first build)."""
    import psycopg

    with db.connection() as conn:
        try:
            row = conn.execute("SELECT version FROM current").fetchone()
        except psycopg.errors.UndefinedTable:
            return None
    return Version(int(row[0])) if row else None


def _no_index(db: Database) -> NotIndexedError:
    return NotIndexedError(
        f"No index in the database {db.where} (schema {db.schema}). Build one with "
        "`assistant reindex --database URL` (or with ASSISTANT_DATABASE_URL set)."
    )


def load_version(db: Database, version: Version | None = None, dense: str = "memory",
                 keep_tokens: bool = False) -> ix.Index:
    """One version as the in-memory Index retrieval reads, from one consistent snapshot.

    `dense="hnsw"`: candidate search goes to the pgvector HNSW indexes instead of in-memory FAISS.
    `keep_tokens`: keep the BM25 tokens on the index as `.tokens` (a build needs them; a replica does not).
    """
    from .reindex import _bm25

    with db.connection() as conn:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(f"SET LOCAL statement_timeout = '{BULK_TIMEOUT}'")
            if version is None:
                import psycopg

                try:
                    row = conn.execute("SELECT version FROM current").fetchone()
                except psycopg.errors.UndefinedTable:
                    row = None
                if row is None:
                    raise _no_index(db)
                version = Version(int(row[0]))
            m = conn.execute("SELECT manifest, subjects FROM versions WHERE version = %s", (version.number,)).fetchone()
            if m is None:
                raise NotIndexedError(f"Version {version.number} is no longer in the database {db.where}.")
            manifest, saved_subjects = m[0], m[1]
            docs: dict[str, ix.DocRecord] = {}
            key_doc: dict[str, str] = {}
            for key, doc_id, title, path, sha, at, text, n, meta in conn.execute(
                "SELECT d.doc_key, d.doc_id, d.title, d.path, d.sha256, d.indexed_at, d.text, d.n_passages, d.meta "
                "FROM documents d JOIN version_docs v USING (doc_key) WHERE v.version = %s ORDER BY d.doc_id",
                (version.number,),
            ):
                docs[doc_id] = ix.DocRecord(doc_id, title, path, sha, at, text, n,
                                            **{k: v for k, v in (meta or {}).items() if k in _DOC_META})
                key_doc[key] = doc_id
            cur = conn.cursor(binary=True)
            rows = cur.execute(
                "SELECT p.doc_key, p.ord, p.id, p.start_at, p.end_at, p.heading, p.sentences, p.tokens, p.vector "
                "FROM passages p JOIN version_docs v USING (doc_key) WHERE v.version = %s",
                (version.number,),
            ).fetchall()
            srows = cur.execute(
                "SELECT s.doc_key, s.ord, s.j, s.tokens, s.vector "
                "FROM sentences s JOIN version_docs v USING (doc_key) WHERE v.version = %s",
                (version.number,),
            ).fetchall()
    # the row order of the FAISS backend's reindex: passages by (doc_id, start)
    rows.sort(key=lambda r: (key_doc[r[0]], r[3], r[1]))
    sent_of: dict[tuple[str, int], list] = {}
    for key, o, j, toks, vec in srows:
        sent_of.setdefault((key, o), []).append((j, toks, vec))
    dim = int(manifest.get("dimension") or 0)
    passages, p_vecs, p_toks, s_vecs, s_toks = [], [], [], [], []
    for key, o, pid, start, end, heading, sents, toks, vec in rows:
        doc_id = key_doc[key]
        passages.append(Passage(
            id=pid, doc_id=doc_id, start=start, end=end, text=docs[doc_id].text[start:end],
            sentences=[Sentence(s, e, bool(h)) for s, e, h in sents], heading=heading,
        ))
        p_vecs.append(_np(vec))
        p_toks.append(list(toks))
        for _, stoks, svec in sorted(sent_of.get((key, o), []), key=lambda t: t[0]):
            s_vecs.append(_np(svec))
            s_toks.append(list(stoks))
    passage_vectors = np.vstack(p_vecs) if p_vecs else np.zeros((0, dim), np.float32)
    sent_vectors = np.vstack(s_vecs) if s_vecs else np.zeros((0, dim), np.float32)
    sent_passage = np.repeat(np.arange(len(passages), dtype=np.int32), [len(p.sentences) for p in passages])
    # the stores the folder backend's reindex builds: same kind and dtype as the version's manifest
    # says (float16 vectors widen to float4 in pgvector and narrow back bit for bit); a version
    # whose manifest predates the dtypes held float32 passages: served so, whatever the setting
    # (the next reindex that changes the library converts the level, as for a folder)
    vs = manifest.get("vector_search") or {}
    kinds = {lvl: (vs.get(lvl) or {}).get("kind") for lvl in ("passages", "sentences")}
    dtypes = {"passages": (vs.get("passages") or {}).get("dtype") or "float32",
              "sentences": (vs.get("sentences") or {}).get("dtype") or ix.SENTENCE_DTYPE}
    pmem = ix.FaissStore.create(dim, "flat", dtypes["passages"]) if dense == "hnsw" else \
        ix.FaissStore.create(dim, kinds["passages"] or ix.choose_kind(len(passage_vectors), "passages"), dtypes["passages"])
    smem = ix.FaissStore.create(dim, "flat", dtypes["sentences"]) if dense == "hnsw" else \
        ix.FaissStore.create(dim, kinds["sentences"] or ix.choose_kind(len(sent_vectors)), dtypes["sentences"])
    pmem.add(passage_vectors)
    smem.add(sent_vectors)
    del passage_vectors, sent_vectors, p_vecs, s_vecs
    if dense == "hnsw":  # candidates from the database; the rows (exact rescoring) stay in memory
        pstore = PgVectorStore(db, version, "passages", pmem,
                               {ix.int_id(p.id): r for r, p in enumerate(passages)})
        sstore = PgVectorStore(db, version, "sentences", smem,
                               {ix.sentence_int_id(p.id, j): r for r, (p, j) in
                                enumerate((p, j) for p in passages for j in range(len(p.sentences)))})
    else:
        pstore, sstore = pmem, smem
    index = ix.Index(
        manifest=manifest, docs=docs, passages=passages, passage_store=pstore, sentence_store=sstore,
        sent_passage=sent_passage, bm25_passages=_bm25(p_toks), bm25_sentences=_bm25(s_toks),
    )
    index.saved_subjects = saved_subjects  # the discovery made at build time (subjects.for_index reads it)
    if keep_tokens:
        index.tokens = ix.TokenCache(p_toks, s_toks)  # for the next build (see _materialise)
    return index


def _np(vec) -> np.ndarray:
    """A pgvector value as float32 numpy (the binary loader gives a Vector object)."""
    return np.asarray(vec.to_numpy() if hasattr(vec, "to_numpy") else vec, dtype=np.float32)


class PgVectorStore:
    """Dense candidates from a pgvector HNSW index, restricted to one version (read-only).

    HNSW is approximate: a few candidates may differ from exact search; the candidates are
    then rescored exactly in memory, as with FAISS. The search runs on every question, so a
    database that stops answering makes /ask fail with 503 at once (no grace period).
    """

    def __init__(self, db: Database, version: Version, table: str, rows: ix.FaissStore, row_of: dict[int, int],
                 ef_search: int = 200) -> None:
        assert table in ("passages", "sentences")
        self.db, self.version, self.table, self.ef_search = db, version, table, ef_search
        self.rows = rows  # the version's vectors by row (exact rescoring reads them: matrix())
        self.row_of = row_of  # dense_id -> row
        self.kind, self.dtype, self.dim = "pgvector-hnsw", rows.dtype, rows.dim

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, vectors: np.ndarray, progress: bool = False, desc: str = "") -> None:
        raise TypeError("a version in the database is immutable: reindex to change it")

    def matrix(self) -> np.ndarray:
        return self.rows.matrix()

    def exact_search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.rows.exact_search(query, k)

    def describe(self) -> dict:
        return {"kind": self.kind, "dtype": self.dtype, "vectors": len(self), "ef_search": self.ef_search}

    def save(self, path: Path) -> None:
        self.rows.save(path)  # the same rows a folder generation holds (flat)

    @classmethod
    def load(cls, path: Path) -> "PgVectorStore":
        raise TypeError("use pgstore.load_version")

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from pgvector.psycopg import register_vector

        q = np.asarray(query, dtype=np.float32).reshape(-1)
        with self.db.connection() as conn:
            register_vector(conn)
            with conn.transaction():
                conn.execute(f"SET LOCAL hnsw.ef_search = {int(max(self.ef_search, k))}")
                rows = conn.execute(
                    f"SELECT t.dense_id, -(t.vector <#> %s) FROM {self.table} t "
                    f"WHERE t.doc_key IN (SELECT doc_key FROM version_docs WHERE version = %s) "
                    f"ORDER BY t.vector <#> %s LIMIT %s",
                    (q, self.version.number, q, int(k)),
                ).fetchall()
        rows = [(self.row_of[r[0]], r[1]) for r in rows if r[0] in self.row_of]
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        return np.array([r[0] for r in rows], dtype=np.int64), np.array([r[1] for r in rows], dtype=np.float32)


# --- replicas --------------------------------------------------------------------------------

class Source:
    """What an Assistant reads in database mode: the current version, and that version loaded.

    `current()` also heartbeats the version this replica serves (so cleanup keeps it). When the
    database stops answering, the version in memory keeps serving for `grace` seconds (a
    restart or failover of the database fails no question); after that, questions get
    StoreUnavailableError (503) until the database is back.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = database(settings)
        self.replica = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.grace = settings.database_grace_seconds
        self.dense = os.environ.get("ASSISTANT_PG_DENSE", "memory").strip().lower() or "memory"
        self._last_ok: float | None = None
        self._failed: StoreUnavailableError | None = None
        self._beat: tuple[str | None, float] = (None, 0.0)

    def current(self, serving: str | None = None) -> Version | None:
        try:
            v = current_version(self.db)
            if serving is not None and (self._beat[0] != serving or time.monotonic() - self._beat[1] > HEARTBEAT_SECONDS):
                heartbeat(self.db, self.replica, int(serving[1:]) if serving.startswith("v") else None)
                if self._beat[0] is None:
                    atexit.register(self._sign_off)
                self._beat = (serving, time.monotonic())
        except StoreUnavailableError as e:
            if self._failed is None and self._last_ok is not None:  # a serving replica lost its database
                log.warning("%s", e)
            self._failed = e
            raise
        if self._failed is not None:
            log.info("the database %s answers again", self.db.where)
        self._failed, self._last_ok = None, time.monotonic()
        return v

    def _sign_off(self) -> None:
        """At exit: this replica no longer holds a version (best effort; else it expires)."""
        with contextlib.suppress(Exception):
            with self.db.connection() as conn:
                conn.execute("DELETE FROM replicas WHERE replica = %s", (self.replica,))

    def check(self) -> None:
        """Raise StoreUnavailableError once the database has been unreachable for longer than the grace period."""
        if self._failed is not None and (self._last_ok is None or time.monotonic() - self._last_ok > self.grace):
            raise self._failed

    def load(self, version: Version | None = None) -> ix.Index:
        return load_version(self.db, version, dense=self.dense)

    def no_index(self) -> NotIndexedError:
        return _no_index(self.db)


def heartbeat(db: Database, replica: str, version: int | None) -> None:
    import psycopg

    with db.connection() as conn:
        try:
            conn.execute(
                "INSERT INTO replicas (replica, version, seen_at) VALUES (%s, %s, now()) "
                "ON CONFLICT (replica) DO UPDATE SET version = EXCLUDED.version, seen_at = now()",
                (replica, version),
            )
        except psycopg.errors.UndefinedTable:
            pass


def replica_versions(db: Database) -> dict[str, int]:
    """replica -> version, of the replicas heard from recently."""
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT replica, version FROM replicas WHERE seen_at > now() - make_interval(secs => %s)",
            (REPLICA_TTL_SECONDS,),
        ).fetchall()
    return {r: v for r, v in rows if v is not None}


def wait_for_replicas(db: Database, version: Version, timeout: float = 10.0, exclude: str | None = None) -> bool:
    """Wait until every live replica serves `version` or newer (True), or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        behind = {r: v for r, v in replica_versions(db).items() if v < version.number and r != exclude}
        if not behind:
            return True
        if time.monotonic() > deadline:
            log.warning("replicas %s still answer from an older version than %s", sorted(behind), version.number)
            return False
        time.sleep(0.1)


# --- the reindex lock ------------------------------------------------------------------------

@contextlib.contextmanager
def reindex_lock(db: Database, timeout: float = 600.0):
    """The advisory lock every reindex of this schema takes, on any machine (0: do not wait).

    Session-level: held by one dedicated connection and released by the server when that
    connection ends, so a reindex that dies (kill -9 included) never leaves it held.
    """
    import psycopg

    key = db.lock_key()
    try:
        conn = psycopg.connect(db.url, autocommit=True, connect_timeout=max(1, int(db.connect_timeout)),
                               application_name="assistant-reindex")
    except psycopg.OperationalError as e:
        raise db.unavailable(e) from e
    try:
        deadline = time.monotonic() + max(0.0, timeout)
        warned = False
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            if time.monotonic() >= deadline:
                holder = conn.execute(
                    "SELECT a.client_addr, a.pid, now() - a.backend_start FROM pg_locks l JOIN pg_stat_activity a "
                    "USING (pid) WHERE l.locktype = 'advisory' AND l.objid = %s AND l.granted LIMIT 1",
                    (key & 0xFFFFFFFF,),
                ).fetchone()
                who = f" (backend pid {holder[1]}, from {holder[0] or 'a local socket'})" if holder else ""
                raise ReindexBusyError(f"Another reindex of {db.where} (schema {db.schema}) is running{who}; "
                                       "try again when it finishes.")
            if not warned and timeout >= 2.0:
                log.warning("waiting for another reindex of %s to finish", db.where)
                warned = True
            time.sleep(0.1)
        yield conn
    except psycopg.OperationalError as e:
        raise db.unavailable(e) from e
    finally:
        with contextlib.suppress(Exception):
            conn.close()  # ends the session: the lock goes with it


# --- building a version ----------------------------------------------------------------------

def _renumber_subjects(data: dict, order: list[int]) -> dict:
    """A discovery's passage rows (subjects.json) moved to another row order: `order[new] = old`.

    A build appends new articles' passages after the kept ones; a version loads its rows by
    (doc_id, start), so the rows the build-time discovery names are renumbered to that order
    (and stored as lists: jsonb)."""
    from . import subjects as sj

    return sj.plain(sj.renumbered(data, order))


_DOC_META = ("author", "published", "site", "original_url")  # DocRecord's optional citation fields


def doc_key(doc: ix.DocRecord, manifest: dict) -> str:
    """Content address of a document's rows: what it is and how it was turned into rows."""
    h = hashlib.sha256()
    for part in (doc.doc_id, doc.path, doc.sha256, doc.title, MODEL_NAME, manifest.get("vector_space"),
                 json.dumps(manifest.get("chunking"), sort_keys=True),
                 json.dumps(manifest.get("fingerprints"), sort_keys=True)):
        h.update(str(part).encode("utf-8") + b"\x00")
    return h.hexdigest()[:32]


def write_version(db: Database, index: ix.Index, tokens: ix.TokenCache, subjects: dict | None = None) -> Version:
    """Write the rows the database lacks (in batches), then publish the version in one transaction.

    Rows already there (unchanged articles, or left by a build that was killed) are reused. Until
    the last transaction commits, no replica sees anything of this build.
    """
    from pgvector.psycopg import register_vector

    manifest = dict(index.manifest)
    keys = {d: doc_key(rec, manifest) for d, rec in index.docs.items()}
    by_doc: dict[str, list[int]] = {}
    for row, p in enumerate(index.passages):
        by_doc.setdefault(p.doc_id, []).append(row)
    p_mat, s_mat = index.passage_vectors, index.sent_vectors  # views of the stores (float32 or float16)
    if subjects is not None:  # its rows as a replica loads them (load_version: by doc_id, start)
        ord_of = {row: o for rows in by_doc.values() for o, row in enumerate(rows)}
        order = sorted(range(len(index.passages)),
                       key=lambda r: (index.passages[r].doc_id, index.passages[r].start, ord_of[r]))
        subjects = _renumber_subjects(subjects, order)
    with db.connection() as conn:
        register_vector(conn)
        have = {r[0] for r in conn.execute("SELECT doc_key FROM documents WHERE doc_key = ANY(%s)",
                                           (list(keys.values()),))}
        todo = [d for d in index.docs if keys[d] not in have]
        for b in range(0, len(todo), WRITE_BATCH_DOCS):
            batch = todo[b : b + WRITE_BATCH_DOCS]
            with conn.transaction():
                conn.execute(f"SET LOCAL statement_timeout = '{BULK_TIMEOUT}'")
                cur = conn.cursor()
                with cur.copy("COPY documents (doc_key, doc_id, title, path, sha256, indexed_at, text, n_passages, meta) "
                              "FROM STDIN") as cp:
                    for d in batch:
                        r = index.docs[d]
                        meta = {k: getattr(r, k) for k in _DOC_META if getattr(r, k, None) is not None}
                        cp.write_row((keys[d], r.doc_id, r.title, r.path, r.sha256, r.indexed_at, r.text, r.n_passages,
                                      json.dumps(meta)))
                with cur.copy("COPY passages (doc_key, ord, id, dense_id, start_at, end_at, heading, sentences, "
                              "tokens, vector) FROM STDIN WITH (FORMAT BINARY)") as cp:
                    cp.set_types(["text", "int4", "text", "int8", "int4", "int4", "text", "jsonb", "text[]", "vector"])
                    for d in batch:
                        for o, row in enumerate(by_doc.get(d, [])):
                            p = index.passages[row]
                            cp.write_row((keys[d], o, p.id, ix.int_id(p.id), p.start, p.end, p.heading or "",
                                          [[s.start, s.end, int(s.heading)] for s in p.sentences],
                                          tokens.passages[row], np.asarray(p_mat[row], dtype=np.float32)))
                with cur.copy("COPY sentences (doc_key, ord, j, dense_id, tokens, vector) "
                              "FROM STDIN WITH (FORMAT BINARY)") as cp:
                    cp.set_types(["text", "int4", "int4", "int8", "text[]", "vector"])
                    for d in batch:
                        for o, row in enumerate(by_doc.get(d, [])):
                            p = index.passages[row]
                            a, _ = index.sent_rows[row]
                            for j in range(len(p.sentences)):
                                cp.write_row((keys[d], o, j, ix.sentence_int_id(p.id, j), tokens.sentences[a + j],
                                              np.asarray(s_mat[a + j], dtype=np.float32)))
            log.info("wrote %d of %d new documents", min(b + WRITE_BATCH_DOCS, len(todo)), len(todo))
        with conn.transaction():  # publish: one small transaction
            n = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM versions").fetchone()[0]
            conn.execute("INSERT INTO versions (version, manifest, subjects) VALUES (%s, %s, %s)",
                         (n, json.dumps(manifest), json.dumps(subjects) if subjects is not None else None))
            with conn.cursor().copy("COPY version_docs (version, doc_key) FROM STDIN") as cp:
                for k in sorted(set(keys.values())):
                    cp.write_row((n, k))
            conn.execute("INSERT INTO current (one, version) VALUES (true, %s) "
                         "ON CONFLICT (one) DO UPDATE SET version = EXCLUDED.version", (n,))
    log.info("version %d is current (%d documents, %d written)", n, len(keys), len(todo))
    return Version(int(n))


def collect_garbage(db: Database) -> tuple[int, int]:
    """Drop versions older than the current one that no live replica serves, then rows no
    version uses (also those of a killed build). Call under the reindex lock. Returns (versions, documents) dropped."""
    with db.connection() as conn, conn.transaction():
        cur = conn.execute(
            "DELETE FROM versions WHERE version < (SELECT version FROM current) AND version NOT IN ("
            "  SELECT version FROM replicas WHERE version IS NOT NULL AND seen_at > now() - make_interval(secs => %s))",
            (REPLICA_TTL_SECONDS,),
        )
        n_versions = cur.rowcount
        conn.execute("DELETE FROM replicas WHERE seen_at < now() - make_interval(secs => %s)", (REPLICA_TTL_SECONDS * 10,))
        cur = conn.execute("DELETE FROM documents d WHERE NOT EXISTS (SELECT 1 FROM version_docs v WHERE v.doc_key = d.doc_key)")
        n_docs = cur.rowcount
    if n_versions or n_docs:
        log.info("cleaned up %d old versions and %d documents' rows", n_versions, n_docs)
    return n_versions, n_docs


# --- the library: original files -------------------------------------------------------------

def sync_folder(db: Database, corpus_dir: Path) -> None:
    """Make the library's folder articles those of `corpus_dir`: new and changed files are stored,
    folder articles whose file is gone are dropped. Uploads (origin 'upload') are left alone."""
    from .documents import discover, doc_id_for

    corpus_dir = Path(corpus_dir)
    files: dict[str, Path] = {}
    for path in discover(corpus_dir):
        files.setdefault(doc_id_for(path, corpus_dir), path)  # a.md and a.txt: the first wins, as in reindex
    with db.connection() as conn, conn.transaction():
        have = {d: (p, s, o) for d, p, s, o in conn.execute("SELECT doc_id, path, sha256, origin FROM sources")}
        for doc_id, path in files.items():
            try:
                data = path.read_bytes()
            except OSError as e:
                log.warning("skipped %s: cannot be read (%s)", path, e)
                continue
            sha = hashlib.sha256(data).hexdigest()
            rel = path.relative_to(corpus_dir).as_posix()
            if have.get(doc_id, (None, None, None))[:2] == (rel, sha):
                continue
            conn.execute(
                "INSERT INTO sources (doc_id, path, sha256, data, origin) VALUES (%s, %s, %s, %s, 'folder') "
                "ON CONFLICT (doc_id) DO UPDATE SET path = EXCLUDED.path, sha256 = EXCLUDED.sha256, "
                "data = EXCLUDED.data, origin = 'folder', updated_at = now()",
                (doc_id, rel, sha, data),
            )
        gone = [d for d, (_, _, origin) in have.items() if origin == "folder" and d not in files]
        if gone:
            conn.execute("DELETE FROM sources WHERE doc_id = ANY(%s)", (gone,))


def _materialise(db: Database, corpus: Path, index_dir: Path, prev: ix.Index | None) -> None:
    """The library's files into `corpus`, the previous version (with its BM25 tokens) into `index_dir`."""
    with db.connection() as conn:
        for doc_id, path, data in conn.execute("SELECT doc_id, path, data FROM sources ORDER BY doc_id"):
            target = corpus / path
            if not ix.safe_doc_id(doc_id) or ".." in Path(path).parts or Path(path).is_absolute():
                log.warning("skipped the stored article %r: unsafe path %r", doc_id, path)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    if prev is not None:
        ix.write(index_dir, prev, tokens=getattr(prev, "tokens", None), files={},
                 subjects=getattr(prev, "saved_subjects", None))


def _seed_from_folder(index_dir: Path, into: Path) -> bool:
    """An empty database reuses the vectors of a local FAISS index of the same corpus (moving an
    existing index into Postgres embeds nothing that is unchanged)."""
    gen = ix.current_generation(index_dir)
    if gen is None:
        return False
    into.mkdir(parents=True, exist_ok=True)
    shutil.copytree(gen, into / gen.name)
    (into / ix.CURRENT).write_text(gen.name + "\n")
    log.info("seeding the first database version with the vectors of %s", gen)
    return True


def build(settings: Settings, embedder, progress: bool = False, lock_timeout: float = 600.0,
          sync: bool = True, change=None, on_progress=None):
    """Reindex into the database: under the advisory lock, (optionally) import the corpus folder,
    apply `change(conn)` (an upload or a delete, in the same lock), build the new version from the
    library with the embedded pipeline, publish it, clean up. Returns (ReindexReport, Version|None)."""
    from .reindex import CorpusNotFoundError, reindex as run_reindex

    db = database(settings)
    corpus_dir = Path(settings.corpus_dir)
    if sync and not corpus_dir.is_dir():
        raise CorpusNotFoundError(f"The corpus folder {corpus_dir}/ does not exist; nothing was reindexed.")
    t0 = time.perf_counter()
    with reindex_lock(db, lock_timeout):
        ensure_schema(db, embedder.dim)
        if sync:
            sync_folder(db, corpus_dir)
        if change is not None:
            with db.connection() as conn, conn.transaction():
                change(conn)
        cur = current_version(db)
        prev = load_version(db, cur, keep_tokens=True) if cur is not None else None
        with tempfile.TemporaryDirectory(prefix="assistant-pg-build-") as tmp:
            corpus, index_dir = Path(tmp) / "corpus", Path(tmp) / "index"
            corpus.mkdir()
            _materialise(db, corpus, index_dir, prev)
            if prev is None:
                _seed_from_folder(Path(settings.index_dir), index_dir)
            before = ix.current_generation(index_dir)
            local = replace(settings, corpus_dir=corpus, index_dir=index_dir, database_url=None)
            kw = {"on_progress": on_progress} if on_progress is not None else {}
            report = run_reindex(local, embedder, progress=progress, lock_timeout=0, **kw)
            after = ix.current_generation(index_dir)
            version = cur
            # a new generation: something changed, or new tokenising code re-tokenised everything
            if after is not None and (cur is None or before is None or after.name != before.name):
                built = ix.load(index_dir)
                tokens = ix.load_tokens(built.path)
                if tokens is None:  # never: reindex always writes them
                    raise RuntimeError("the build wrote no BM25 tokens")
                from . import subjects as sj  # discovered by the build (reindex), kept with the version

                version = write_version(db, built, tokens, subjects=sj.saved_json(built.path))
                if cur is None:  # seeded from a local FAISS index: to the database, everything is new
                    report.added, report.changed, report.removed = sorted(built.docs), [], []
                    report.unchanged = 0
        collect_garbage(db)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report, version


# --- uploads and deletes ---------------------------------------------------------------------

def upload(settings: Settings, embedder, filename: str, data: bytes, replace_existing: bool = False,
           lock_timeout: float = 600.0):
    """Store an uploaded article's original file in the library and publish a version with it.

    The same checks as a corpus-folder upload (sources.add_bytes, in a throw-away folder): a plain
    name, a supported type, at most 5 MiB, readable article text. Returns (sources.Added, report, version).
    """
    from . import sources

    with tempfile.TemporaryDirectory(prefix="assistant-upload-") as tmp:
        added = sources.add_bytes(Path(tmp), filename, data, replace=False)
    sha = hashlib.sha256(data).hexdigest()
    rel = added.path.name
    status = {"value": "added"}

    def change(conn) -> None:
        row = conn.execute("SELECT path, sha256 FROM sources WHERE doc_id = %s", (added.doc_id,)).fetchone()
        if row is not None:
            if row == (rel, sha):
                status["value"] = "unchanged"
                return
            if not replace_existing:
                raise sources.DocumentExistsError(
                    f"The article {added.doc_id!r} already exists as {row[0]} with different content; "
                    "choose another name, or replace it."
                )
            status["value"] = "replaced"
        conn.execute(
            "INSERT INTO sources (doc_id, path, sha256, data, origin) VALUES (%s, %s, %s, %s, 'upload') "
            "ON CONFLICT (doc_id) DO UPDATE SET path = EXCLUDED.path, sha256 = EXCLUDED.sha256, "
            "data = EXCLUDED.data, origin = 'upload', updated_at = now()",
            (added.doc_id, rel, sha, data),
        )

    report, version = build(settings, embedder, lock_timeout=lock_timeout, sync=False, change=change)
    added.status = status["value"]
    added.path = Path(rel)
    return added, report, version


def delete(settings: Settings, embedder, doc_id: str, lock_timeout: float = 600.0):
    """Take an article out of the library (whatever put it there) and publish a version without it.
    Returns (the stored path or None, report, version)."""
    found: dict[str, str | None] = {"path": None}

    def change(conn) -> None:
        row = conn.execute("DELETE FROM sources WHERE doc_id = %s RETURNING path", (doc_id,)).fetchone()
        found["path"] = row[0] if row else None

    report, version = build(settings, embedder, lock_timeout=lock_timeout, sync=False, change=change)
    return found["path"], report, version


def has_source(settings: Settings, doc_id: str) -> bool:
    import psycopg

    with database(settings).connection() as conn:
        try:
            return conn.execute("SELECT 1 FROM sources WHERE doc_id = %s", (doc_id,)).fetchone() is not None
        except psycopg.errors.UndefinedTable:
            return False
