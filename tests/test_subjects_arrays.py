"""A saved discovery's row maps as arrays (subjects.json plus the arrays file it names): a fresh
build and every carry-over give what the previous representation (row maps as JSON dicts, moved
by Python) gave, row for row; generations saved that way still load and are carried over.
Real model and index; the seed corpus plays a large library (thresholds lowered)."""
from __future__ import annotations

import copy
import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from assistant import index as ix
from assistant import subjects as sj
from tests.fixtures_core import copy_seed_corpus, open_assistant
from tests.test_index_scale import CRYO


# --- the previous representation, as it was (the reference) -----------------------------------

def old_to_json(subjects: sj.Subjects, glossary: str | None) -> dict:
    return {
        "glossary": glossary,
        "subjects": [{"name": x.name, "aliases": x.aliases, "rows": x.rows.tolist(), "sources": sorted(x.sources),
                      "mentions": x.mentions} for x in subjects.subjects],
        "body": {str(r): sorted(b) for r, b in enumerate(subjects.body) if b},
        "heading": {str(r): sorted(h) for r, h in enumerate(subjects.heading) if h},
    }


def old_carry_over(data: dict, index, old_to_new: np.ndarray, first_new: int, removed: int) -> dict | None:
    n = len(index.passages)
    changed = int(data.get("changed_since_discovery", 0)) + (n - first_new) + removed
    if n < sj.INCREMENTAL_MIN_PASSAGES or changed > sj.REDISCOVER_SHARE * n:
        return None
    subs = [sj.Subject(i, d["name"], list(d["aliases"]), np.zeros(0, np.int64), set(d["sources"]),
                       int(d.get("mentions", 0))) for i, d in enumerate(data["subjects"])]
    body: dict[int, list[int]] = {}
    heading: dict[int, list[int]] = {}
    for key_, dst in (("body", body), ("heading", heading)):
        for r, ids in data.pop(key_).items():
            new = int(old_to_new[int(r)]) if int(r) < len(old_to_new) else -1
            if new >= 0:
                dst[new] = list(ids)
    added = sj._introduced(index, first_new, subs)
    n_old = len(subs)
    for srcs, forms in added:
        subs.append(sj.Subject(len(subs), "", sj._aliases(forms), np.zeros(0, np.int64), set(srcs)))
    probe = sj.Subjects(subs, [], [])
    redo = set(range(first_new, n))
    for s in subs[n_old:]:
        redo.update(sj._rows_naming(index, s.aliases))
    about_doc: dict[str, set[int]] = {}
    surface: dict[int, Counter] = defaultdict(Counter)
    for r in sorted(redo):
        p = index.passages[r]
        if p.doc_id not in about_doc:
            named = {m.subject for m in probe.find(index.docs[p.doc_id].title)}
            about_doc[p.doc_id] = named if len(named) == 1 else set()
        found = probe.find(index.docs[p.doc_id].text[p.start : p.end])
        for m in found:
            if m.subject >= n_old:
                surface[m.subject][m.text] += 1
        b = {m.subject for m in found}
        h = {m.subject for m in probe.find(p.heading or "")} | about_doc[p.doc_id]
        for dst, ids in ((body, b), (heading, h)):
            if ids:
                dst[r] = sorted(ids)
            else:
                dst.pop(r, None)
    rows_of: dict[int, set[int]] = defaultdict(set)
    for dst in (body, heading):
        for r, ids in dst.items():
            for i in ids:
                rows_of[i].add(r)
    cap = sj.max_subject_rows(n)
    keep = [s.id for s in subs if "glossary" in s.sources or (rows_of[s.id] and (s.id < n_old or len(rows_of[s.id]) <= cap))]
    remap = {old: i for i, old in enumerate(keep)}
    out = dict(data)
    out["subjects"] = []
    for i in keep:
        s = subs[i]
        if i < n_old:
            d = dict(data["subjects"][i])
        else:
            s.rows = np.asarray(sorted(rows_of[i]), dtype=np.int64)
            s.mentions = sum(surface[i].values())
            d = {"name": sj._display_name(s, surface[i]) if surface[i] else s.aliases[0], "aliases": s.aliases,
                 "sources": sorted(s.sources), "mentions": s.mentions}
        out["subjects"].append({**d, "rows": sorted(rows_of[i])})
    for key_, dst in (("body", body), ("heading", heading)):
        out[key_] = {str(r): ids2 for r, ids in sorted(dst.items()) if (ids2 := [remap[x] for x in ids if x in remap])}
    out["changed_since_discovery"] = changed
    return out


