"""Where the question log and readers' feedback are kept: a small interface and its SQLite
implementation (a file next to the index, WAL mode, safe with several worker processes).

The interface is deliberately small, so another backend (the Postgres one) can implement it:

    add_questions(rows)                  append question-log rows (a batch, from the recorder)
    abstained(limit)                     the latest abstained questions, with their query vectors
    mark_questions(ids, mark)            the owner's verdict on logged questions ('unanswerable' or None)
    marked_questions()                   questions the owner marked 'unanswerable'
    delete_questions_before(iso)         retention; returns how many went
    add_feedback(row) -> id              one reader verdict; the id is random (it is the undo key)
    delete_feedback(id) -> bool          undo
    recent_feedback(limit)               newest first
    helpful_feedback()                   every 'helpful' verdict, oldest first (export-eval)
    counts()                             {'questions', 'abstained', 'feedback'} for the admin page

Rows are plain dicts with the keys of the tables below; times are ISO 8601 UTC strings.
"""
from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS questions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    question TEXT NOT NULL,
    resolved_question TEXT NOT NULL,
    abstained INTEGER NOT NULL,
    top_doc TEXT,
    top_score REAL,
    vector BLOB,
    mark TEXT
);
CREATE INDEX IF NOT EXISTS questions_at ON questions(at);
CREATE INDEX IF NOT EXISTS questions_abstained ON questions(abstained, at);
CREATE TABLE IF NOT EXISTS feedback (
    id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    question TEXT NOT NULL,
    history TEXT NOT NULL,
    resolved_question TEXT,
    doc_id TEXT,
    start INTEGER,
    "end" INTEGER,
    highlight TEXT,
    helpful INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_at ON feedback(at);
"""

QUESTION_COLUMNS = ("at", "question", "resolved_question", "abstained", "top_doc", "top_score", "vector")


class LogStore(Protocol):
    """What the question log and the feedback need from storage (see the module docstring)."""

    def add_questions(self, rows: list[dict[str, Any]]) -> None: ...
    def abstained(self, limit: int = 2000) -> list[dict[str, Any]]: ...
    def mark_questions(self, ids: list[int], mark: str | None) -> int: ...
    def marked_questions(self) -> list[dict[str, Any]]: ...
    def delete_questions_before(self, iso: str) -> int: ...
    def add_feedback(self, row: dict[str, Any]) -> str: ...
    def delete_feedback(self, feedback_id: str) -> bool: ...
    def recent_feedback(self, limit: int = 50) -> list[dict[str, Any]]: ...
    def helpful_feedback(self) -> list[dict[str, Any]]: ...
    def counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...


class SQLiteLogStore:
    """SQLite in WAL mode: readers never wait for the writer, and several worker processes can
    write (each waits up to `busy_timeout` seconds for the file lock). One connection per
    thread; every write is its own short transaction, so nothing is ever half-written."""

    def __init__(self, path: Path, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # One immediate transaction: it waits for the lock (busy handler) instead of failing
        # when another worker creates the tables at the same moment.
        self._conn().executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")

    def _conn(self) -> sqlite3.Connection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            c.row_factory = sqlite3.Row
            c.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            self._set_wal(c)
            c.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = c
        return c

    def _set_wal(self, c: sqlite3.Connection) -> None:
        """Switch to WAL, retrying while another process holds the file: SQLite does not call
        the busy handler for a journal-mode change, so two workers opening a new log at the
        same moment would otherwise see "database is locked"."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                if c.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                    return
                c.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    # --- questions ---------------------------------------------------------------------------

    def add_questions(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        c = self._conn()
        values = []
        for r in rows:
            vec = r.get("vector")
            blob = np.asarray(vec, dtype=np.float32).tobytes() if vec is not None else None
            values.append((r["at"], r["question"], r["resolved_question"], int(bool(r["abstained"])),
                           r.get("top_doc"), r.get("top_score"), blob))
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany(
                "INSERT INTO questions (at, question, resolved_question, abstained, top_doc, top_score, vector) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", values)
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    @staticmethod
    def _question(row: sqlite3.Row, with_vector: bool = False) -> dict[str, Any]:
        d = {k: row[k] for k in ("id", "at", "question", "resolved_question", "top_doc", "top_score", "mark")}
        d["abstained"] = bool(row["abstained"])
        if with_vector:
            blob = row["vector"]
            d["vector"] = np.frombuffer(blob, dtype=np.float32) if blob else None
        return d

    def abstained(self, limit: int = 2000) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT * FROM questions WHERE abstained = 1 ORDER BY at DESC, id DESC LIMIT ?", (int(limit),)).fetchall()
        return [self._question(r, with_vector=True) for r in rows]

    def mark_questions(self, ids: list[int], mark: str | None) -> int:
        if not ids:
            return 0
        c = self._conn()
        marks = ",".join("?" * len(ids))
        cur = c.execute(f"UPDATE questions SET mark = ? WHERE id IN ({marks})", [mark, *map(int, ids)])
        return cur.rowcount

    def marked_questions(self) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT * FROM questions WHERE mark = 'unanswerable' ORDER BY at, id").fetchall()
        return [self._question(r) for r in rows]

    def delete_questions_before(self, iso: str) -> int:
        return self._conn().execute("DELETE FROM questions WHERE at < ?", (iso,)).rowcount

    # --- feedback ----------------------------------------------------------------------------

    def add_feedback(self, row: dict[str, Any]) -> str:
        fid = secrets.token_urlsafe(16)  # unguessable: only whoever got it back can undo
        self._conn().execute(
            'INSERT INTO feedback (id, at, question, history, resolved_question, doc_id, start, "end", highlight, helpful) '
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (fid, row["at"], row["question"], json.dumps(row.get("history") or [], ensure_ascii=False),
             row.get("resolved_question"), row.get("doc_id"), row.get("start"), row.get("end"),
             row.get("highlight"), int(bool(row["helpful"]))))
        return fid

    def delete_feedback(self, feedback_id: str) -> bool:
        return self._conn().execute("DELETE FROM feedback WHERE id = ?", (feedback_id,)).rowcount > 0

    @staticmethod
    def _feedback(row: sqlite3.Row) -> dict[str, Any]:
        d = dict(row)
        d["history"] = json.loads(d["history"] or "[]")
        d["helpful"] = bool(d["helpful"])
        return d

    def recent_feedback(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM feedback ORDER BY at DESC, rowid DESC LIMIT ?", (int(limit),))
        return [self._feedback(r) for r in rows.fetchall()]

    def helpful_feedback(self) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT * FROM feedback WHERE helpful = 1 ORDER BY at, rowid")
        return [self._feedback(r) for r in rows.fetchall()]

    def counts(self) -> dict[str, int]:
        c = self._conn()
        q, a = c.execute("SELECT COUNT(*), COALESCE(SUM(abstained), 0) FROM questions").fetchone()
        (f,) = c.execute("SELECT COUNT(*) FROM feedback").fetchone()
        return {"questions": int(q), "abstained": int(a), "feedback": int(f)}

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None
