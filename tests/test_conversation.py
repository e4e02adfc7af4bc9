"""Conversations: subjects and aliases found in the articles, follow-ups, comparisons, and the
question sets (tests/conversations.jsonl and the shared dev set) scored with their history.

Everything is real: the seed corpus (`seed_assistant`, built once per session) and small corpora
written here, indexed with the real model.
"""
from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path

import numpy as np
import pytest

from assistant import subjects as sj
from assistant.conversation import resolve
from assistant.evaluation import evaluate_cases, load_cases
from tests.fixtures_core import open_assistant, write_corpus

HERE = Path(__file__).resolve().parent
OUR_SET = HERE / "conversations.jsonl"
DEV_SET = HERE.parent.parent / "shared" / "eval" / "dev.jsonl"
# the shared dev set lives beside the project (../shared), not in it: a clone elsewhere skips these
needs_dev_set = pytest.mark.skipif(not DEV_SET.is_file(), reason=f"{DEV_SET} is not beside this checkout")


def subjects_of(a) -> sj.Subjects:
    return sj.for_index(a._current().index, a.settings.corpus_dir)


def read(a, question: str, history: list[str] | None = None):
    return resolve(question, history or [], a._current().index, subjects_of(a))


def names(subjects: sj.Subjects) -> set[str]:
    return {s.name for s in subjects}


def about_names(res) -> set[str]:
    """The subjects answers are evidence for ('A vs. B' is evidence for both)."""
    return {n for a in res.answers if a.about for n in a.about.split(" vs. ")}


# --- subjects and aliases, from the articles -----------------------------------------------------

def test_seed_subjects_are_the_treatments(seed_assistant):
    S = subjects_of(seed_assistant)
    assert {"PRP", "mesotherapy", "microneedling", "exosome therapy"} <= names(S)
    # abbreviations of other things (FDA, JAMA) are aliases of nothing the articles compare
    assert not {"FDA", "JAMA"} & {a for s in S for a in s.aliases}
    assert len(S) <= 6


@pytest.mark.parametrize("group", [
    ["PRP", "platelet-rich plasma", "Platelet Rich Plasma", "plasma therapy", "the vampire facial", "PRP injections"],
    ["microneedling", "micro-needling", "Micro needling", "collagen induction therapy"],
    ["mesotherapy", "bio-revitalization", "Mesotherapy"],
])
def test_seed_alias_groups(seed_assistant, group):
    S = subjects_of(seed_assistant)
    found = {S.ids_in(term)[0] if S.ids_in(term) else None for term in group}
    assert None not in found, [t for t in group if not S.ids_in(t)]
    assert len(found) == 1, f"{group} split over {[S.subjects[i].name for i in found]}"


def test_mentions_and_passages(seed_assistant):
    S = subjects_of(seed_assistant)
    ms = S.find("Is micro-needling or the Vampire Facial better than exosomes?")
    assert [S.subjects[m.subject].name for m in ms] == ["microneedling", "PRP", "exosome therapy"]
    assert ms[0].text == "micro-needling"
    index = seed_assistant._current().index
    prp = S.by_name("platelet-rich plasma")
    assert prp is not None and len(prp.rows) >= 5
    for row in prp.rows:  # every passage of a subject names it (text, section heading or title)
        p = index.passages[row]
        named = S.ids_in(index.docs[p.doc_id].text[p.start : p.end] + " " + p.heading + " " + index.docs[p.doc_id].title)
        assert prp.id in named