def old_form(data: dict) -> dict:
    """A saved discovery (either form) as the previous representation held it."""
    out = {k: v for k, v in data.items() if k != "arrays"}
    out["subjects"] = [{**d, "rows": [int(r) for r in d["rows"]]} for d in data["subjects"]]
    for key_ in ("body", "heading"):
        m = data[key_]
        if sj._is_csr(m):
            indptr, ids = np.asarray(m["indptr"]), np.asarray(m["ids"])
            out[key_] = {str(r): ids[indptr[r] : indptr[r + 1]].tolist() for r in range(len(indptr) - 1)
                         if indptr[r + 1] > indptr[r]}
    return out


# --- tests ---------------------------------------------------------------------------------------

@pytest.fixture
def large(monkeypatch, tmp_path, embedder):
    """The seed corpus built, playing a large library; every carry-over checked against the
    previous representation's on the same input."""
    monkeypatch.setattr(sj, "INCREMENTAL_MIN_PASSAGES", 1)
    monkeypatch.setattr(sj, "REDISCOVER_SHARE", 1.0)
    corpus = copy_seed_corpus(tmp_path / "corpus")
    a = open_assistant(corpus, tmp_path / "index")
    checked = []
    real = sj.carry_over

    def checking(data, index, old_to_new, first_new, removed):
        want = old_carry_over(old_form(data), index, old_to_new, first_new, removed)
        got = real(data, index, old_to_new, first_new, removed)
        assert want is not None and got is not None
        assert old_form(got) == want
        checked.append(len(want["subjects"]))
        return got

    monkeypatch.setattr(sj, "carry_over", checking)
    return a, corpus, tmp_path / "index", checked


def _served_equals_saved(index_dir, corpus) -> None:
    """What a reader builds from the arrays is what the previous representation's reader built."""
    index = ix.load(index_dir)
    data = sj.saved_json(index.path)
    served = sj.for_index(index, corpus)
    old = old_form(data)
    n = len(index.passages)
    body, heading = [frozenset()] * n, [frozenset()] * n
    for key_, rows in (("body", body), ("heading", heading)):
        for r, ids in old[key_].items():
            rows[int(r)] = frozenset(ids)
    assert served.body == body and served.heading == heading
    assert [(s.name, s.aliases, s.rows.tolist(), sorted(s.sources), s.mentions) for s in served.subjects] == [
        (d["name"], d["aliases"], d["rows"], d["sources"], d["mentions"]) for d in old["subjects"]]
    # the rows of each subject are those its passages name
    for s in served.subjects:
        assert s.rows.tolist() == [r for r in range(n) if s.id in body[r] | heading[r]], s.name


def test_a_fresh_discovery_saves_and_reads_back_what_it_found(seed_assistant, tmp_path):
    index = seed_assistant._current().index
    found = sj.build(index)
    (tmp_path / "gen").mkdir()
    sj.save(tmp_path / "gen", sj.to_json(found, None))
    small = json.loads((tmp_path / "gen" / sj.SAVED_NAME).read_text())
    assert "body" not in small and "rows" not in small["subjects"][0]  # the row maps are in the arrays file
    assert (tmp_path / "gen" / small["arrays"]).is_file()
    data = sj.saved_json(tmp_path / "gen")
    assert old_form(data) == old_to_json(found, None)
    back = sj.from_json(data, len(index.passages))
    assert back.body == found.body and back.heading == found.heading
    assert [(s.name, s.rows.tolist()) for s in back.subjects] == [(s.name, s.rows.tolist()) for s in found.subjects]
    # one frozenset per distinct set, shared by body and heading
    sets = back.body + back.heading
    assert len({id(s) for s in sets}) == len(set(sets))
    # the form of before still reads alike
    old = sj.from_json(old_to_json(found, None), len(index.passages))
    assert old.body == back.body and old.heading == back.heading
    # a map of another length is no map of this index
    with pytest.raises(ValueError):
        sj.from_json(data, len(index.passages) + 1)


