"""The command line end to end: reindex, ask (text, --json, --history), env vars, bad arguments.

In-process through typer's CliRunner (the model is loaded once per session), plus one smoke
test of the installed `assistant` script in a subprocess."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assistant import index as ix
from assistant.cli import app
from assistant.models import Answer, AskResponse
from tests.fixtures_core import (
    GLOWBERRY_ID,
    REPO,
    SHARED_ANSWER,
    SHARED_QUESTION,
    SMALL_CORPUS,
    write_corpus,
)

ENV_VARS = ("ASSISTANT_CORPUS_DIR", "ASSISTANT_INDEX_DIR")


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def run(*args: str | Path, env: dict | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return result


def out(result) -> str:
    """Everything a person would see (stdout and stderr)."""
    return result.output


def dirs(a) -> list[str]:
    return ["--corpus", str(a.settings.corpus_dir), "--index", str(a.settings.index_dir)]


REPORT = re.compile(
    r"^(?P<articles>\d+) articles, (?P<passages>\d+) passages \(added (?P<added>\d+), changed (?P<changed>\d+), "
    r"removed (?P<removed>\d+), unchanged (?P<unchanged>\d+); embedded (?P<embedded>\d+) passages",
    re.M,
)


def counts(result) -> dict[str, int]:
    assert result.exit_code == 0, (out(result), result.exception)
    m = REPORT.search(result.stdout)
    assert m, result.stdout
    return {k: int(v) for k, v in m.groupdict().items()}


# --- reindex -----------------------------------------------------------------------------------

def test_reindex_reports_added_unchanged_changed_removed(small_corpus, tmp_path, embedder):
    index = tmp_path / "index"
    args = ("reindex", "--corpus", small_corpus, "--index", index)

    first = run(*args)
    c = counts(first)
    assert (c["articles"], c["added"], c["changed"], c["removed"], c["unchanged"]) == (3, 3, 0, 0, 0)
    assert c["passages"] == c["embedded"] > 0
    for doc_id in ("frostleaf-basics", "glowberry-peel", "guides/cooling-masks"):
        assert f"  added: {doc_id}" in first.stdout

    again = counts(run(*args))
    assert (again["added"], again["changed"], again["removed"], again["unchanged"], again["embedded"]) == (0, 0, 0, 3, 0)

    (small_corpus / f"{GLOWBERRY_ID}.txt").write_text(SMALL_CORPUS[f"{GLOWBERRY_ID}.txt"] + "It suits most skin types.\n")
    changed = run(*args)
    c = counts(changed)
    assert (c["added"], c["changed"], c["removed"], c["unchanged"]) == (0, 1, 0, 2)
    assert f"  changed: {GLOWBERRY_ID}" in changed.stdout
    assert 0 < c["embedded"] < c["passages"]

    (small_corpus / "frostleaf-basics.txt").unlink()
    (small_corpus / "broken.txt").write_bytes(b"\xff\xfe not utf-8 \x80")
    removed = run(*args)
    c = counts(removed)
    assert (c["articles"], c["added"], c["changed"], c["removed"], c["unchanged"]) == (2, 0, 0, 1, 2)
    assert "  removed: frostleaf-basics" in removed.stdout
    assert "skipped (unreadable): broken.txt" in out(removed)
    assert set(ix.load(index).docs) == {"glowberry-peel", "guides/cooling-masks"}


def test_reindex_missing_corpus_folder_exits_2(tmp_path):
    r = run("reindex", "--corpus", tmp_path / "nope", "--index", tmp_path / "index")
    assert r.exit_code == 2
    assert "nope" in out(r) and "does not exist" in out(r)
    assert not (tmp_path / "index").exists() or ix.current_generation(tmp_path / "index") is None


# --- ask ---------------------------------------------------------------------------------------

def test_ask_prints_marked_sentence_and_title(small_assistant):
    r = run("ask", SHARED_QUESTION, *dirs(small_assistant))
    assert r.exit_code == 0, (out(r), r.exception)
    text = r.stdout
    assert text.startswith("1. ")
    marked = re.findall(r"»(.+?)«", text, re.S)
    assert any(SHARED_ANSWER in m for m in marked), text
    assert "[Frostleaf Mask Basics]" in text or "[Cooling Clay Masks Compared]" in text
    # citation line: [title] path:start-end, and the copy of the paragraph in the other article
    cite = re.search(r"^   \[(?P<title>[^\]]+)\] (?P<path>\S+):(?P<start>\d+)-(?P<end>\d+)(?P<rest>.*)$", text, re.M)
    assert cite, text
    assert "also in [" in cite["rest"]
    doc = ix.load(small_assistant.settings.index_dir).docs
    rec = next(d for d in doc.values() if d.path == cite["path"])
    assert rec.title == cite["title"]
    passage = rec.text[int(cite["start"]) : int(cite["end"])]
    first_block = text.split("\n   [", 1)[0][3:].replace("»", "").replace("«", "").replace("\n   ", "\n")
    assert first_block == passage


def test_ask_json_matches_the_answer_schema(small_assistant):
    r = run("ask", SHARED_QUESTION, "--json", "--top-k", "2", *dirs(small_assistant))
    assert r.exit_code == 0, (out(r), r.exception)
    data = json.loads(r.stdout)
    assert set(data) == set(AskResponse.model_fields)
    res = AskResponse.model_validate(data)
    assert res.question == SHARED_QUESTION and not res.abstained and 1 <= len(res.answers) <= 2
    docs = ix.load(small_assistant.settings.index_dir).docs
    for a in data["answers"]:
        assert set(a) == set(Answer.model_fields)
        assert set(a["source"]) >= {"doc_id", "title", "path", "start", "end"}
        assert a["text"] == docs[a["source"]["doc_id"]].text[a["source"]["start"] : a["source"]["end"]]
        for h in a["highlight"]:
            assert 0 <= h["start"] < h["end"] <= len(a["text"])
    top = data["answers"][0]
    assert any(SHARED_ANSWER in top["text"][h["start"] : h["end"]] for h in top["highlight"])


def test_ask_json_abstains_off_topic(small_assistant):
    r = run("ask", "What is the capital of France?", "--json", *dirs(small_assistant))
    assert r.exit_code == 0
    data = json.loads(r.stdout)
    assert data["abstained"] is True and data["answers"] == [] and data["message"]
    plain = run("ask", "What is the capital of France?", *dirs(small_assistant))
    assert plain.exit_code == 0 and data["message"] in plain.stdout and "»" not in plain.stdout


def test_ask_history_is_used(small_assistant):
    def top(history: str) -> dict:
        r = run("ask", "How long does it take?", "--history", history, "--json", *dirs(small_assistant))
        assert r.exit_code == 0, (out(r), r.exception)
        data = json.loads(r.stdout)
        assert not data["abstained"], data
        return data["answers"][0]

    glow = top("What is the glowberry peel?")
    assert glow["source"]["doc_id"] == GLOWBERRY_ID and "about twenty minutes" in glow["text"]
    mask = top("What is the frostleaf mask?")
    assert mask["source"]["doc_id"] != GLOWBERRY_ID and SHARED_ANSWER in mask["text"]
    # without history the question is too vague to answer
    r = run("ask", "How long does it take?", "--json", *dirs(small_assistant))
    assert r.exit_code == 0 and json.loads(r.stdout)["resolved_question"] == "How long does it take?"


def test_ask_history_pronoun_refers_to_the_latest_question(small_assistant):
    r = run("ask", "How long does it take?", "--history", "What is the frostleaf mask?",
            "--history", "What is the glowberry peel?", "--json", *dirs(small_assistant))
    assert r.exit_code == 0, out(r)
    data = json.loads(r.stdout)
    assert data["answers"][0]["source"]["doc_id"] == GLOWBERRY_ID, data["resolved_question"]


def test_env_vars_choose_corpus_and_index(small_corpus, tmp_path, embedder):
    index = tmp_path / "env-index"
    env = {"ASSISTANT_CORPUS_DIR": str(small_corpus), "ASSISTANT_INDEX_DIR": str(index)}
    r = run("reindex", env=env)
    assert counts(r)["added"] == 3
    assert ix.current_generation(index) is not None
    r = run("ask", "How long does a glowberry peel session take?", "--json", env=env)
    assert r.exit_code == 0, out(r)
    assert json.loads(r.stdout)["answers"][0]["source"]["doc_id"] == GLOWBERRY_ID
    # an explicit option wins over the variable
    r = run("ask", "How long does a glowberry peel session take?", "--index", tmp_path / "elsewhere", env=env)
    assert r.exit_code == 2 and "assistant reindex" in out(r)


def test_ask_before_any_index_exits_2_and_says_to_reindex(small_corpus, tmp_path):
    r = run("ask", "What is the glowberry peel?", "--corpus", small_corpus, "--index", tmp_path / "index")
    assert r.exit_code == 2
    assert "assistant reindex" in out(r)
    assert "Traceback" not in out(r) and r.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["ask", "Q?", "--top-k", "0"], "--top-k must be between 1 and 10"),
    (["ask", "Q?", "--top-k", "11"], "--top-k must be between 1 and 10"),
    (["ask", "Q?", "--top-k", "three"], "Invalid value"),
    (["ask", "Q?", "--bogus"], "No such option"),
    (["ask"], "Missing argument"),
    (["reindex", "--corpus"], "requires an argument"),
    (["eval"], "give either a question file or --squad DIR"),
    (["frobnicate"], "No such command"),
])
def test_bad_arguments_exit_2_with_a_message(tmp_path, args, message):
    r = run(*args)
    assert r.exit_code == 2, (out(r), r.exception)
    assert message in out(r)
    assert "Traceback" not in out(r)


def test_empty_question_exits_2(small_assistant):
    r = run("ask", "   ", *dirs(small_assistant))
    assert r.exit_code == 2 and "empty" in out(r)


# --- the installed script ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def script_reindex(tmp_path_factory):
    """`assistant reindex` run once as a real process (its own model load)."""
    root = tmp_path_factory.mktemp("script")
    corpus = write_corpus(root / "corpus", SMALL_CORPUS)
    exe = Path(sys.executable).parent / "assistant"
    if not exe.exists():
        exe = REPO / ".venv" / "bin" / "assistant"
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [str(exe), "reindex", "--corpus", str(corpus), "--index", str(root / "index")],
        capture_output=True, text=True, timeout=300, env=env, cwd=root,
    )
    return proc, root


def test_script_reindex_smoke(script_reindex):
    proc, root = script_reindex
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^3 articles, \d+ passages \(added 3, changed 0, removed 0, unchanged 0;", proc.stdout, re.M), proc.stdout
    assert ix.current_generation(root / "index") is not None
    assert "Traceback" not in proc.stderr


def test_script_reindex_prints_no_debug_logging(script_reindex):
    # bm25s sets its own logger to DEBUG when imported; the CLI must keep it quiet
    proc, _ = script_reindex
    assert proc.returncode == 0
    assert "DEBUG" not in proc.stderr and "INFO" not in proc.stderr, proc.stderr[-500:]


@pytest.mark.parametrize("name,value", [("ASSISTANT_HNSW_M", "sixteen"), ("ASSISTANT_IVF_NPROBE", "0"),
                                        ("ASSISTANT_ANN_KIND", "annoy"), ("ASSISTANT_PASSAGE_DTYPE", "float64")])
def test_a_bad_vector_setting_exits_2_with_a_message(tmp_path, name, value):
    """Read at import by index.py: a value that is not usable is said, not a ValueError traceback."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO), **{name: value})
    proc = subprocess.run([sys.executable, "-m", "assistant", "reindex", "--corpus", str(tmp_path), "--index",
                           str(tmp_path / "i")], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"{name}={value!r}" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "i").exists()
