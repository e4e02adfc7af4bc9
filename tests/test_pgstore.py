"""The PostgreSQL backend on its own: errors when the database is away, the original files of
uploads, cleanup of old versions, the HNSW indexes, statement timeouts, `eval --database`.

The behaviour both backends share is in test_stores.py; replicas end to end in test_pg_replicas.py.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from assistant import Assistant, pgstore
from assistant.app import create_app
from assistant.cli import app
from assistant.config import Settings
from assistant.errors import StoreUnavailableError
from tests.conftest_server import run_server
from tests.fixtures_core import GLOWBERRY_ID, SHARED_QUESTION, SMALL_CORPUS, write_corpus
from tests.fixtures_pg import start_postgres

DOWN = "postgresql://postgres@127.0.0.1:1/nothing"  # nothing listens on port 1


def cli(*args, env: dict | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def pg_env(s) -> dict:
    return {"ASSISTANT_DATABASE_URL": s.database_url, "ASSISTANT_DATABASE_SCHEMA": s.database_schema,
            "ASSISTANT_CORPUS_DIR": str(s.corpus_dir), "ASSISTANT_INDEX_DIR": str(s.index_dir)}


@pytest.fixture
def library(pg_settings, embedder):
    """SMALL_CORPUS built into a fresh schema."""
    write_corpus(pg_settings.corpus_dir, SMALL_CORPUS)
    a = Assistant(pg_settings)
    a.reindex()
    return a


@pytest.mark.parametrize("command", ["ask", "reindex", "eval", "add"])
def test_an_unreachable_database_exits_2_with_a_message(command, tmp_path):
    corpus = write_corpus(tmp_path / "corpus", SMALL_CORPUS)
    squad = tmp_path / "squad"
    squad.mkdir()
    (squad / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "title": "T", "text": "Some text here."}) + "\n")
    (squad / "questions.jsonl").write_text(json.dumps({"_id": "q1", "question": "Q?", "answers": [{"text": "x"}]}) + "\n")
    args = {"ask": ["ask", "What is PRP?"], "reindex": ["reindex", "--corpus", corpus],
            "eval": ["eval", "--squad", squad], "add": ["add", corpus / f"{GLOWBERRY_ID}.txt", "--name", "other.txt"]}[command]
    r = cli(*args, "--database", DOWN)
    assert r.exit_code == 2, r.output
    assert "postgresql://postgres@127.0.0.1:1/nothing is unreachable" in r.output
    assert "Connection refused" in r.output


def test_a_database_url_that_is_not_postgres_exits_2(tmp_path):
    r = cli("ask", "What is PRP?", "--database", "mysql://root@localhost/x")
    assert r.exit_code == 2 and "--database must be a PostgreSQL URL" in r.output


def test_an_empty_database_says_to_reindex(pg_settings):
    r = cli("ask", "What is PRP?", env=pg_env(pg_settings))
    assert r.exit_code == 2
    assert "No index in the database" in r.output and "assistant reindex --database" in r.output


def test_database_down_gives_503_with_a_message_then_recovers(tmp_path, embedder):
    """A replica answers from memory through a short outage (grace), then 503 until the database is back."""
    with start_postgres(prefix="pgdown-") as srv:
        s = Settings(corpus_dir=write_corpus(tmp_path / "corpus", SMALL_CORPUS), index_dir=tmp_path / "index",
                             database_url=srv.url, database_grace_seconds=1.0)
        a = Assistant(s)
        a.reindex()
        with run_server(create_app(a)) as base:
            assert httpx.post(base + "/ask", json={"question": SHARED_QUESTION}, timeout=60).status_code == 200
            _stop(srv)
            deadline = time.monotonic() + 30
            while True:
                r = httpx.post(base + "/ask", json={"question": SHARED_QUESTION}, timeout=60)
                if r.status_code == 503:
                    break
                assert r.status_code == 200, r.text
                assert time.monotonic() < deadline, "/ask never reported the database as down"
                time.sleep(0.2)
            err = r.json()["error"]
            assert err["status"] == 503 and "is unreachable" in err["message"] and "PostgreSQL is running" in err["message"]
            h = httpx.get(base + "/health", timeout=30)
            assert h.status_code == 503 and h.json()["status"] == "database unavailable"
            _start(srv)
            deadline = time.monotonic() + 30
            while httpx.post(base + "/ask", json={"question": SHARED_QUESTION}, timeout=60).status_code != 200:
                assert time.monotonic() < deadline, "/ask did not recover when the database came back"
                time.sleep(0.3)
        pgstore.close_database(s)


def _stop(srv) -> None:
    """Stop the server (fast shutdown: sessions are cut, as when a database goes down)."""
    from pgserver._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=srv.server.pgdata, user=srv.server.system_user)


def _start(srv) -> None:
    srv.server.ensure_postgres_running()


def test_statement_timeout_is_a_clear_error(pg_settings):
    db = pgstore.Database(pg_settings.database_url, pg_settings.database_schema, statement_timeout_ms=100)
    try:
        with pytest.raises(StoreUnavailableError, match="did not answer in time"):
            with db.connection() as conn:
                conn.execute("SELECT pg_sleep(2)")
    finally:
        db.close()


def test_add_stores_the_original_file_in_the_database(pg_settings, library, tmp_path):
    article = tmp_path / "elsewhere" / "Velmoria Cryo Peel.md"
    article.parent.mkdir()
    article.write_text("# Velmoria Cryo Peel\n\nThe Velmoria cryo peel freezes the skin with argon for ninety seconds.\n")
    before = sorted(p.name for p in Path(pg_settings.corpus_dir).iterdir())
    r = cli("add", article, env=pg_env(pg_settings))
    assert r.exit_code == 0, r.output
    assert "is answerable now" in r.output
    assert sorted(p.name for p in Path(pg_settings.corpus_dir).iterdir()) == before  # the folder is not touched
    with pgstore.database(pg_settings).connection() as conn:
        doc_id, data, origin = conn.execute("SELECT doc_id, data, origin FROM sources WHERE origin = 'upload'").fetchone()
    assert bytes(data) == article.read_bytes() and origin == "upload"
    r = cli("ask", "How long does the Velmoria cryo peel freeze the skin?", "--json", env=pg_env(pg_settings))
    assert r.exit_code == 0 and json.loads(r.output)["answers"][0]["source"]["doc_id"] == doc_id
    # the same file again is a no-op; a different one of that name needs --replace
    assert "already in the library" in cli("add", article, env=pg_env(pg_settings)).output
    article.write_text("# Velmoria Cryo Peel\n\nNow it takes two minutes.\n")
    r = cli("add", article, env=pg_env(pg_settings))
    assert r.exit_code == 2 and "--replace" in r.output
    # a folder reindex leaves uploads alone
    assert Assistant(pg_settings).reindex().removed == []


def test_old_versions_and_rows_go_once_no_replica_serves_them(library, pg_settings):
    db = pgstore.database(pg_settings)
    reader = Assistant(pg_settings)
    v1 = reader._current().generation
    reader._checked_at = 0.0
    reader._current()  # a poll: the reader heartbeats the version it serves
    assert pgstore.replica_versions(db) == {reader._db.replica: int(v1[1:])}
    (Path(pg_settings.corpus_dir) / f"{GLOWBERRY_ID}.txt").unlink()
    library.reindex()
    with db.connection() as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM versions ORDER BY version")] == [1, 2]
        # the reader goes silent: its version is no longer held
        conn.execute("UPDATE replicas SET seen_at = now() - interval '1 hour'")
    library.reindex()
    with db.connection() as conn:
        assert [r[0] for r in conn.execute("SELECT version FROM versions")] == [2]
        assert conn.execute("SELECT count(*) FROM documents WHERE doc_id = %s", (GLOWBERRY_ID,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 2


def test_hnsw_dense_candidates_give_the_same_top_answers(library, pg_settings, monkeypatch):
    monkeypatch.setenv("ASSISTANT_PG_DENSE", "hnsw")
    hnsw = Assistant(pg_settings)
    questions = [SHARED_QUESTION, "How often is a glowberry peel session repeated?", "What is a frostleaf mask made from?",
                 "Which clay mask is strongest?", "What is the capital of France?"]
    for q in questions:
        assert hnsw.ask(q).model_dump() == library.ask(q).model_dump(), q
    assert isinstance(hnsw._current().index.passage_store, pgstore.PgVectorStore)
    db = pgstore.database(pg_settings)
    with db.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT dense_id FROM passages ORDER BY vector <#> %s::vector LIMIT 5", (str([0.1] * 384),)))
    assert "passages_hnsw" in plan


def test_eval_squad_against_the_database_matches_the_folder_and_leaves_nothing(pg_settings, tmp_path):
    src = tmp_path / "squad"
    src.mkdir()
    docs = [("d1", "Frostleaf", "The frostleaf mask stays on the skin for exactly twelve minutes."),
            ("d2", "Glowberry", "A glowberry peel session takes about twenty minutes and is repeated every four weeks."),
            ("d3", "Kessel", "The village of Kessel bottles spring water flavoured with mint leaves.")]
    (src / "corpus.jsonl").write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs))
    qs = [("How long does the frostleaf mask stay on?", "twelve minutes"), ("How often is the peel repeated?", "every four weeks"),
          ("What flavours the Kessel water?", "mint")]
    (src / "questions.jsonl").write_text("".join(
        json.dumps({"_id": f"q{i}", "question": q, "answers": [{"text": a}]}) + "\n" for i, (q, a) in enumerate(qs)))
    folder = cli("eval", "--squad", src, "--json", "--no-abstain")
    database = cli("eval", "--squad", src, "--json", "--no-abstain", env=pg_env(pg_settings))
    assert folder.exit_code == database.exit_code == 0, database.output
    assert json.loads(database.output) == json.loads(folder.output)
    assert json.loads(database.output)["top1"] == 1.0
    with pgstore.database(pg_settings).connection() as conn:
        left = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'eval_%'").fetchone()[0]
    assert left == 0


def test_eval_of_a_question_file_reads_the_database(library, pg_settings, tmp_path):
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"id": "c1", "turns": [
        {"q": SHARED_QUESTION, "expect_any": ["twelve minutes"]},
        {"q": "What is the capital of France?", "expect_abstain": True}]}) + "\n")
    r = cli("eval", cases, "--json", env=pg_env(pg_settings))
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert got["hit@1"] == 1.0 and got["abstain_recall"] == 1.0


def test_serve_watch_is_refused_with_a_database(pg_settings):
    r = cli("serve", "--watch", "--database", pg_settings.database_url)
    assert r.exit_code == 2 and "--watch watches one machine's corpus folder" in r.output


def test_a_server_started_while_the_database_is_down_answers_503(tmp_path):
    s = Settings(corpus_dir=tmp_path / "corpus", index_dir=tmp_path / "index", database_url=DOWN)
    with run_server(create_app(settings=s)) as base:
        r = httpx.post(base + "/ask", json={"question": SHARED_QUESTION}, timeout=60)
        assert r.status_code == 503
        assert "is unreachable" in r.json()["error"]["message"] and "Connection refused" in r.json()["error"]["message"]
        r = httpx.get(base + "/documents", timeout=60)
        assert r.status_code == 503
