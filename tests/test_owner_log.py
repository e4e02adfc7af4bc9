"""The question log and feedback on a real server over the real index: what is recorded (and
what is not), grouping by meaning, POST/DELETE /feedback and their bad input, retention, a log
that cannot be written, `ASSISTANT_QUESTION_LOG=off`, and `assistant export-eval` feeding
`assistant eval`."""
from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import httpx
import pytest

from tests.conftest_server import run_server

OFF_TOPIC_A = ["What is the capital of France?", "Which city is the capital of France?",
               "Tell me the capital city of France"]
OFF_TOPIC_B = ["Who won the football World Cup in 2018?", "Which country won the 2018 World Cup?"]
ANSWERABLE = "What does platelet-rich plasma contain?"


@pytest.fixture
def logged(built_assistant, tmp_path):
    """A live server over the test index whose question log is a fresh SQLite file."""
    from assistant.app import create_app
    from assistant.owner_log import OwnerLog

    owner = OwnerLog(tmp_path / "log" / "library.sqlite3")
    with run_server(create_app(assistant=built_assistant, owner_log=owner)) as url:
        yield type("Logged", (), {"url": url, "owner": owner, "db": owner.db_path})()


def ask(url: str, question: str, history: list[str] | None = None, **kw) -> dict:
    r = httpx.post(url + "/ask", json={"question": question, "history": history or [], "top_k": 3}, timeout=60, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def rows(db: Path, sql: str) -> list[sqlite3.Row]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"status", "message", "details"}, body
    return body["error"]


def test_each_question_is_logged_with_nothing_identifying_the_reader(logged):
    answered = ask(logged.url, ANSWERABLE, headers={"X-Forwarded-For": "203.0.113.7", "User-Agent": "reader-agent-xyz"},
                   cookies={"reader": "cookie-value-123"})
    followup = ask(logged.url, "How is it prepared?", history=[ANSWERABLE])
    off = ask(logged.url, OFF_TOPIC_A[0])
    assert not answered["abstained"] and off["abstained"]
    assert logged.owner.flush(10)
    got = rows(logged.db, "SELECT * FROM questions ORDER BY id")
    assert [r["question"] for r in got] == [ANSWERABLE, "How is it prepared?", OFF_TOPIC_A[0]]
    assert got[1]["resolved_question"] == followup["resolved_question"] != "How is it prepared?"
    assert [bool(r["abstained"]) for r in got] == [False, False, True]
    assert got[0]["top_doc"] == answered["answers"][0]["source"]["doc_id"]
    assert got[0]["top_score"] == pytest.approx(answered["answers"][0]["score"], abs=1e-4)
    assert got[2]["top_doc"] is None and got[2]["top_score"] is None
    assert all(r["at"].endswith("+00:00") for r in got)
    assert all(len(r["vector"]) == 384 * 4 for r in got)  # the query vector the answer used, for grouping
    columns = {r[1] for r in rows(logged.db, "PRAGMA table_info(questions)")}
    assert columns == {"id", "at", "question", "resolved_question", "abstained", "top_doc", "top_score", "vector", "mark"}
    dump = "\n".join(str(tuple(r)) for r in got)
    for secret in ("203.0.113.7", "127.0.0.1", "reader-agent-xyz", "cookie-value-123"):
        assert secret not in dump


def test_unanswered_questions_are_grouped_by_meaning(logged):
    for q in OFF_TOPIC_A + OFF_TOPIC_B + [ANSWERABLE]:
        ask(logged.url, q)
    assert logged.owner.flush(10)
    groups = logged.owner.unanswered_groups()
    assert [g.count for g in groups] == [3, 2], groups
    assert {e.question for e in groups[0].examples} == set(OFF_TOPIC_A)
    assert {e.question for e in groups[1].examples} == set(OFF_TOPIC_B)
    assert groups[0].examples[0].question == OFF_TOPIC_A[-1]  # newest first
    assert all(ANSWERABLE not in [e.question for e in g.examples] for g in groups)