MATCH_GROUPS = [
    ["platelet-rich plasma therapy", "platelet-rich plasma", "PRP", "the vampire facial"],
    ["plasma therapy"], ["micro-needling", "collagen induction therapy"], ["therapy"], ["3-D peel"],
    ["US"], [".NET facial"], ["Dr. Glow"], ["K-beauty"], ["istanbul lift"], ["e-light"], ["eLight therapy"],
]
MATCH_TEXTS = [
    "Platelet-rich plasma therapy (PRP) vs. plasma therapy: PRP's and PRPs, the Vampire-Facials.",
    "micro needling, Micro-Needlings, microneedling's; micro--needling and micro – needling; collagen induction therapies",
    "therapies, a therapy's cost; 3D peels, 3 d peel, 3-D-peel; US and us; IT",
    ".NET facial and .net facials, x.NET facial; Dr. Glow, dr glow; K-beauty; kbeauty; İstanbul lift",
    "a-PRP, PRP-rich, -PRP, _PRP, PRP_, 5PRP, PRP5 and PRP.", "e-light, E light, eLight therapy, e-light therapies",
    "", "   ",
]


def _one_alternation(subjects: list[sj.Subject]):
    """The reference: one regex alternation of every alias, longest first (leftmost match, then longest)."""
    alts = sorted(((a, s.id) for s in subjects for a in s.aliases), key=lambda x: (-len(x[0]), x[0]))
    rx = re.compile("|".join(f"(?P<a{n}>{sj._alias_pattern(a)})" for n, (a, _) in enumerate(alts)), re.I)
    return lambda text: [(alts[int(m.lastgroup[1:])][1], m.start(), m.end(), m.group()) for m in rx.finditer(text)]


def test_alias_matcher_finds_what_one_alternation_finds():
    """The matcher is linear in the text (a regex alternation of thousands of aliases took 0.1 s per
    passage) but finds exactly the mentions that alternation would."""
    subs = [sj.Subject(i, g[0], g, np.zeros(0, np.int64)) for i, g in enumerate(MATCH_GROUPS)]
    S, ref = sj.Subjects(subs, [], []), _one_alternation(subs)
    for text in MATCH_TEXTS:
        assert [(m.subject, m.start, m.end, m.text) for m in S.find(text)] == ref(text), text
    every = sj._Matcher([(a, s.id) for s in subs for a in s.aliases])  # overlaps too (discovery counts with it)
    for text in MATCH_TEXTS:
        assert every.present(text) == {s.id for s in subs for a in s.aliases
                                       if re.search(sj._alias_pattern(a), text, re.I)}, text
    ms = S.find(MATCH_TEXTS[0])
    assert [(MATCH_GROUPS[m.subject][0], m.text) for m in ms][:3] == [
        ("platelet-rich plasma therapy", "Platelet-rich plasma therapy"), ("platelet-rich plasma therapy", "PRP"),
        ("plasma therapy", "plasma therapy")]
    assert [m.text for m in S.find("eLight therapy")] == ["eLight therapy"]  # not 'eLight' ('e-light')
    assert [m.text for m in S.find("US and us")] == ["US"]  # a capitalised word-abbreviation stays capitalised
    text = "Ask about the İstanbul lift."
    (m,) = S.find(text)
    assert text[m.start : m.end] == m.text == "İstanbul lift"  # offsets survive case folding

    # thousands of aliases sharing their first letters, as in a large corpus
    rng = random.Random(7)
    names = sorted({"".join(rng.choice("bdklmnprst") + rng.choice("aeiou") for _ in range(rng.randint(2, 4)))
                    for _ in range(800)})
    subs = [sj.Subject(i, n, [n, f"{n} peel"] + ([n.upper()[:3]] if i % 5 == 0 else []), np.zeros(0, np.int64))
            for i, n in enumerate(names)]
    S, ref = sj.Subjects(subs, [], []), _one_alternation(subs)
    for _ in range(10):
        words = [rng.choice(names + ["the", "a", "peel", "peels", "and"]) for _ in range(40)]
        text = " ".join(w.capitalize() if rng.random() < 0.3 else w for w in words)
        assert [(m.subject, m.start, m.end, m.text) for m in S.find(text)] == ref(text)


