"""Evaluation: the metrics themselves, `assistant eval FILE.jsonl`, `assistant eval --squad DIR`, `--mtrag DIR`,
and malformed input (exit code 2, never a traceback)."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from assistant.cli import app
from assistant.evaluation import (EvalReport, TurnResult, evaluate_mtrag, evaluate_squad, load_cases, mtrag_queries,
                                  write_squad_corpus)
from assistant.errors import AssistantError
from tests.fixtures_core import SHARED_ANSWER


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for name in ("ASSISTANT_CORPUS_DIR", "ASSISTANT_INDEX_DIR"):
        monkeypatch.delenv(name, raising=False)


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def dirs(a) -> list[str]:
    return ["--corpus", str(a.settings.corpus_dir), "--index", str(a.settings.index_dir)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


# --- the metrics -------------------------------------------------------------------------------

def turn(rank, expect_abstain=False, abstained=False, t=0, case="c") -> TurnResult:
    return TurnResult(case=case, turn=t, question=f"q{case}{t}", history=[], expect_abstain=expect_abstain,
                      abstained=abstained, rank=rank, resolved=f"q{case}{t}")


def test_metrics_by_hand():
    r = EvalReport([
        turn(1, case="a"),
        turn(2, case="b"),
        turn(3, case="c", t=1),  # a follow-up
        turn(None, case="d"),  # answerable, not found
        turn(None, case="e", abstained=True),  # answerable, wrongly abstained
        turn(None, case="f", expect_abstain=True, abstained=True),  # right abstention
        turn(None, case="g", expect_abstain=True, abstained=False),  # should have abstained
    ])
    s = r.summary()
    assert s["turns"] == 7 and s["answerable"] == 5
    assert s["hit@1"] == round(1 / 5, 3)
    assert s["hit@3"] == round(3 / 5, 3)
    assert s["mrr"] == round((1 + 1 / 2 + 1 / 3) / 5, 3)
    assert s["single_turn_hit@1"] == round(1 / 4, 3) and s["followup_hit@1"] == 0.0
    assert s["abstain_precision"] == 0.5  # of 2 abstentions, 1 right
    assert s["abstain_recall"] == 0.5  # of 2 that should, 1 did
    assert s["answerable_abstained"] == 1
    assert [t.case for t in r.misses()] == ["b", "c", "d", "e", "g"]


def test_metrics_without_abstentions_or_answerable_turns():
    none_abstain = EvalReport([turn(1)])
    assert none_abstain.abstention() == (1.0, 1.0)
    only_off = EvalReport([turn(None, expect_abstain=True, abstained=True)])
    assert math.isnan(only_off.hit_at(1)) and math.isnan(only_off.mrr())
    assert only_off.misses() == []


def test_load_cases_reads_and_validates(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"id": "a", "turns": [{"q": "One?"}]}\n\n{"id": "b", "turns": [{"q": "Two?", "expect_abstain": true}]}\n')
    assert [c["id"] for c in load_cases(f)] == ["a", "b"]
    f.write_text('{"id": "a", "turns": [{"q": "One?"}]}\n{"id": "b", "questions": []}\n')
    with pytest.raises(AssistantError, match=r"q\.jsonl:2"):
        load_cases(f)


# --- eval FILE.jsonl ---------------------------------------------------------------------------

CASES = [
    {"id": "glow", "turns": [{"q": "How long does a glowberry peel session take?", "expect_any": ["about twenty minutes"]}]},
    {"id": "mask", "turns": [
        {"q": "What is the frostleaf mask made from?", "expect_any": ["crushed frostleaf petals"]},
        {"q": "How long should it stay on the skin?", "expect_any": [SHARED_ANSWER]},
    ]},
    {"id": "off", "turns": [{"q": "How tall is Mount Everest?", "expect_abstain": True}]},
    {"id": "miss", "turns": [{"q": "What colour is the glowberry peel jar?", "expect_any": ["violet unicorn"]}]},
]


def test_eval_prints_hits_mrr_abstention_and_misses(small_assistant, tmp_path):
    f = write_jsonl(tmp_path / "dev.jsonl", CASES)
    r = run("eval", f, *dirs(small_assistant))
    assert r.exit_code == 0, (r.output, r.exception)
    text = r.stdout
    assert "5 turns (4 answerable)" in text
    assert re.search(r"hit@1 0\.750\s+hit@3 0\.750\s+MRR 0\.750", text), text
    assert re.search(r"abstention precision 1\.000\s+recall 1\.000", text), text
    assert "misses (1):" in text
    miss = [line for line in text.splitlines() if line.strip().startswith("[")]
    assert len(miss) == 1 and "[miss#1]" in miss[0] and "What colour is the glowberry peel jar?" in miss[0]
    assert "wanted an answer" in miss[0]

    j = run("eval", f, "--json", *dirs(small_assistant))
    assert j.exit_code == 0
    s = json.loads(j.stdout)
    assert (s["turns"], s["answerable"], s["hit@1"], s["hit@3"], s["mrr"]) == (5, 4, 0.75, 0.75, 0.75)
    assert (s["abstain_precision"], s["abstain_recall"], s["followup_hit@1"]) == (1.0, 1.0, 1.0)


def test_eval_modes(small_assistant, tmp_path):
    f = write_jsonl(tmp_path / "dev.jsonl", CASES[:2])
    figures = {}
    for mode in ("conversation", "alone", "concat"):
        r = run("eval", f, "--json", "--mode", mode, *dirs(small_assistant))
        assert r.exit_code == 0, (mode, r.output, r.exception)
        figures[mode] = json.loads(r.stdout)
        assert figures[mode]["turns"] == 3
    assert figures["conversation"]["followup_hit@1"] == 1.0
    # modes differ only in how follow-ups are searched
    assert {m: fig["single_turn_hit@1"] for m, fig in figures.items()} == dict.fromkeys(figures, 1.0)


def test_eval_unknown_mode_exits_2(small_assistant, tmp_path):
    f = write_jsonl(tmp_path / "dev.jsonl", CASES[:1])
    r = run("eval", f, "--mode", "alnoe", *dirs(small_assistant))
    assert r.exit_code == 2, r.output


def test_eval_seed_question_set(seed_assistant):
    """The repository's seed questions over the seed corpus: a floor, not today's exact figures."""
    r = run("eval", Path(__file__).parent / "data" / "seed_questions.jsonl", "--json", *dirs(seed_assistant))
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["turns"] == s["answerable"] >= 15
    assert s["hit@3"] >= 0.9 and s["hit@1"] >= 0.7 and s["answerable_abstained"] == 0


# --- eval --squad DIR --------------------------------------------------------------------------

SQUAD_PARAGRAPHS = [
    ("p1", "Frostleaf_Mask", "The frostleaf mask is a cooling clay mask made from crushed frostleaf petals and white kaolin clay. It stays on the skin for twelve minutes."),
    ("p2", "Glowberry_Peel", "The glowberry peel is a fruit-acid peel made from fermented glowberry juice. A session takes about twenty minutes and is repeated every four weeks."),
    ("p3", "Tromso_Spa", "The first frostleaf spa opened in Tromso in 1998. It was founded by the chemist Ingrid Halvorsen, who had studied mountain plants."),
    ("p4", "Kaolin", "Kaolin is a soft white clay mined mainly in Cornwall and Georgia. Besides cosmetics, it is used to make porcelain and glossy paper."),
    ("p5", "Lactic_Acid", "Lactic acid is a mild alpha hydroxy acid found in sour milk. In skincare it loosens dead surface cells and helps the skin hold water."),
    ("p6", "Sunscreen", "After any peel the skin burns more easily, so a broad-spectrum sunscreen of at least SPF 30 should be worn for a week."),
]
SQUAD_QUESTIONS = [
    ("How long does the frostleaf mask stay on the skin?", "twelve minutes"),
    ("How often is a glowberry peel session repeated?", "every four weeks"),
    ("Who founded the first frostleaf spa?", "Ingrid Halvorsen"),
    ("Where is kaolin clay mined?", "Cornwall and Georgia"),
    ("What does lactic acid do in skincare?", "loosens dead surface cells"),
    ("What SPF sunscreen should be worn after a peel?", "SPF 30"),
]


@pytest.fixture
def squad_dir(tmp_path) -> Path:
    d = tmp_path / "squad"
    d.mkdir()
    write_jsonl(d / "corpus.jsonl", [{"_id": i, "title": t, "text": x} for i, t, x in SQUAD_PARAGRAPHS])
    write_jsonl(d / "questions.jsonl", [
        {"id": f"q{n}", "question": q, "answers": [{"text": a}]} for n, (q, a) in enumerate(SQUAD_QUESTIONS)
    ])
    return d


def test_squad_corpus_becomes_markdown_articles(squad_dir, tmp_path):
    out = tmp_path / "articles"
    write_squad_corpus(squad_dir, out)
    files = sorted(p.name for p in out.iterdir())
    assert files == [f"p{i}.md" for i in range(1, 7)]
    assert (out / "p3.md").read_text().startswith('---\ntitle: "Tromso Spa"\n---\n')


def test_eval_squad_prints_top_k_and_mrr(squad_dir, embedder):
    r = run("eval", "--squad", squad_dir)
    assert r.exit_code == 0, (r.output, r.exception)
    assert "6 questions over 6 passages" in r.stdout
    m = re.search(r"top-1 (?P<t1>[\d.]+)\s+top-3 (?P<t3>[\d.]+)\s+top-5 (?P<t5>[\d.]+)\s+MRR (?P<mrr>[\d.]+)", r.stdout)
    assert m, r.stdout
    t1, t3, t5, mrr = (float(m[k]) for k in ("t1", "t3", "t5", "mrr"))
    assert 0.0 <= t1 <= t3 <= t5 <= 1.0 and t1 <= mrr <= t5
    # six distinct, plainly worded paragraphs: every answer is the top passage
    assert (t1, t5, mrr) == (1.0, 1.0, 1.0), r.stdout


def test_eval_squad_modes_and_json(squad_dir, embedder):
    r = run("eval", "--squad", squad_dir, "--mode", "bm25", "--no-abstain", "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    fig = json.loads(r.stdout)
    assert fig["mode"] == "bm25" and fig["questions"] == 6 and fig["passages"] == 6
    assert fig["abstained"] == 0.0
    assert fig["top1"] <= fig["top3"] <= fig["top5"] and fig["top5"] >= 5 / 6
    report = evaluate_squad(squad_dir, mode="dense")
    assert report.questions == 6 and report.top5 >= 5 / 6 and 0 < report.median_passage_words < 40


def test_eval_squad_highlight_holds_the_answer(squad_dir, embedder):
    """Each answer sits in one sentence of a two-sentence paragraph: the highlight figure counts the
    top answers whose lit sentence(s) hold it (five of the six at least; a lit first sentence
    everywhere would score 2 of 6)."""
    assert evaluate_squad(squad_dir).highlight >= 5 / 6
    text = run("eval", "--squad", squad_dir).stdout
    assert re.search(r"highlighted sentence\(s\) hold the answer: [\d.]+", text), text


# --- eval --mtrag DIR --------------------------------------------------------------------------

MTRAG_PASSAGES = [
    ("m1", "Glowberry peel", "The glowberry peel is a fruit-acid peel made from fermented glowberry juice. A session takes about twenty minutes."),
    ("m2", "Glowberry peel", "After a glowberry peel the skin may sting for an hour; redness fades within a day."),
    ("m3", "Frostleaf mask", "The frostleaf mask is a cooling clay mask made from crushed frostleaf petals. It stays on the skin for twelve minutes."),
    ("m4", "Frostleaf mask", "A frostleaf mask costs about forty euros at most spas and can be bought for home use."),
    ("m6", "Glowberry peel", "A glowberry peel costs about sixty euros per session at most spas."),
    ("m5", "Kaolin", "Kaolin is a soft white clay mined mainly in Cornwall and Georgia, also used to make porcelain."),
]


def mtrag_row(qid, turns, gold, label="ANSWERABLE"):
    conv = []
    for t in turns:
        conv += [{"speaker": "user", "text": t}, {"speaker": "agent", "text": "An answer."}]
    conv.pop()  # the conversation ends on the user's last turn
    return {"_id": qid, "conversation": conv, "last_turn": turns[-1], "gold_doc_ids": gold,
            "answerability": [label], "multi_turn": ["Follow-up" if len(turns) > 1 else "N/A"]}


@pytest.fixture
def mtrag_dir(tmp_path) -> Path:
    d = tmp_path / "mtrag"
    d.mkdir()
    write_jsonl(d / "corpus.jsonl", [{"_id": i, "domain": "x", "title": t, "text": x} for i, t, x in MTRAG_PASSAGES])
    write_jsonl(d / "queries.jsonl", [
        mtrag_row("a<::>1", ["What is the glowberry peel made from?"], ["m1"]),
        # the last question alone names nothing: only its history finds the frostleaf mask
        mtrag_row("b<::>2", ["Tell me about the frostleaf mask.", "How much does it cost?"], ["m4"]),
        # ... and the same question after the peel: alone, one of the two is ranked wrong
        mtrag_row("c<::>2", ["What is the glowberry peel?", "How much does it cost?"], ["m6"]),
        mtrag_row("d<::>1", ["Who won the football world cup in 1954?"], [], "UNANSWERABLE"),
    ])
    return d


def test_mtrag_queries_history_is_the_earlier_user_turns(mtrag_dir):
    qs = {q["id"]: q for q in mtrag_queries(mtrag_dir)}
    assert qs["b<::>2"]["question"] == "How much does it cost?"
    assert qs["b<::>2"]["history"] == ["Tell me about the frostleaf mask."]
    assert qs["a<::>1"]["history"] == [] and qs["d<::>1"]["label"] == "UNANSWERABLE"


def test_eval_mtrag_modes(mtrag_dir, embedder, tmp_path):
    alone, conv = evaluate_mtrag(mtrag_dir, index_dir=tmp_path / "ix", modes=("alone", "conversation"))
    assert alone.conversations == conv.conversations == 4 and alone.with_gold == 3 and alone.followups == 2
    assert conv.top5 == 1.0 and conv.followup_top5 == 1.0
    assert conv.unanswerable_abstained == 1.0 and conv.answerable_abstained == 0.0
    assert conv.top1 == 1.0 and alone.top1 <= 2 / 3  # "How much does it cost?" alone: the mask's or the peel's price
    r = run("eval", "--mtrag", mtrag_dir, "--mode", "all", "--json", "--keep-index", tmp_path / "ix")
    assert r.exit_code == 0, (r.output, r.exception)
    figs = json.loads(r.stdout)
    assert [f["mode"] for f in figs] == ["alone", "concat", "conversation"]
    assert figs[2]["top5"] == 1.0 and figs[2]["unanswerable_abstained"] == 1.0
    text = run("eval", "--mtrag", mtrag_dir, "--keep-index", tmp_path / "ix").stdout
    assert "(conversation): 4 conversations, 3 last turns with a gold passage (2 follow-ups)" in text, text


def test_eval_mtrag_missing_queries_exits_2(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "corpus.jsonl").write_text("")
    r = run("eval", "--mtrag", d, "--index", tmp_path / "index")
    assert r.exit_code == 2 and "queries.jsonl" in r.output, r.output


# --- malformed input: exit code 2 --------------------------------------------------------------

@pytest.mark.parametrize("content", [
    "this is not json\n",
    '{"id": "a", "questions": []}\n',
    '{"id": "a", "turns": "What is it?"}\n',
    '{"id": "a", "turns": [{"question": "What is it?"}]}\n',
    '[1, 2, 3]\n',
])
def test_eval_malformed_file_exits_2(small_assistant, tmp_path, content):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"id": "ok", "turns": [{"q": "What is the glowberry peel?"}]}\n' + content)
    r = run("eval", f, *dirs(small_assistant))
    assert r.exit_code == 2, (r.output, r.exception)
    assert "bad.jsonl:2" in r.output and "Traceback" not in r.output


def test_eval_turns_given_as_plain_strings_exit_2(small_assistant, tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "turns": ["How frequently is the glowberry peel repeated?"]}])
    r = run("eval", f, *dirs(small_assistant))
    assert r.exit_code == 2, (r.output, repr(r.exception))


def test_eval_file_not_utf8_exits_2(small_assistant, tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b'\xff\xfe{"id": "a", "turns": []}\n')
    r = run("eval", f, *dirs(small_assistant))
    assert r.exit_code == 2, (r.output, repr(r.exception))


@pytest.mark.parametrize("args, message", [
    (["eval", "{missing}"], "is not a file"),
    (["eval", "{dir}"], "is not a file"),
    (["eval", "{file}", "--squad", "{dir}"], "give either"),
    (["eval", "--squad", "{dir}"], "questions.jsonl"),
])
def test_eval_bad_arguments_exit_2(tmp_path, args, message):
    d = tmp_path / "empty-squad"
    d.mkdir()
    (d / "corpus.jsonl").write_text("")
    f = write_jsonl(tmp_path / "q.jsonl", CASES)
    args = [a.format(missing=tmp_path / "nope.jsonl", dir=d, file=f) for a in args]
    r = run(*args, "--index", tmp_path / "index")
    assert r.exit_code == 2, (r.output, r.exception)
    assert message in r.output


@pytest.mark.parametrize("name, line", [
    ("corpus.jsonl", "not json"),
    ("corpus.jsonl", '{"_id": "p9", "title": "No Text"}'),
    ("questions.jsonl", '{"question": "Where?", "answers": [{"answer": "x"}]}'),
])
def test_eval_squad_malformed_files_exit_2(squad_dir, name, line, embedder):
    with open(squad_dir / name, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    r = run("eval", "--squad", squad_dir)
    assert r.exit_code == 2, (r.output, repr(r.exception))