def test_feedback_is_stored_listed_and_undone(logged):
    res = ask(logged.url, ANSWERABLE)
    a = res["answers"][0]
    h = a["highlight"][0]
    body = {"question": ANSWERABLE, "history": ["What is PRP?"], "resolved_question": res["resolved_question"],
            "doc_id": a["source"]["doc_id"], "start": a["source"]["start"], "end": a["source"]["end"],
            "highlight": a["text"][h["start"]:h["end"]], "helpful": True}
    r = httpx.post(logged.url + "/feedback", json=body, timeout=30)
    assert r.status_code == 201, r.text
    fid = r.json()["id"]
    assert len(fid) >= 16
    listed = logged.owner.recent_feedback()
    assert len(listed) == 1 and listed[0].id == fid and listed[0].helpful and listed[0].history == ["What is PRP?"]
    assert listed[0].highlight == body["highlight"]
    r = httpx.delete(logged.url + f"/feedback/{fid}", timeout=30)
    assert r.status_code == 200 and r.json() == {"id": fid, "deleted": True}
    assert logged.owner.recent_feedback() == []
    error_of(httpx.delete(logged.url + f"/feedback/{fid}", timeout=30), 404)  # undo twice
    error_of(httpx.delete(logged.url + "/feedback/not-a-real-id-at-all", timeout=30), 404)


@pytest.mark.parametrize("body,status,field", [
    ('{"question": "x", "helpful": true', 400, None),                                   # not JSON
    ({"question": "What is PRP?"}, 422, "helpful"),                                    # missing verdict
    ({"question": "What is PRP?", "helpful": "yes"}, 422, "helpful"),                  # wrong type
    ({"question": "   ", "helpful": True}, 422, "question"),
    ({"question": "What is PRP?", "helpful": True, "ip": "1.2.3.4"}, 422, "ip"),       # unknown field
    ({"question": "q" * 1001, "helpful": True}, 422, "question"),
    ({"question": "What is PRP?", "history": ["a"] * 21, "helpful": True}, 422, "history"),
    ({"question": "What is PRP?", "start": -1, "helpful": True}, 422, "start"),
])
def test_malformed_feedback_is_refused_with_the_error_shape(logged, body, status, field):
    kw = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, str) else {"json": body}
    err = error_of(httpx.post(logged.url + "/feedback", timeout=30, **kw), status)
    if field:
        assert any(d["field"] and d["field"].startswith(field) for d in err["details"]), err
    assert logged.owner.recent_feedback() == []


def test_oversized_and_non_json_feedback_is_refused(logged):
    big = {"question": "What is PRP?", "highlight": "x" * 70_000, "helpful": True}
    error_of(httpx.post(logged.url + "/feedback", json=big, timeout=30), 413)
    err = error_of(httpx.post(logged.url + "/feedback", data={"question": "x", "helpful": "true"}, timeout=30), 415)
    assert "application/json" in err["message"]


def test_an_unwritable_log_never_costs_an_answer(built_assistant, tmp_path, caplog):
    from assistant.app import create_app
    from assistant.owner_log import OwnerLog

    (tmp_path / "a-file").write_text("not a folder")
    owner = OwnerLog(tmp_path / "a-file" / "library.sqlite3")  # its folder cannot be created
    with caplog.at_level(logging.ERROR, logger="assistant.owner_log"):
        with run_server(create_app(assistant=built_assistant, owner_log=owner)) as url:
            res = ask(url, ANSWERABLE)
            assert not res["abstained"] and res["answers"]
            assert owner.flush(10)
            r = httpx.post(url + "/feedback", json={"question": ANSWERABLE, "helpful": True}, timeout=30)
            assert error_of(r, 503)["message"]
    assert any("could not be written" in rec.getMessage() for rec in caplog.records), caplog.text


def test_question_log_off(built_assistant, tmp_path, monkeypatch):
    from assistant.app import create_app
    from assistant.owner_log import OwnerLog

    monkeypatch.setenv("ASSISTANT_QUESTION_LOG", "off")
    monkeypatch.setenv("ASSISTANT_LOG_DB", str(tmp_path / "off.sqlite3"))
    owner = OwnerLog.from_env(tmp_path)
    assert not owner.logging_questions and owner.db_path == tmp_path / "off.sqlite3"
    with run_server(create_app(assistant=built_assistant, owner_log=owner)) as url:
        ask(url, OFF_TOPIC_A[0])
        assert owner.flush(5)
        assert not (tmp_path / "off.sqlite3").exists()  # nothing was even opened


def test_retention_deletes_old_entries(tmp_path):
    from assistant.owner_log import OwnerLog

    owner = OwnerLog(tmp_path / "r.sqlite3", retention_days=30)
    owner.store().add_questions([{"at": "2001-01-01T00:00:00+00:00", "question": "old", "resolved_question": "old",
                                  "abstained": True}])
    from assistant.models import AskResponse

    owner.record(AskResponse(question="new", resolved_question="new", abstained=True))
    assert owner.flush(10)
    assert [q["question"] for q in owner.store().abstained()] == ["new"]
    owner.close()