HYDRA = """# HydraFacial vs. Chemical Peels

HydraFacial, also known as hydradermabrasion, cleans, exfoliates and hydrates the skin in a single session. A HydraFacial uses a vortex wand and serums instead of needles.

A chemical peel applies an acid solution that removes the outer layers of the skin. Chemical peels range from light to deep.

## Downtime

HydraFacial has no downtime, while chemical peels can need a week of recovery as the skin flakes.

## Cost

A HydraFacial usually costs less per session than a deep chemical peel.

## Who should avoid them

Chemical peels are not advised for people with very sensitive skin. HydraFacial suits most skin types.
"""

LED = """# LED Light Therapy: What to Expect

LED light therapy shines red or blue light on the skin through light-emitting diode (LED) panels.

## Does it hurt?

LED light therapy is painless: patients feel mild warmth and no heat damage, and there is no downtime.

## How it works

Red light is thought to boost collagen, while blue light targets acne bacteria. LED light therapy sessions last about twenty minutes.

## Sessions

Most people need several sessions a week for a month to see results.
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, embedder):
    """A small corpus of our own: one comparison article now, a second article later."""
    root = tmp_path_factory.mktemp("tiny")
    corpus = write_corpus(root / "corpus", {"hydrafacial-vs-chemical-peels.md": HYDRA})
    return open_assistant(corpus, root / "index")


def test_new_treatment_is_picked_up_by_reindexing_alone(tiny):
    S = subjects_of(tiny)
    assert tiny.settings.corpus_dir.joinpath("glossary.toml").exists() is False
    hydra = S.by_name("hydradermabrasion")
    assert hydra is not None and hydra.name.lower() == "hydrafacial"
    assert S.by_name("chemical peel") is not None and S.by_name("chemical peels") is S.by_name("chemical peel")
    assert S.by_name("LED light therapy") is None

    write_corpus(tiny.settings.corpus_dir, {"led-light-therapy.md": LED})
    try:
        tiny.reindex()
        S = subjects_of(tiny)
        led = S.by_name("LED light therapy")
        assert led is not None and len(led.rows) >= 2
        turn = read(tiny, "Does it hurt?", ["What is LED light therapy?"])
        assert turn.subjects == [led.name] and "LED light therapy" in turn.query
        res = tiny.ask("Does it hurt?", ["What is LED light therapy?"])
        assert not res.abstained and "painless" in res.answers[0].text
        # and it can be compared with the others
        res = tiny.ask("Which has less downtime, HydraFacial or LED light therapy?")
        assert {hydra.name, led.name} <= about_names(res)
    finally:
        (tiny.settings.corpus_dir / "led-light-therapy.md").unlink()
        tiny.reindex()
    assert subjects_of(tiny).by_name("LED light therapy") is None


def test_glossary_adds_and_fixes_aliases(tiny):
    glossary = tiny.settings.corpus_dir / "glossary.toml"
    before = subjects_of(tiny)
    assert before.by_name("aqua peel") is None
    glossary.write_text(
        '[[subject]]\nname = "HydraFacial"\naliases = ["aqua peel", "hydro facial"]\n\n'
        '[[subject]]\nname = "Microdermabrasion"\naliases = ["crystal peel"]\n\n'
        '[[subject]]\nname = "Chemical peels"\naliases = ["hydradermabrasion"]\n',  # a fix: move an alias
        encoding="utf-8",
    )
    try:
        S = subjects_of(tiny)  # no reindex: the glossary applies at the next question
        hydra = S.by_name("aqua peel")
        assert hydra is not None and hydra.name == "HydraFacial"
        assert S.by_name("hydro facial") is hydra and S.by_name("HydraFacial") is hydra
        assert S.by_name("crystal peel").name == "Microdermabrasion"  # added, though no article names it
        assert S.by_name("hydradermabrasion").name == "Chemical peels"  # moved from HydraFacial
        assert read(tiny, "Is it expensive?", ["What is an aqua peel?"]).subjects == ["HydraFacial"]

        glossary.write_text('[ignore]\naliases = ["hydradermabrasion"]\nsubjects = ["chemical peel"]\n', encoding="utf-8")
        S = subjects_of(tiny)
        assert S.by_name("hydradermabrasion") is None and S.by_name("chemical peels") is None
        assert S.by_name("HydraFacial") is not None
    finally:
        glossary.unlink()
    assert names(subjects_of(tiny)) == names(before)


@pytest.mark.parametrize("text", [
    '[[subject]\nname = "broken',  # not TOML
    'subject = "PRP"\n',  # the wrong shape
    '[[subject]]\naliases = "not a list"\n[[subject]]\nname = 3\n',  # entries of the wrong shape
])
def test_malformed_glossary_is_ignored_with_a_warning(tiny, caplog, text):
    glossary = tiny.settings.corpus_dir / "glossary.toml"
    before = names(subjects_of(tiny))
    glossary.write_text(text, encoding="utf-8")
    try:
        with caplog.at_level(logging.WARNING, logger="assistant.subjects"):
            S = subjects_of(tiny)
            res = tiny.ask("Which has less downtime, HydraFacial or chemical peels?")
        assert names(S) == before
        assert any("glossary" in r.getMessage() for r in caplog.records)
        assert not res.abstained and {"HydraFacial", "chemical peel"} <= about_names(res)
    finally:
        glossary.unlink()


# --- follow-ups ----------------------------------------------------------------------------------

@pytest.mark.parametrize("history, question, subjects, must_contain", [
    # pronouns
    (["What is microneedling?"], "Does it hurt?", ["microneedling"], "microneedling hurt"),
    (["What is platelet-rich plasma?"], "How is it prepared?", ["PRP"], "platelet-rich plasma"),
    (["What are exosomes?"], "Where do they come from?", ["exosome therapy"], "exosomes"),
    (["What is microneedling?"], "Can it be combined with PRP?", ["microneedling", "PRP"], "Can microneedling be combined with PRP"),
    # ellipsis
    (["Is PRP approved by the FDA?"], "And what about mesotherapy?", ["mesotherapy"], "Is mesotherapy approved by the FDA?"),
    (["Does exosome therapy need several sessions?"], "How about PRP?", ["PRP"], "Does PRP need several sessions?"),
    (["What are the benefits of microneedling?"], "And the side effects?", ["microneedling"], "side effects"),
    # a question leaning on the context without a pronoun
    (["How is PRP made?"], "How long is the blood spun?", ["PRP"], "(PRP)"),
    # an off-topic question in between does not pollute
    (["What is microneedling?", "How tall is Mount Everest?"], "Is it good for acne scars?", ["microneedling"], "microneedling"),
    # the former / the latter
    (["Is PRP or mesotherapy better supported by research?"], "Why is the latter considered risky?", ["mesotherapy"], "mesotherapy"),
    # three turns: the subject carries over resolved turns
    (["What is bio-revitalization?", "Is it safe?"], "Does it cause bruising?", ["mesotherapy"], "bio-revitalization"),
])
def test_followups_are_read_against_the_conversation(seed_assistant, history, question, subjects, must_contain):
    turn = read(seed_assistant, question, history)
    assert turn.subjects == subjects, turn
    assert must_contain in turn.query, turn.query
    assert turn.query != question


def test_a_question_naming_its_own_subject_switches_topic(seed_assistant):
    turn = read(seed_assistant, "What is exosome therapy?", ["What is microneedling?", "Does it hurt?"])
    assert turn.query == "What is exosome therapy?" and turn.subjects == ["exosome therapy"] and not turn.compare
    turn = read(seed_assistant, "Does it cause bruising?", ["What is exosome therapy?", "What is mesotherapy?"])
    assert turn.subjects == ["mesotherapy"]


def test_off_topic_question_is_not_dragged_into_the_conversation(seed_assistant):
    turn = read(seed_assistant, "How tall is Mount Everest?", ["What is microneedling?"])
    assert turn.query == "How tall is Mount Everest?" and turn.subjects == []
    assert seed_assistant.ask("How tall is Mount Everest?", ["What is microneedling?"]).abstained


@pytest.mark.parametrize("history, question, subjects", [
    (["What is the difference between mesotherapy and microneedling?"], "Which has less downtime?", {"mesotherapy", "microneedling"}),
    (["Compare PRP and mesotherapy."], "Which one is safer?", {"PRP", "mesotherapy"}),
    (["Compare mesotherapy and microneedling."], "How do they work?", {"mesotherapy", "microneedling"}),
    (["What is microneedling?", "What is mesotherapy?"], "Which one is less painful?", {"mesotherapy", "microneedling"}),
    (["What is exosome therapy?"], "Is it more expensive than PRP?", {"exosome therapy", "PRP"}),
    (["Compare microneedling and mesotherapy.", "Who won the last world cup?"], "Which is better for scars?", {"mesotherapy", "microneedling"}),
])
def test_comparisons_through_the_subjects_in_play(seed_assistant, history, question, subjects):
    turn = read(seed_assistant, question, history)
    assert turn.compare and set(turn.subjects) == subjects, turn
    res = seed_assistant.ask(question, history, top_k=3)
    assert not res.abstained
    abouts = [a.about for a in res.answers]
    assert all(abouts), abouts
    assert subjects <= about_names(res)  # evidence for each subject


@pytest.mark.parametrize("question, subjects", [
    ("Which is less invasive, PRP or exosome therapy?", {"PRP", "exosome therapy"}),
    ("Compare PRP and mesotherapy.", {"PRP", "mesotherapy"}),
    ("mesotherapy vs microneedling", {"mesotherapy", "microneedling"}),
])
def test_explicit_comparisons_answer_side_by_side(seed_assistant, question, subjects):
    res = seed_assistant.ask(question, top_k=3)
    assert res.resolved_question == question  # nothing needed resolving
    assert not res.abstained
    abouts = [a.about for a in res.answers]
    singles = {a for a in abouts if " vs. " not in a}
    assert singles == subjects, abouts  # each subject has evidence of its own


def test_comparisons_more_relevant_than_any_single_passage_lead(seed_assistant):
    """'Better supported by research?': the articles hold several passages setting PRP against
    mesotherapy on that point, all more relevant than any passage about one of them alone."""
    res = seed_assistant.ask("Is PRP or mesotherapy better supported by research?", top_k=3)
    assert not res.abstained and about_names(res) == {"PRP", "mesotherapy"}
    assert all(a.about == "PRP vs. mesotherapy" for a in res.answers), [a.about for a in res.answers]
    assert any("more research is available" in a.text for a in res.answers), [a.text[:60] for a in res.answers]


@pytest.mark.parametrize("question, history", [
    ("Is PRP or mesotherapy better supported by research?", []),
    ("Compare PRP and mesotherapy.", []),
    ("Which has less downtime?", []),
    ("Which one is safer?", ["Compare PRP and mesotherapy."]),
    ("What is microneedling?", []),
])
def test_a_shorter_answer_list_is_a_prefix_of_a_longer_one(seed_assistant, question, history):
    short = seed_assistant.ask(question, history, top_k=3)
    long = seed_assistant.ask(question, history, top_k=10)
    assert [a.text for a in short.answers] == [a.text for a in long.answers][: len(short.answers)]
    assert [a.about for a in short.answers] == [a.about for a in long.answers][: len(short.answers)]


def test_a_passage_stating_the_comparison_ranks_first(seed_assistant):
    res = seed_assistant.ask("Which has less downtime?", ["What is the difference between mesotherapy and microneedling?"])
    first = res.answers[0]
    assert first.about == "mesotherapy vs. microneedling"
    assert "less painful with quicker recovery" in first.text
    res = seed_assistant.ask("Which is less invasive, PRP or exosome therapy?")
    assert " vs. " in res.answers[0].about and "less invasive" in res.answers[0].text


def test_which_with_no_subject_in_play_gathers_every_subject(seed_assistant):
    res = seed_assistant.ask("Which has less downtime?", top_k=3)
    assert not res.abstained
    abouts = {a.about for a in res.answers if a.about and " vs. " not in a.about}
    assert len(abouts) >= 3, res.answers
    assert "downtime" in " ".join(a.text for a in res.answers).lower()
    for name in abouts:
        assert name in res.resolved_question
    # "which" about something else is no comparison of the subjects
    turn = read(seed_assistant, "Which journal reported skin firmness improvements from PRP?")
    assert not turn.compare and turn.query == "Which journal reported skin firmness improvements from PRP?"


def test_history_expansion_without_subjects(seed_assistant):
    turn = read(seed_assistant, "Where do they come from?", ["What are growth factors?"])
    assert turn.how == "expansion" and "growth" in turn.query and turn.subjects == []


@needs_dev_set
def test_single_questions_go_through_unchanged(seed_assistant):
    for case in load_cases(DEV_SET):
        q = case["turns"][0]["q"]
        res = seed_assistant.ask(q)
        assert res.resolved_question == q


def test_long_history_weighs_recent_turns(seed_assistant):
    history = ["What is mesotherapy?", "Does it hurt?", "How tall is Mount Everest?", "What is PRP?", "Is it safe?"] * 4
    assert len(history) == 20
    turn = read(seed_assistant, "How long is the recovery?", history)
    assert turn.subjects == ["PRP"]  # the most recent subject, not the first or the most frequent
    assert "PRP" in turn.query and "mesotherapy" not in turn.query


# --- the question sets -----------------------------------------------------------------------------

def _figures(a, path: Path) -> dict:
    cases = load_cases(path)
    return {mode: evaluate_cases(a, cases, mode=mode) for mode in ("alone", "concat", "conversation")}


@needs_dev_set
def test_dev_set_every_followup_is_a_hit_at_1(seed_assistant, monkeypatch):
    r = _figures(seed_assistant, DEV_SET)
    conv = r["conversation"]
    missed = [(t.case, t.question, t.resolved, t.rank) for t in conv.turns if t.turn > 0 and not t.expect_abstain and t.rank != 1]
    assert not missed
    assert conv.abstention() == (1.0, 1.0)
    # single questions score at least what the core scores without any subject knowledge
    index = seed_assistant._current().index
    none = sj.Subjects([], [frozenset()] * len(index.passages), [frozenset()] * len(index.passages))
    monkeypatch.setattr(sj, "for_index", lambda index, corpus_dir=None: none)
    core = evaluate_cases(seed_assistant, load_cases(DEV_SET), mode="alone")
    assert conv.hit_at(1, followups=False) >= core.hit_at(1, followups=False)


def test_our_conversation_set(seed_assistant):
    cases = load_cases(OUR_SET)
    assert len(cases) >= 25
    assert sum(len(c["turns"]) >= 3 for c in cases) >= 5
    r = _figures(seed_assistant, OUR_SET)
    conv, alone, concat = r["conversation"], r["alone"], r["concat"]
    summary = {m: rep.summary() for m, rep in r.items()}
    print(json.dumps(summary, indent=1))
    # reading the conversation beats both naive ways clearly, on follow-ups and overall
    assert conv.hit_at(1, followups=True) >= max(alone.hit_at(1, followups=True), concat.hit_at(1, followups=True)) + 0.2
    assert conv.hit_at(1) > max(alone.hit_at(1), concat.hit_at(1))
    misses = [(t.case, t.turn, t.resolved, t.rank) for t in conv.misses()]
    assert conv.hit_at(1) >= OWN_SET_BAR, misses
    assert conv.hit_at(1, followups=True) >= FOLLOWUP_BAR, misses
    # off-topic questions still abstain inside a conversation
    assert all(t.abstained for t in conv.turns if t.expect_abstain)


# hit@1 on tests/conversations.jsonl: the bar for the whole set is 0.90 (measured 0.903,
# follow-up turns 0.875; README, "Conversations"). The misses left: three resolved follow-ups
# whose best passage falls just under the abstention threshold, and ranking of single questions.
OWN_SET_BAR = 0.90
FOLLOWUP_BAR = 0.85
