"""Reading and cleaning articles: .txt boilerplate rules, .md, .html, .pdf, unreadable files,
titles, doc ids and hidden files. No model needed: these are fast."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from assistant.documents import (
    UnreadableFileError,
    discover,
    load_corpus,
    read_document,
)
from tests.fixtures_core import SEED_CORPUS, minimal_pdf, write_corpus


def read(tmp_path: Path, name: str, content: str | bytes):
    write_corpus(tmp_path, {name: content})
    return read_document(tmp_path / name, tmp_path)


def lines_of(doc) -> list[str]:
    return doc.text.split("\n")


# --- .txt: boilerplate dropped by general rules ----------------------------------------------

SITE_ARTICLE = """Offices 12 Harbour Rd, Suite 4 Springfield, OR 97477 | Phone number (541) 555-0142

Glowberry Peel vs Frostleaf Mask for Dull Skin

March 3, 2022by Skin Notes

The glowberry peel removes dull surface cells with fermented fruit acids.
The clinic has treated 1,200 patients since 2015 and repeats the peel every 4 weeks.
Avoid contact with water for 24 hours after the peel.
Patients should contact their doctor if redness lasts more than three days.
The first study was published on March 3, 2020 and followed 40 patients for 6 months.
A 30 ml jar costs about 45 dollars and lasts for 10 to 12 treatments.
Call 911 if you have trouble breathing after any treatment.

If you are interested in buying glowberry kits, check out the quality supplies available here.

Skin Notes
"""

KEPT = [
    "Glowberry Peel vs Frostleaf Mask for Dull Skin",
    "The glowberry peel removes dull surface cells with fermented fruit acids.",
    "The clinic has treated 1,200 patients since 2015 and repeats the peel every 4 weeks.",
    "Avoid contact with water for 24 hours after the peel.",
    "Patients should contact their doctor if redness lasts more than three days.",
    "The first study was published on March 3, 2020 and followed 40 patients for 6 months.",
    "A 30 ml jar costs about 45 dollars and lasts for 10 to 12 treatments.",
    "Call 911 if you have trouble breathing after any treatment.",
]


def test_txt_drops_site_boilerplate_and_keeps_every_content_line(tmp_path):
    doc = read(tmp_path, "glowberry.txt", SITE_ARTICLE)
    # exactly the content lines, in order: nothing over-deleted, nothing left over
    assert lines_of(doc) == KEPT
    assert "555-0142" not in doc.text  # office address / phone line
    assert "check out" not in doc.text  # sales line
    assert "2022by" not in doc.text  # byline with a date
    assert not doc.text.endswith("Skin Notes")  # dangling site name at the end


def test_txt_about_the_author_section_is_dropped_to_the_end(tmp_path):
    text = """Frostleaf Mask Notes
The frostleaf mask is a cooling clay mask made from crushed petals.
It stays on the skin for twelve minutes and is rinsed off with cool water.
People with dry skin should follow it with a rich cream.
About the Author:
Jane Doe is a skincare writer with over 10 years of experience in spa treatments.
She lives in Oslo with two cats.
Comments
"""
    doc = read(tmp_path, "frostleaf.txt", text)
    assert lines_of(doc) == [
        "Frostleaf Mask Notes",
        "The frostleaf mask is a cooling clay mask made from crushed petals.",
        "It stays on the skin for twelve minutes and is rinsed off with cool water.",
        "People with dry skin should follow it with a rich cream.",
    ]


def test_txt_dangling_trailing_short_lines_dropped_but_trailing_list_items_kept(tmp_path):
    dangling = read(tmp_path, "a.txt", "Frostleaf Mask Notes\nThe frostleaf mask is rinsed off after twelve minutes.\nComments\nSkin Notes\n")
    assert lines_of(dangling) == ["Frostleaf Mask Notes", "The frostleaf mask is rinsed off after twelve minutes."]
    # an article that ends with a list keeps it: list items are content, even without full stops
    listed = read(tmp_path, "b.txt", "Frostleaf Mask Notes\nWhat you need:\n- a clean bowl\n- cool water\n- a soft towel\n")
    assert lines_of(listed)[-3:] == ["- a clean bowl", "- cool water", "- a soft towel"]


def test_txt_footer_word_early_in_the_article_does_not_cut_it(tmp_path):
    # a footer heading only ends the article once there is an article above it
    text = "Comments\nReaders asked how long the frostleaf mask stays on the skin.\nIt stays on for twelve minutes.\nThen it is rinsed off with cool water.\n"
    doc = read(tmp_path, "faq.txt", text)
    assert "It stays on for twelve minutes." in lines_of(doc)
    assert "Then it is rinsed off with cool water." in lines_of(doc)


def test_txt_crlf_bom_and_spacing_normalised(tmp_path):
    raw = "\ufeffFrostleaf Mask Notes\r\nThe  frostleaf\u00a0mask is\trinsed off after twelve minutes.\r\n".encode("utf-8")
    doc = read(tmp_path, "crlf.txt", raw)
    assert doc.text == "Frostleaf Mask Notes\nThe frostleaf mask is rinsed off after twelve minutes."
    assert doc.title == "Frostleaf Mask Notes"


def test_txt_content_sentences_using_call_to_action_words_are_kept(tmp_path):
    text = """Glowberry Peel Prices