def test_export_eval_turns_feedback_and_marks_into_a_question_set(logged, built_assistant, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from assistant import evaluation as ev
    from assistant.cli import app as cli

    q1 = "What is platelet-rich plasma?"
    follow = "How is it prepared?"
    for question, history in ((q1, []), (follow, [q1])):
        res = ask(logged.url, question, history)
        a = res["answers"][0]
        h = a["highlight"][0]
        r = httpx.post(logged.url + "/feedback", timeout=30, json={
            "question": question, "history": history, "doc_id": a["source"]["doc_id"], "start": a["source"]["start"],
            "end": a["source"]["end"], "highlight": a["text"][h["start"]:h["end"]], "helpful": True})
        assert r.status_code == 201
    httpx.post(logged.url + "/feedback", timeout=30, json={"question": "What is PRP?", "helpful": False})
    for q in OFF_TOPIC_A + OFF_TOPIC_B:
        ask(logged.url, q)
    assert logged.owner.flush(10)
    capital = logged.owner.unanswered_groups()[0]
    assert logged.owner.mark(capital.ids, True) == 3

    out = tmp_path / "from-readers.jsonl"
    monkeypatch.setenv("ASSISTANT_LOG_DB", str(logged.db))
    result = CliRunner().invoke(cli, ["export-eval", str(out), "--index", str(built_assistant.settings.index_dir)])
    assert result.exit_code == 0, result.output
    assert "2 helpful answers" in result.output and "3 questions marked unanswerable" in result.output
    cases = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(cases) == 5  # the not-helpful verdict is not exported
    assert cases[0]["turns"] == [{"q": q1, "expect_any": cases[0]["turns"][0]["expect_any"]}]
    assert cases[1]["turns"][0] == {"q": q1, "context": True} and cases[1]["turns"][1]["q"] == follow
    assert {c["turns"][0]["q"] for c in cases[2:]} == set(OFF_TOPIC_A)
    assert all(c["turns"] == [{"q": c["turns"][0]["q"], "expect_abstain": True}] for c in cases[2:])

    report = ev.evaluate_cases(built_assistant, ev.load_cases(out))
    s = report.summary()
    assert s["turns"] == 5 and s["answerable"] == 2  # the context turn is asked as history only
    assert s["hit@1"] == 1.0 and s["abstain_recall"] == 1.0, report.misses()

    result = CliRunner().invoke(cli, ["eval", str(out), "--index", str(built_assistant.settings.index_dir),
                                      "--corpus", str(built_assistant.settings.corpus_dir)])
    assert result.exit_code == 0 and "hit@1 1.000" in result.output, result.output


def test_export_eval_without_a_log_is_a_clear_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from assistant.cli import app as cli

    monkeypatch.delenv("ASSISTANT_LOG_DB", raising=False)
    result = CliRunner().invoke(cli, ["export-eval", str(tmp_path / "x.jsonl"), "--index", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no question log" in result.output
    assert not (tmp_path / "x.jsonl").exists()


def test_several_processes_write_one_log(tmp_path):
    """WAL mode and the busy timeout: two writer processes at once lose nothing."""
    import subprocess
    import sys

    from assistant.logstore import SQLiteLogStore

    db = tmp_path / "shared.sqlite3"
    code = (
        "import sys; from assistant.logstore import SQLiteLogStore\n"
        "s = SQLiteLogStore(sys.argv[1])\n"
        "for i in range(100):\n"
        "    s.add_questions([{'at': '2026-01-01T00:00:00+00:00', 'question': f'{sys.argv[2]}-{i}-{j}',\n"
        "                      'resolved_question': 'q', 'abstained': True} for j in range(3)])\n"
        "    s.add_feedback({'at': '2026-01-01T00:00:00+00:00', 'question': 'q', 'helpful': i % 2 == 0})\n"
    )
    env = {"PYTHONPATH": str(Path(__file__).resolve().parent.parent), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(db), name], env=env, stderr=subprocess.PIPE)
             for name in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    store = SQLiteLogStore(db)
    assert store.counts() == {"questions": 600, "abstained": 600, "feedback": 200}
    assert rows(db, "PRAGMA journal_mode")[0][0] == "wal"
    store.close()
