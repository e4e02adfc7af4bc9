"""The library owner's view of readers: the question log, feedback on answers, the questions
nobody answered grouped by meaning, and their export as a question set (`assistant export-eval`).

Settings (environment):
    ASSISTANT_QUESTION_LOG        on (default) | off: record each question asked over HTTP
    ASSISTANT_QUESTION_LOG_DAYS   keep log entries this many days (default 90; 0 keeps them forever)
    ASSISTANT_LOG_DB              the SQLite file (default: <index folder>/library.sqlite3)

A logged question holds the time, the question, its resolved form, whether it abstained, the top
answer's article and score, and the query vector (for grouping): nothing identifying the reader.
Recording never blocks or slows an answer: entries go into a bounded queue that a background
thread writes in batches; if the queue is full or the store cannot be written, the entry is
dropped and the failure logged.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .errors import AssistantError
from .models import AskResponse, FeedbackIn, FeedbackItem, LoggedQuestion, QuestionGroup

log = logging.getLogger(__name__)

LOG_ENV = "ASSISTANT_QUESTION_LOG"
DAYS_ENV = "ASSISTANT_QUESTION_LOG_DAYS"
DB_ENV = "ASSISTANT_LOG_DB"
DB_NAME = "library.sqlite3"
DEFAULT_DAYS = 90
GROUP_SIMILARITY = 0.7  # cosine of MiniLM query vectors: paraphrases score above, other topics far below
QUEUE_SIZE = 10_000
UNANSWERABLE = "unanswerable"


class OwnerLogError(AssistantError):
    """The question log / feedback store cannot be opened or written."""


@dataclass
class QueryCapture:
    """Filled by Assistant.ask with the vector of the (resolved) question it searched for."""

    vector: Any = None


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _flag(value: str | None, default: bool = True) -> bool:
    if value is None or not value.strip():
        return default
    return value.strip().lower() not in ("off", "0", "false", "no", "disabled")


class OwnerLog:
    """The question log and feedback of one server process (the store is shared on disk)."""

    def __init__(self, db_path: Path, log_questions: bool = True, retention_days: int = DEFAULT_DAYS,
                 store: Any = None) -> None:
        self.db_path = Path(db_path)
        self.logging_questions = log_questions
        self.retention_days = max(0, int(retention_days))
        self._store = store
        self._store_lock = threading.Lock()
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._writer: threading.Thread | None = None
        self._writer_lock = threading.Lock()
        self._pending = 0
        self._pending_cv = threading.Condition()
        self._pruned_at = 0.0

    @classmethod
    def from_env(cls, index_dir: Path) -> "OwnerLog":
        days_raw = os.environ.get(DAYS_ENV, "")
        try:
            days = int(days_raw) if days_raw.strip() else DEFAULT_DAYS
        except ValueError:
            log.warning("%s=%r is not a whole number of days; keeping entries %d days", DAYS_ENV, days_raw, DEFAULT_DAYS)
            days = DEFAULT_DAYS
        db = os.environ.get(DB_ENV) or str(Path(index_dir) / DB_NAME)
        return cls(Path(db), log_questions=_flag(os.environ.get(LOG_ENV)), retention_days=days)

    # --- the store ---------------------------------------------------------------------------

    def store(self):
        """The store, opened on first use (a failure is an OwnerLogError with the reason)."""
        if self._store is None:
            with self._store_lock:
                if self._store is None:
                    from .logstore import SQLiteLogStore

                    try:
                        self._store = SQLiteLogStore(self.db_path)
                    except Exception as e:  # sqlite3.Error, OSError: a folder we can't write, a corrupt file
                        raise OwnerLogError(f"The question log {self.db_path} cannot be opened ({e}).") from e
        return self._store

    # --- recording questions (off the request path) -------------------------------------------

    def capture(self) -> QueryCapture:
        return QueryCapture()

    def record(self, resp: AskResponse, vector: Any = None) -> None:
        """Queue one asked question for the log; never raises, never waits."""
        if not self.logging_questions:
            return
        top = resp.answers[0] if resp.answers else None
        row = {
            "at": now_iso(),
            "question": resp.question,
            "resolved_question": resp.resolved_question,
            "abstained": resp.abstained,
            "top_doc": top.source.doc_id if top else None,
            "top_score": float(top.score) if top else None,
            "vector": vector,
        }
        try:
            self._ensure_writer()
            with self._pending_cv:
                self._pending += 1
            self._queue.put_nowait(row)
        except queue.Full:
            self._done(1)
            log.warning("question log: the write queue is full; a question was not recorded")
        except Exception:  # a thread that cannot start, ...: the answer goes out regardless
            log.exception("question log: could not queue a question")

    def _ensure_writer(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        with self._writer_lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, daemon=True, name="question-log-writer")
                self._writer.start()

    def _done(self, n: int) -> None:
        with self._pending_cv:
            self._pending -= n
            self._pending_cv.notify_all()

    def _write_loop(self) -> None:
        while True:
            row = self._queue.get()
            if row is None:
                return
            batch = [row]
            while len(batch) < 200:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            try:
                store = self.store()
                store.add_questions(batch)
                self._prune(store)
            except Exception as e:
                log.error("question log: %d question(s) could not be written to %s: %s", len(batch), self.db_path, e)
            finally:
                self._done(len(batch))

    def _prune(self, store, every: float = 3600.0) -> None:
        """Retention: delete entries older than retention_days (at most once an hour)."""
        if not self.retention_days or time.monotonic() - self._pruned_at < every and self._pruned_at:
            return
        self._pruned_at = time.monotonic()
        cutoff = (datetime.now(timezone.utc) - timedelta(days=self.retention_days)).replace(microsecond=0).isoformat()
        gone = store.delete_questions_before(cutoff)
        if gone:
            log.info("question log: deleted %d entries older than %d days", gone, self.retention_days)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued question is written (or dropped); True if that happened in time."""
        deadline = time.monotonic() + timeout
        with self._pending_cv:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._pending_cv.wait(left)
        return True

    def close(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self.flush(5.0)
            self._queue.put(None)
            self._writer.join(timeout=5.0)
        if self._store is not None:
            self._store.close()

    # --- feedback ----------------------------------------------------------------------------

    def add_feedback(self, fb: FeedbackIn) -> str:
        try:
            return self.store().add_feedback({"at": now_iso(), **fb.model_dump()})
        except OwnerLogError:
            raise
        except Exception as e:
            log.error("feedback could not be written to %s: %s", self.db_path, e)
            raise OwnerLogError("The feedback could not be saved; please try again later.") from e

    def delete_feedback(self, feedback_id: str) -> bool:
        if not isinstance(feedback_id, str) or not 8 <= len(feedback_id) <= 64:
            return False
        store = self.store()
        try:
            return store.delete_feedback(feedback_id)
        except Exception as e:
            log.error("feedback could not be deleted from %s: %s", self.db_path, e)
            raise OwnerLogError("The feedback could not be taken back; please try again later.") from e

    def recent_feedback(self, limit: int = 50, titles: dict[str, str] | None = None) -> list[FeedbackItem]:
        out = []
        for row in self.store().recent_feedback(limit):
            item = FeedbackItem(**row)
            if titles and item.doc_id:
                item.title = titles.get(item.doc_id)
            out.append(item)
        return out

    # --- the questions nobody answered ---------------------------------------------------------

    def mark(self, ids: list[int], unanswerable: bool) -> int:
        return self.store().mark_questions(ids, UNANSWERABLE if unanswerable else None)

    def unanswered_groups(self, limit: int = 2000, examples: int = 3,
                          similarity: float = GROUP_SIMILARITY) -> list[QuestionGroup]:
        """The latest abstained questions, grouped by meaning: a question joins the first group
        whose first (newest) question's vector is within `similarity` (cosine), else starts one;
        questions without a vector group by their text. Largest groups first."""
        import numpy as np

        rows = self.store().abstained(limit)
        groups: list[dict] = []
        dim = next((len(r["vector"]) for r in rows if r.get("vector") is not None), 0)
        leaders = np.zeros((len(rows), dim), dtype=np.float32)  # row i: group i's first vector (or zeros)
        for r in rows:  # newest first
            v = r.get("vector")
            if v is not None and len(v) != dim:
                v = None  # a vector from another model: group it by its text
            best = None
            if v is not None and groups:
                sims = leaders[: len(groups)] @ v
                i = int(np.argmax(sims))
                if sims[i] >= similarity:
                    best = i
            if best is None and v is None:
                key = " ".join(r["resolved_question"].lower().split())
                best = next((i for i, g in enumerate(groups) if g["key"] == key), None)
            if best is None:
                groups.append({"key": " ".join(r["resolved_question"].lower().split()), "rows": []})
                best = len(groups) - 1
                if v is not None:
                    leaders[best] = v
            groups[best]["rows"].append(r)
        out = []
        for g in groups:
            rs = g["rows"]
            seen: set[str] = set()
            ex = []
            for r in rs:
                k = " ".join(r["question"].lower().split())
                if k not in seen and len(ex) < examples:
                    seen.add(k)
                    ex.append(LoggedQuestion(**{k2: r[k2] for k2 in LoggedQuestion.model_fields}))
            out.append(QuestionGroup(
                count=len(rs), latest_at=rs[0]["at"], examples=ex, ids=[r["id"] for r in rs],
                marked_unanswerable=all(r.get("mark") == UNANSWERABLE for r in rs),
            ))
        out.sort(key=lambda g: g.latest_at, reverse=True)
        out.sort(key=lambda g: -g.count)
        return out

    # --- export as a question set -------------------------------------------------------------

    def eval_cases(self) -> list[dict]:
        """The dev.jsonl format: a helpful answer is a case whose last turn expects its
        highlighted sentence (earlier questions are context turns, asked as history only); a
        question the owner marked unanswerable is a one-turn case that expects abstention
        (its resolved form: it reads without the conversation it came from)."""
        store = self.store()
        cases: list[dict] = []
        seen: set = set()
        for fb in store.helpful_feedback():
            expect = " ".join((fb.get("highlight") or "").split())
            if not expect:
                continue
            key = (tuple(fb["history"]), fb["question"], expect)
            if key in seen:
                continue
            seen.add(key)
            turns = [{"q": h, "context": True} for h in fb["history"]]
            turns.append({"q": fb["question"], "expect_any": [expect]})
            cases.append({"id": f"feedback-{fb['id'][:8]}", "turns": turns})
        for q in store.marked_questions():
            text = q["resolved_question"] or q["question"]
            key = ("abstain", " ".join(text.lower().split()))
            if key in seen:
                continue
            seen.add(key)
            cases.append({"id": f"unanswerable-{q['id']}", "turns": [{"q": text, "expect_abstain": True}]})
        return cases

    def export_eval(self, path: Path) -> tuple[int, int]:
        """Write eval_cases() to `path` atomically; returns (answer cases, abstain cases)."""
        cases = self.eval_cases()
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                for c in cases:
                    fh.write(json.dumps(c, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        n_abstain = sum(1 for c in cases if c["turns"][-1].get("expect_abstain"))
        return len(cases) - n_abstain, n_abstain

    def counts(self) -> dict[str, int]:
        return self.store().counts()