Patients who sign up for a package of three glowberry peel sessions pay less per session.
Many clinics subscribe to the peel guidelines of the national dermatology board.
A single session costs about 80 dollars.
"""
    doc = read(tmp_path, "prices.txt", text)
    assert "Patients who sign up for a package of three glowberry peel sessions pay less per session." in lines_of(doc)
    assert "Many clinics subscribe to the peel guidelines of the national dermatology board." in lines_of(doc)


def test_txt_dated_list_items_are_kept(tmp_path):
    text = """History of the Frostleaf Mask
The frostleaf mask went through three stages before it reached shops.
- First made in a spa in Tromso on June 5, 2019
- Approved for sale in Norway on March 3, 2020
- Sold across Europe since January 14, 2021
Today it is one of the best-selling clay masks.
"""
    doc = read(tmp_path, "history.txt", text)
    assert "- Approved for sale in Norway on March 3, 2020" in lines_of(doc)
    assert sum(1 for x in lines_of(doc) if x.startswith("- ")) == 3


def test_seed_article_boilerplate_removed():
    """The real seed article with an office line, a byline, a sales line and a site name."""
    doc = read_document(SEED_CORPUS / "prp-therapy-vs-mesotherapy.txt", SEED_CORPUS)
    first = lines_of(doc)[0]
    assert first == "PRP Therapy vs. Mesotherapy for Skin Rejuvenation"
    assert "Phone number" not in doc.text and "Offices" not in doc.text
    assert "2021by" not in doc.text
    assert "interested in buying" not in doc.text
    assert doc.text.endswith("accelerated skin remodeling and regeneration.")
    other = read_document(SEED_CORPUS / "mesotherapy-vs-microneedling.txt", SEED_CORPUS)
    assert "About the Author" not in other.text and "Sandra" not in other.text
    assert "Feel free to reach out" not in other.text
    assert not other.text.endswith("Comments")
    assert "Both mesotherapy and microneedling are valuable tools" in other.text


# --- .md ---------------------------------------------------------------------------------------

MARKDOWN = """---
title: "Frostleaf Mask: A Guide"
author: someone
---
# Frostleaf Mask Basics