def test_carry_overs_give_what_the_dict_representation_gave(large):
    a, corpus, index_dir, checked = large
    # an article that introduces subjects, one removed, one changed
    (corpus / "cryo-vs-oxygen-facial.txt").write_text(CRYO)
    (corpus / "mesotherapy-vs-plasma-therapy.txt").unlink()
    f = corpus / "microneedling-with-prp.txt"
    f.write_text(f.read_text().replace("microneedling", "micro-needling", 3) + "\nPRP versus mesotherapy: PRP lasts longer.\n")
    report = a.reindex()
    assert report.added and report.removed and report.changed
    assert len(checked) == 1
    names = {d["name"].lower() for d in sj.saved_json(ix.current_generation(index_dir))["subjects"]}
    assert {"cryo facial", "oxygen facial"} <= names  # subjects were added
    _served_equals_saved(index_dir, corpus)
    # the next carry-over starts from the arrays this one wrote; its subjects leave with it
    (corpus / "cryo-vs-oxygen-facial.txt").unlink()
    a.reindex()
    assert len(checked) == 2
    names = {d["name"].lower() for d in sj.saved_json(ix.current_generation(index_dir))["subjects"]}
    assert not {"cryo facial", "oxygen facial"} & names  # subjects were dropped
    _served_equals_saved(index_dir, corpus)


def test_a_generation_saved_with_dict_row_maps_loads_and_is_carried_over(large):
    a, corpus, index_dir, checked = large
    gen = ix.current_generation(index_dir)
    data = sj.saved_json(gen)
    old = old_form(data)
    arrays = gen / data["arrays"]
    (gen / sj.SAVED_NAME).write_text(json.dumps(old))  # as the previous code wrote it
    arrays.unlink()
    index = ix.load(index_dir)
    served = sj.for_index(index, corpus)
    assert len(served.subjects) == len(old["subjects"]) >= 3
    _served_equals_saved(index_dir, corpus)
    (corpus / "cryo-vs-oxygen-facial.txt").write_text(CRYO)
    a.reindex()
    assert len(checked) == 1  # carried over from the dict form
    new = ix.current_generation(index_dir)
    assert "arrays" in json.loads((new / sj.SAVED_NAME).read_text())
    _served_equals_saved(index_dir, corpus)


def test_an_edited_glossary_replaces_the_arrays_of_the_served_generation(large):
    a, corpus, index_dir, _ = large
    gen = ix.current_generation(index_dir)
    before = json.loads((gen / sj.SAVED_NAME).read_text())["arrays"]
    (corpus / sj.GLOSSARY_NAME).write_text('[[subject]]\nname = "Collagen induction"\naliases = ["microneedling"]\n')
    assert not a.reindex().touched
    small = json.loads((gen / sj.SAVED_NAME).read_text())
    assert small["arrays"] != before and not (gen / before).exists() and (gen / small["arrays"]).is_file()
    assert "Collagen induction" in [s.name for s in sj.for_index(ix.load(index_dir), corpus).subjects]
    _served_equals_saved(index_dir, corpus)


def test_renumbering_for_a_database_version_moves_every_row(seed_assistant):
    """pgstore stores a version's rows in another order: the lists it stores are the dict
    representation's rows moved alike."""
    index = seed_assistant._current().index
    found = sj.to_json(sj.build(index), None)
    n = len(index.passages)
    order = np.random.default_rng(3).permutation(n).tolist()
    got = sj.renumbered(copy.deepcopy(found), order)
    json.dumps(sj.plain(got))  # storable as jsonb
    new_of = {old: new for new, old in enumerate(order)}
    old = old_form(found)
    want_rows = [sorted(new_of[r] for r in d["rows"]) for d in old["subjects"]]
    assert [d["rows"] for d in sj.plain(got)["subjects"]] == want_rows
    for key_ in ("body", "heading"):
        want = {str(new_of[int(r)]): ids for r, ids in old[key_].items()}
        assert old_form(got)[key_] == dict(sorted(want.items(), key=lambda kv: int(kv[0])))
    # and from the dict form (a version stored by the previous code) alike
    assert old_form(sj.renumbered(old, order)) == old_form(got)
