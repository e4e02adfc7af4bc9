"""End to end: one PostgreSQL, two `assistant serve` processes on two ports, sharing nothing else.

- a reindex through one replica is answered by both, and a stream of /ask calls to both during
  it gets no error;
- an article uploaded through one replica's admin API is answered by the other;
- a reindex killed half-way (after it wrote rows) leaves both answering from the old version,
  and the next reindex completes;
- both answer the same question identically.

Real processes, real model, real uvicorn on 127.0.0.1, real PostgreSQL with pgvector.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from assistant import Assistant, pgstore
from assistant.config import Settings
from tests.fixtures_core import REPO, SMALL_CORPUS, write_corpus
from tests.fixtures_pg import new_schema

TOKEN = "replica-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUESTION = "How long should the frostleaf mask stay on the skin?"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Replica:
    url: str
    proc: subprocess.Popen
    log: Path

    def ask(self, question: str, timeout: float = 60.0) -> httpx.Response:
        return httpx.post(self.url + "/ask", json={"question": question, "top_k": 3}, timeout=timeout)

    def top(self, question: str) -> str | None:
        r = self.ask(question)
        assert r.status_code == 200, r.text
        body = r.json()
        return None if body["abstained"] else body["answers"][0]["source"]["doc_id"]


def start_replica(env: dict, corpus: Path, logs: Path, name: str) -> Replica:
    port = free_port()
    log = logs / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "assistant", "serve", "--host", "127.0.0.1", "--port", str(port), "--corpus", str(corpus)],
        env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=logs,
    )
    return Replica(f"http://127.0.0.1:{port}", proc, log)


def wait_ready(r: Replica, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if r.proc.poll() is not None:
            raise RuntimeError(f"replica exited: {r.log.read_text()[-2000:]}")
        try:
            if httpx.get(r.url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"replica {r.url} not ready in {timeout:.0f}s: {r.log.read_text()[-2000:]}")


@dataclass
class Stream:
    """/ask calls to every replica in turn, in a thread, until stopped (at most `limit` calls or `seconds`)."""

    replicas: list[Replica]
    limit: int = 3000
    seconds: float = 400.0
    calls: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        with httpx.Client(timeout=60.0) as client:
            while not self._stop.is_set() and self.calls < self.limit and time.monotonic() < deadline:
                r = self.replicas[self.calls % len(self.replicas)]
                try:
                    resp = client.post(r.url + "/ask", json={"question": QUESTION, "top_k": 1})
                    if resp.status_code != 200 or resp.json()["abstained"]:
                        self.errors.append(f"{r.url}: {resp.status_code} {resp.text[:200]}")
                except httpx.HTTPError as e:
                    self.errors.append(f"{r.url}: {e!r}")
                self.calls += 1
                time.sleep(0.02)

    def __enter__(self) -> "Stream":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=90)


@pytest.fixture(scope="module")
def cluster(pg_server, tmp_path_factory, embedder):
    """A library of three articles in its own schema, and two replicas serving it."""
    root = tmp_path_factory.mktemp("replicas")
    schema = new_schema()
    settings = Settings(corpus_dir=write_corpus(root / "corpus-a", SMALL_CORPUS), index_dir=root / "index-a",
                        database_url=pg_server.url, database_schema=schema)
    Assistant(settings).reindex()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "ASSISTANT_DATABASE_URL": pg_server.url, "ASSISTANT_DATABASE_SCHEMA": schema,
           "ASSISTANT_ADMIN_TOKEN": TOKEN, "ASSISTANT_REINDEX_WAIT": "120"}
    a = start_replica({**env, "ASSISTANT_INDEX_DIR": str(root / "index-a")}, settings.corpus_dir, root, "a")
    # replica b has no corpus folder at all: it knows the library only through the database
    b = start_replica({**env, "ASSISTANT_INDEX_DIR": str(root / "index-b")}, root / "no-corpus-b", root, "b")
    try:
        wait_ready(a)
        wait_ready(b)
        yield {"a": a, "b": b, "settings": settings, "env": env, "root": root}
    finally:
        for r in (a, b):
            r.proc.send_signal(signal.SIGINT)
        for r in (a, b):
            try:
                r.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                r.proc.wait(timeout=10)
        db = pgstore.database(settings)
        pgstore.drop_schema(db)
        pgstore.close_database(settings)


def test_replicas_answer_identically(cluster):
    a, b = cluster["a"], cluster["b"]
    for q in (QUESTION, "How often is a glowberry peel session repeated?", "What is the capital of France?"):
        ra, rb = a.ask(q), b.ask(q)
        assert ra.status_code == rb.status_code == 200
        assert ra.json() == rb.json(), q
    assert httpx.get(a.url + "/documents").json() == httpx.get(b.url + "/documents").json()


def test_reindex_through_one_replica_is_answered_by_both_with_no_failed_request(cluster):
    a, b = cluster["a"], cluster["b"]
    question = "What does the Orravine scalp mist contain?"
    assert a.top(question) != "orravine" and b.top(question) != "orravine"
    write_corpus(cluster["settings"].corpus_dir, {"orravine.txt": (
        "Orravine Scalp Mist\nThe Orravine scalp mist contains rosemary water, caffeine and a trace of zinc.\n"
        "It is sprayed on the scalp twice a day.\n")})
    with Stream([a, b]) as stream:
        r = httpx.post(a.url + "/reindex", headers=AUTH, timeout=300)
        assert r.status_code == 200, r.text
        assert r.json()["added"] == ["orravine"]
        # the route returns once every live replica serves the new version
        assert a.top(question) == "orravine"
        assert b.top(question) == "orravine"
        time.sleep(1.0)
    assert stream.calls >= 10
    assert stream.errors == []


def test_upload_through_one_replica_is_answered_by_the_other(cluster):
    a, b = cluster["a"], cluster["b"]
    question = "What is the Pellinor sleep tonic brewed from?"
    body = b"Pellinor Sleep Tonic\nThe Pellinor sleep tonic is brewed from valerian root, lime blossom and oat straw.\n"
    with Stream([a, b]) as stream:
        r = httpx.post(b.url + "/documents", headers=AUTH, files={"file": ("pellinor.txt", body, "text/plain")},
                       timeout=300)
        assert r.status_code == 201, r.text
        assert r.json()["doc_id"] == "pellinor" and r.json()["status"] == "added"
        assert a.top(question) == "pellinor"
        assert b.top(question) == "pellinor"
    assert stream.errors == []
    # the library keeps the original file (b has no corpus folder to keep it in)
    with pgstore.database(cluster["settings"]).connection() as conn:
        row = conn.execute("SELECT data, origin FROM sources WHERE doc_id = 'pellinor'").fetchone()
    assert bytes(row[0]) == body and row[1] == "upload"
    # a folder reindex through a leaves the upload alone
    assert httpx.post(a.url + "/reindex", headers=AUTH, timeout=300).status_code == 200
    assert b.top(question) == "pellinor"
    # and a delete through a takes it out of every replica
    r = httpx.delete(a.url + "/documents/pellinor", headers=AUTH, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["report"]["removed"] == ["pellinor"]
    assert b.top(question) != "pellinor"


def _bulk_corpus(folder: Path, n: int) -> dict[str, str]:
    files = dict(SMALL_CORPUS)
    for i in range(n):
        files[f"bulk/tonic-{i:03d}.txt"] = (
            f"Tonic Number {i}\nTonic number {i} is bottled in the village of Kessel{i:03d} from spring water "
            f"and {['mint', 'sage', 'thyme', 'basil'][i % 4]} leaves.\n")
    write_corpus(folder, files)
    return files


def test_a_reindex_killed_half_way_leaves_the_old_version_serving(cluster):
    a, b, env, root = cluster["a"], cluster["b"], cluster["env"], cluster["root"]
    settings = cluster["settings"]
    db = pgstore.database(settings)
    before = pgstore.current_version(db)
    corpus = root / "corpus-bulk"
    _bulk_corpus(corpus, 70)
    cmd = [sys.executable, "-m", "assistant", "-v", "reindex", "--corpus", str(corpus)]
    question = "Where is tonic number 7 bottled?"
    with Stream([a, b]) as stream:
        proc = subprocess.Popen(cmd, env={**env, "ASSISTANT_INDEX_DIR": str(root / "index-bulk")},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=root)
        seen = []
        deadline = time.monotonic() + 600
        try:
            for line in proc.stderr:  # rows of the first batch are committed: kill it now
                seen.append(line.decode(errors="replace"))
                if "wrote 50 of" in seen[-1] or time.monotonic() > deadline:
                    break
            assert any("wrote 50 of" in s for s in seen), "".join(seen[-20:])
        finally:
            proc.kill()
            proc.wait(timeout=30)
        with db.connection() as conn:
            orphans = conn.execute("SELECT count(*) FROM documents d WHERE NOT EXISTS "
                                   "(SELECT 1 FROM version_docs v WHERE v.doc_key = d.doc_key)").fetchone()[0]
        assert orphans >= 50  # half-written, and invisible:
        assert pgstore.current_version(db) == before
        time.sleep(1.5)
        assert a.top(question) != "bulk/tonic-007" and b.top(question) != "bulk/tonic-007"
    assert stream.calls >= 10 and stream.errors == []
    # the next reindex takes the lock the killed one held, and completes
    done = subprocess.run(cmd, env={**env, "ASSISTANT_INDEX_DIR": str(root / "index-bulk")}, capture_output=True,
                          cwd=root, timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "added 70" in done.stdout.decode(), done.stdout.decode()
    deadline = time.monotonic() + 10
    while {a.top(question), b.top(question)} != {"bulk/tonic-007"}:
        assert time.monotonic() < deadline, "the replicas did not switch to the completed version"
        time.sleep(0.3)
    # old versions: the one the replicas still served when the new one was published is kept,
    # older ones are gone; once the replicas serve the new one, the next reindex drops it too
    now = pgstore.current_version(db)
    with db.connection() as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM versions ORDER BY version")]
    assert versions == [before.number, now.number]
    assert pgstore.wait_for_replicas(db, now, timeout=10)
    bulk = Settings(corpus_dir=corpus, index_dir=root / "index-bulk", database_url=settings.database_url,
                    database_schema=settings.database_schema)
    assert Assistant(bulk).reindex().touched is False
    with db.connection() as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM versions ORDER BY version")]
        orphans = conn.execute("SELECT count(*) FROM documents d WHERE NOT EXISTS "
                               "(SELECT 1 FROM version_docs v WHERE v.doc_key = d.doc_key)").fetchone()[0]
    assert versions == [now.number] and orphans == 0