The **frostleaf mask** is a _cooling_ clay mask. See [the study](https://example.com/study) for details.

## How It Works

* It draws out oil with `kaolin` clay.
* It calms *redness* within __ten__ minutes.

> Rinse with cool water.
"""


def test_markdown_markers_removed_words_kept(tmp_path):
    doc = read(tmp_path, "frostleaf.md", MARKDOWN)
    assert lines_of(doc) == [
        "Frostleaf Mask Basics",
        "The frostleaf mask is a cooling clay mask. See the study for details.",
        "How It Works",
        "- It draws out oil with kaolin clay.",
        "- It calms redness within ten minutes.",
        "Rinse with cool water.",
    ]
    assert "https://" not in doc.text and "author" not in doc.text
    assert doc.title == "Frostleaf Mask: A Guide"  # front matter wins over the '# ' heading


def test_markdown_first_level_one_heading_is_the_title(tmp_path):
    text = "Some intro text that is a sentence.\n\n## A Second-Level Heading Here\n\n# Frostleaf Mask Basics\n\nBody text about the mask.\n"
    doc = read(tmp_path, "notes.md", text)
    assert doc.title == "Frostleaf Mask Basics"
    assert "Frostleaf Mask Basics" in lines_of(doc)  # the heading stays in the text too


def test_markdown_intraword_underscores_are_kept(tmp_path):
    doc = read(tmp_path, "settings.md", "# Mask Timer Settings\n\nSet max_mask_time to twelve minutes for the frostleaf mask.\n")
    assert "Set max_mask_time to twelve minutes for the frostleaf mask." in lines_of(doc)


# --- .html -------------------------------------------------------------------------------------

HTML = """<!DOCTYPE html>
<html><head><title>{title}</title>
<script>var tracking = "TRACKING-SCRIPT-TEXT";</script>
<style>.x {{ color: red }}</style></head>
<body>
<nav><ul><li><a href="/">Home</a></li><li><a href="/shop">Shop all NAVLINK products</a></li><li><a href="/blog">Blog</a></li></ul></nav>
<article>
<h1>{h1}</h1>
<p>The frostleaf mask is a cooling clay mask made from crushed frostleaf petals and white kaolin clay. It is applied to clean skin in a thin, even layer.</p>
<h2>How long to leave it on</h2>
<p>Leave the frostleaf mask on for twelve minutes, then rinse it off with cool water. Leaving it on longer can dry out sensitive skin.</p>
<ul><li>Use it at most twice a week.</li><li>Do not use it on broken skin.</li></ul>
<p>People with very oily skin often see the clearest results after four weeks of regular use.</p>
</article>
<footer><p>Copyright 2024 FOOTERCORP. All rights reserved.</p><p>Privacy policy | Terms of use</p></footer>
<script>console.log("INLINE-SCRIPT-TEXT")</script>
</body></html>"""


def test_html_article_kept_navigation_footer_and_scripts_dropped(tmp_path):
    doc = read(tmp_path, "frostleaf.html", HTML.format(title="Frostleaf Mask Guide", h1="Frostleaf Mask Guide"))
    for s in (
        "The frostleaf mask is a cooling clay mask made from crushed frostleaf petals and white kaolin clay.",
        "Leave the frostleaf mask on for twelve minutes, then rinse it off with cool water.",
        "People with very oily skin often see the clearest results after four weeks of regular use.",
        "How long to leave it on",
    ):
        assert s in doc.text
    assert any("Use it at most twice a week." in x for x in lines_of(doc))
    for junk in ("TRACKING-SCRIPT-TEXT", "INLINE-SCRIPT-TEXT", "NAVLINK", "FOOTERCORP", "color: red", "<", "Privacy policy"):
        assert junk not in doc.text, junk
    assert doc.title == "Frostleaf Mask Guide"


def test_html_title_from_title_tag_or_h1(tmp_path):
    no_h1 = HTML.format(title="Frostleaf Mask Guide | Glow Shop", h1="").replace("<h1></h1>", "")
    assert read(tmp_path, "a.html", no_h1).title == "Frostleaf Mask Guide"  # the site name is not part of it
    no_title = HTML.format(title="", h1="All About Frostleaf Masks").replace("<title></title>", "")
    assert read(tmp_path, "b.html", no_title).title == "All About Frostleaf Masks"
    both = read(tmp_path, "c.html", HTML.format(title="Frostleaf Mask Guide", h1="All About Frostleaf Masks"))
    assert both.title in ("Frostleaf Mask Guide", "All About Frostleaf Masks")


# --- .pdf --------------------------------------------------------------------------------------

def test_pdf_text_is_read(tmp_path):
    pdf = minimal_pdf([
        "Frostleaf Mask Handout",
        "The frostleaf mask is left on the skin for twelve minutes.",
        "Rinse it off with cool water afterwards.",
        "1",  # a page number: furniture, not text
    ])
    assert pdf.startswith(b"%PDF-1.4")
    doc = read(tmp_path, "handout.pdf", pdf)
    assert doc.title == "Frostleaf Mask Handout"
    assert "The frostleaf mask is left on the skin for twelve minutes." in doc.text
    assert "Rinse it off with cool water afterwards." in doc.text
    assert not any(x.strip() == "1" for x in lines_of(doc))
    assert doc.doc_id == "handout" and doc.path == "handout.pdf"


def test_pdf_metadata_title_used(tmp_path):
    pdf = minimal_pdf(["the frostleaf mask is left on the skin for twelve minutes."], title="Frostleaf Handout 2024")
    doc = read(tmp_path, "handout.pdf", pdf)
    assert doc.title == "Frostleaf Handout 2024"


def test_pdf_damaged_is_unreadable(tmp_path):
    with pytest.raises(UnreadableFileError, match="broken.pdf"):
        read(tmp_path, "broken.pdf", b"%PDF-1.4\nthis is not really a pdf\n")


# --- unreadable and empty files ----------------------------------------------------------------

def test_undecodable_and_empty_files_skipped_with_a_warning_others_read(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "corpus", {
        "good.txt": "Frostleaf Mask Notes\nThe frostleaf mask is rinsed off after twelve minutes.\n",
        "latin1.txt": "Caf\xe9 cr\xe8me peel notes\nThe peel is sold in a caf\xe9.\n".encode("latin-1"),
        "empty.txt": "",
        "blank.md": "   \n\n  \n",
        "also-good.md": "# Glowberry Peel\n\nThe glowberry peel takes twenty minutes.\n",
    })
    with caplog.at_level(logging.WARNING, logger="assistant"):
        docs, skipped = load_corpus(corpus)
    assert sorted(d.doc_id for d in docs) == ["also-good", "good"]
    assert sorted(skipped) == ["blank.md", "empty.txt", "latin1.txt"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in ("latin1.txt", "empty.txt", "blank.md"):
        assert any(name in w for w in warnings), (name, warnings)
    assert any("latin1.txt" in w and "UTF-8" in w for w in warnings), warnings


def test_unreadable_file_raises_naming_it(tmp_path):
    with pytest.raises(UnreadableFileError, match=r"bad\.txt.*UTF-8"):
        read(tmp_path, "bad.txt", b"\xff\xfe\xfa not utf-8 \x80\x81")


# --- titles ------------------------------------------------------------------------------------

def test_title_is_the_first_line_when_it_reads_as_one(tmp_path):
    doc = read(tmp_path, "whatever-name.txt", "Glowberry Peel vs Frostleaf Mask\nThe glowberry peel takes twenty minutes.\n")
    assert doc.title == "Glowberry Peel vs Frostleaf Mask"
    colon = read(tmp_path, "x.txt", "Understanding the Distinctions: Peel vs. Mask\nThe glowberry peel takes twenty minutes.\n")
    assert colon.title == "Understanding the Distinctions: Peel vs. Mask"


def test_title_from_file_name_keeps_acronyms_upper_case_in_the_text(tmp_path):
    text = "In regenerative medicine, PRP injections and exosome therapy are popular treatments.\nBoth aim to help the skin heal.\n"
    doc = read(tmp_path, "prp-injections-vs-exosome-therapy.txt", text)
    assert doc.title == "PRP Injections vs Exosome Therapy"
    # not upper-case in the text: not an acronym
    plain = read(tmp_path, "frostleaf_mask-and-the-glowberry-peel.txt", "the frostleaf mask is rinsed off after twelve minutes.\n")
    assert plain.title == "Frostleaf Mask and the Glowberry Peel"


def test_seed_titles():
    docs, skipped = load_corpus(SEED_CORPUS)
    assert skipped == []
    titles = {d.doc_id: d.title for d in docs}
    assert titles == {
        "mesotherapy-vs-microneedling": "Mesotherapy vs Microneedling",
        "mesotherapy-vs-plasma-therapy": "Understanding the Distinctions: Mesotherapy vs. Plasma for Facial Rejuvenation",
        "microneedling-with-prp": "What Is Micro-needling with PRP",
        "prp-injections-vs-exosome-therapy": "PRP Injections vs Exosome Therapy",
        "prp-therapy-vs-mesotherapy": "PRP Therapy vs. Mesotherapy for Skin Rejuvenation",
    }


def test_section_heading_after_an_opening_sentence_is_not_the_title(tmp_path):
    text = (
        "The frostleaf mask is a cooling clay mask made from crushed petals.\n"
        "How It Works\n"
        "It draws oil out of the skin in twelve minutes.\n"
    )
    doc = read(tmp_path, "frostleaf-mask.txt", text)
    assert doc.title == "Frostleaf Mask"


# --- ids, paths, discovery ---------------------------------------------------------------------

def test_doc_id_is_relative_path_without_extension(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", {
        "top.txt": "Top Level Article\nThe frostleaf mask takes twelve minutes.\n",
        "guides/x.md": "# Guide X\n\nThe glowberry peel takes twenty minutes.\n",
        "guides/deeper/y.html": HTML.format(title="Frostleaf Mask Guide", h1="Frostleaf Mask Guide"),
    })
    docs, skipped = load_corpus(corpus)
    assert skipped == []
    by_id = {d.doc_id: d for d in docs}
    assert set(by_id) == {"top", "guides/x", "guides/deeper/y"}
    assert by_id["guides/x"].path == "guides/x.md"
    assert by_id["guides/deeper/y"].path == "guides/deeper/y.html"


def test_hidden_files_and_folders_and_other_types_ignored(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", {
        "visible.txt": "Visible Article Title\nThe frostleaf mask takes twelve minutes.\n",
        ".hidden.txt": "Hidden Article Title\nNever indexed.\n",
        ".git/notes.txt": "Git Notes Title\nNever indexed.\n",
        "sub/.cache/page.html": "<html><body><p>Never indexed.</p></body></html>",
        "image.png": b"\x89PNG\r\n\x1a\n",
        "notes.docx": b"PK\x03\x04",
    })
    found = [p.relative_to(corpus).as_posix() for p in discover(corpus)]
    assert found == ["visible.txt"]
    docs, skipped = load_corpus(corpus)
    assert [d.doc_id for d in docs] == ["visible"] and skipped == []


def test_sha256_is_of_the_raw_file(tmp_path):
    import hashlib

    raw = "Frostleaf Mask Notes\nThe frostleaf mask takes twelve minutes.\n".encode()
    doc = read(tmp_path, "a.txt", raw)
    assert doc.sha256 == hashlib.sha256(raw).hexdigest()


# --- citation metadata: what an article says about itself ---------------------------------------

AUTHORED_HTML = """<!DOCTYPE html><html><head><meta charset="utf-8">
<title>Frostleaf Mask Guide</title>
<meta name="author" content="Jane Doe">
<meta property="article:published_time" content="2023-03-12T08:30:00+00:00">
<meta property="og:site_name" content="Example Clinic">
<link rel="canonical" href="https://example-clinic.com/guides/frostleaf">
</head><body><article><h1>Frostleaf Mask Guide</h1>
<p>The frostleaf mask is a cooling gel mask made from fermented mint leaves and applied for ten minutes.</p>
<p>Most people use the frostleaf mask twice a week, and it calms redness after sun exposure.</p>
</article></body></html>"""


def test_html_citation_from_meta_tags(tmp_path):
    doc = read(tmp_path, "frostleaf.html", AUTHORED_HTML)
    assert (doc.author, doc.published, doc.site, doc.original_url) == (
        "Jane Doe", "2023-03-12", "Example Clinic", "https://example-clinic.com/guides/frostleaf")
    assert "Jane Doe" not in doc.text and "Example Clinic" not in doc.text


def test_html_original_url_saved_in_the_page_wins(tmp_path):
    from assistant.citation import embed_original_url

    page = embed_original_url(AUTHORED_HTML.encode(), "https://mirror.example.org/frostleaf?x=1&y=2")
    doc = read(tmp_path, "frostleaf.html", page)
    assert doc.original_url == "https://mirror.example.org/frostleaf?x=1&y=2"
    again = embed_original_url(page, "https://other.example.org/a")  # replaced, not added twice
    assert again.count(b'name="original-url"') == 1 and b"other.example.org" in again


def test_plain_text_byline_and_date_become_metadata_not_text(tmp_path):
    doc = read(tmp_path, "frostleaf.txt", (
        "Frostleaf Mask Guide\nBy Jane Doe\nPublished: March 12, 2023\n"
        "The frostleaf mask is a cooling gel mask made from fermented mint leaves.\n"
        "By using it twice a week, most people see calmer skin within a month of regular use.\n"))
    assert (doc.author, doc.published, doc.site, doc.original_url) == ("Jane Doe", "2023-03-12", None, None)
    assert lines_of(doc) == [
        "Frostleaf Mask Guide",
        "The frostleaf mask is a cooling gel mask made from fermented mint leaves.",
        "By using it twice a week, most people see calmer skin within a month of regular use.",
    ]
    assert doc.title == "Frostleaf Mask Guide"


@pytest.mark.parametrize("line,author,published", [
    ("March 3, 2022by Skin Notes", "Skin Notes", "2022-03-03"),
    ("Posted by Dr. Ana Ruiz on 4 May 2021", "Dr. Ana Ruiz", "2021-05-04"),
    ("Written by Ana Ruiz | 2021-05-04", "Ana Ruiz", "2021-05-04"),
    ("Author: Ana Ruiz", "Ana Ruiz", None),
    ("Last updated: 2024-01-31", None, "2024-01-31"),
])
def test_byline_shapes(tmp_path, line, author, published):
    doc = read(tmp_path, "a.txt", f"Frostleaf Mask Guide\n{line}\nThe frostleaf mask is a cooling gel mask.\n")
    assert (doc.author, doc.published) == (author, published)
    assert line not in doc.text


def test_sentences_with_by_and_dates_in_the_body_are_not_bylines(tmp_path):
    text = ("Frostleaf Mask Guide\nThe frostleaf mask is a cooling gel mask.\n"
            "By 2020 the clinic had treated 1,200 patients with it, according to its report.\n"
            "The first study was published on March 3, 2020 and followed 40 patients for 6 months.\n")
    doc = read(tmp_path, "a.txt", text)
    assert doc.author is None and doc.published is None
    assert lines_of(doc) == text.strip().split("\n")


def test_markdown_front_matter_and_seed_article(tmp_path):
    doc = read(tmp_path, "a.md", "---\ntitle: Frostleaf Mask\nauthor: Jane Doe\ndate: 2023-03-12\n"
                                 "url: https://example-clinic.com/frostleaf\n---\n# Frostleaf Mask\n\nA cooling gel mask.\n")
    assert (doc.author, doc.published, doc.site, doc.original_url) == (
        "Jane Doe", "2023-03-12", "example-clinic.com", "https://example-clinic.com/frostleaf")
    seed = read_document(SEED_CORPUS / "prp-therapy-vs-mesotherapy.txt", SEED_CORPUS)
    assert (seed.author, seed.published) == ("PRP Kits", "2021-01-14")
    assert "PRP Kits" not in seed.text.split("\n")[1]


def test_pdf_document_info_author_and_date(tmp_path):
    import io

    from pypdf import PdfReader, PdfWriter

    from tests.fixtures_core import make_pdf

    w = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([["The frostleaf mask is a cooling gel mask."]]))))
    w.add_metadata({"/Author": "Jane Doe", "/CreationDate": "D:20230312083000Z"})
    buf = io.BytesIO()
    w.write(buf)
    doc = read(tmp_path, "a.pdf", buf.getvalue())
    assert (doc.author, doc.published) == ("Jane Doe", "2023-03-12")


def test_sidecar_overrides_and_changes_the_content_hash(tmp_path):
    from assistant.citation import sidecar_path
    from assistant.documents import file_sha256

    write_corpus(tmp_path, {"a.txt": "Frostleaf Mask Guide\nBy Jane Doe\nThe frostleaf mask is a cooling gel mask.\n"})
    before = file_sha256(tmp_path / "a.txt")
    sidecar_path(tmp_path / "a.txt").write_text(
        '{"original_url": "https://example-clinic.com/a", "author": "J. Doe", "published": "12 March 2023"}')
    doc = read_document(tmp_path / "a.txt", tmp_path)
    assert (doc.author, doc.published, doc.site, doc.original_url) == (
        "J. Doe", "2023-03-12", "example-clinic.com", "https://example-clinic.com/a")
    assert file_sha256(tmp_path / "a.txt") == doc.sha256 != before
    assert [p.name for p in discover(tmp_path)] == ["a.txt"]  # the sidecar is never an article
    sidecar_path(tmp_path / "a.txt").write_text("{not json")
    assert read_document(tmp_path / "a.txt", tmp_path).author == "Jane Doe"  # a broken sidecar is ignored


def test_the_reindex_scan_finds_what_discover_finds(tmp_path):
    """reindex._discover (string paths: a million files) is documents.discover, ids included."""
    from assistant.documents import discover, doc_id_for
    from assistant.reindex import _discover, _relative_posix

    for rel in ("a.md", "b.TXT", "sub/c.md", "sub/deeper/d.txt", ".hidden/e.md", "_drafts/f.md", "sub/.g.md",
                "sub/_h.md", "x.bin", "sub/i.tar.md", "Z.md", "é/j.md"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("Title\nBody.\n")
    (tmp_path / "dir.md").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    (outside / "inner").mkdir(parents=True, exist_ok=True)
    (outside / "k.md").write_text("Title\nBody.\n")
    (outside / "inner" / "l.md").write_text("Title\nBody.\n")
    (tmp_path / "linked.md").symlink_to(outside / "k.md")  # a symlinked file is found
    (tmp_path / "linkdir").symlink_to(outside / "inner", target_is_directory=True)  # a symlinked folder is not entered
    (tmp_path / "broken.md").symlink_to(outside / "missing.md")
    assert _discover(tmp_path) == discover(tmp_path)
    assert _discover(str(tmp_path) + "/") == discover(tmp_path)
    assert len(discover(tmp_path)) == 8
    for f in discover(tmp_path):
        rel = _relative_posix(f, tmp_path)
        assert (rel[: len(rel) - len(f.suffix)] if f.suffix else rel) == doc_id_for(f, tmp_path)
