"""Fixtures and helpers for the core's tests (documents, chunking, index, extraction, CLI, eval).

Use from tests/conftest.py with `pytest_plugins = [..., "tests.fixtures_core"]` (or `-p tests.fixtures_core`).

Everything is real: the real model (loaded once per process by assistant.embedder.get_embedder),
real FAISS, real BM25. Corpora are small and written by the fixtures into temporary folders;
indexes that several tests read are built once per session. Test modules may import the
plain helpers and constants below (never the fixture functions: that would build them twice).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SEED_CORPUS = REPO / "corpus"
DATA = Path(__file__).resolve().parent / "data"


# --- helpers ---------------------------------------------------------------------------------

def write_corpus(folder: Path, files: dict[str, str | bytes]) -> Path:
    """Write {relative path: text or bytes} under `folder` (created); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
    return folder


def copy_seed_corpus(folder: Path) -> Path:
    """A copy of the repository's corpus/ (the seed articles)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for f in sorted(SEED_CORPUS.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            shutil.copy(f, folder / f.name)
    return folder


def make_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A minimal valid PDF, written by hand (pypdf cannot typeset text): each page some lines of
    Helvetica, an optional info title, and a cross-reference table with exact byte offsets."""
    objs: list[bytes | None] = []

    def add(body: bytes | None) -> int:
        objs.append(body)
        return len(objs)

    catalog, pages_id = add(None), add(None)
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    kids = []
    for lines in pages:
        ops = [b"BT /F1 11 Tf 72 720 Td 14 TL"]
        for line in lines:
            esc = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)").encode("latin-1")
            ops.append(b"(" + esc + b") Tj T*")
        ops.append(b"ET")
        stream = b"\n".join(ops)
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        kids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] "
                        b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>" % (pages_id, font, content)))
    objs[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id
    objs[pages_id - 1] = b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids) + b"] /Count %d >>" % len(kids)
    esc_title = (title or "").replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    info = add(b"<< /Title (" + esc_title.encode("latin-1") + b") >>") if title else None
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root %d 0 R" % (len(objs) + 1, catalog)
    if info:
        out += b" /Info %d 0 R" % info
    out += b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def minimal_pdf(lines: list[str], title: str | None = None) -> bytes:
    """A valid one-page PDF whose content shows `lines` in Helvetica, one per line."""
    return make_pdf([lines], title)


# --- a small corpus: three invented articles, two sharing a copied paragraph -------------------

# The copied paragraph: word for word in both mask articles, with different text around it
# (and, in cooling-masks, glued to the end of another paragraph, so the chunk boundaries differ).
SHARED_PARAGRAPH = (
    "The frostleaf mask should stay on the skin for exactly twelve minutes before it is rinsed off. "
    "Rinsing with cool water closes the pores and keeps the kaolin clay from drying out the skin. "
    "A thin, even layer works better than a thick one, because a thin layer dries evenly and does not crack. "
    "After rinsing, pat the face dry with a soft towel and apply a light moisturiser while the skin is still slightly damp."
)
SHARED_ANSWER = "exactly twelve minutes"
SHARED_QUESTION = "How long should the frostleaf mask stay on the skin?"

FROSTLEAF_ID = "frostleaf-basics"
FROSTLEAF = f"""Frostleaf Mask Basics
The frostleaf mask is made from crushed frostleaf petals mixed with white kaolin clay and a little aloe vera gel. The petals are harvested in late autumn, dried slowly in the shade and ground into a fine green powder.
It was first sold in small spa shops in northern Norway and has since become a popular home treatment across Europe. Today several brands sell ready-mixed versions in jars and single-use sachets.
How to Use It
{SHARED_PARAGRAPH}
Results
Most people notice calmer, less oily skin after about four weeks of weekly use. People with very dry skin should use it every other week and always follow it with a rich cream.
The mask keeps for about six months once opened if the jar is closed tightly and stored away from heat and sunlight.
"""

COOLING_ID = "guides/cooling-masks"
COOLING = f"""Cooling Clay Masks Compared
Cooling clay masks are popular in summer because they calm redness and soak up excess oil from the skin. They are cheap, easy to use at home and suit most skin types except very dry skin.
Green clay masks are the strongest of the group. They draw out oil quickly, but they can leave the skin feeling tight, so they are best for oily skin.
Among them, the frostleaf mask is the gentlest, and it is the one most dermatologists suggest for beginners. {SHARED_PARAGRAPH}
Mint masks add menthol for an extra cooling feeling. They can tingle strongly on sensitive skin and should not be used more than once a week.
Whichever mask you choose, test it on a small patch of skin on the inside of your arm a day before the first full use.
"""

GLOWBERRY_ID = "glowberry-peel"
GLOWBERRY = """Glowberry Peel Guide
The glowberry peel is a gentle fruit-acid peel used to brighten dull skin. It is made from fermented glowberry juice and a small amount of lactic acid.
A glowberry peel session takes about twenty minutes and is repeated every four weeks. Most people need three to five sessions before the skin looks clearly brighter.
Mild tingling during the glowberry peel is normal and fades within an hour. Redness that lasts longer than two days should be shown to a doctor.
"""

SMALL_CORPUS = {
    f"{FROSTLEAF_ID}.txt": FROSTLEAF,
    f"{COOLING_ID}.txt": COOLING,
    f"{GLOWBERRY_ID}.txt": GLOWBERRY,
}


def open_assistant(corpus: Path, index: Path, build: bool = True):
    """A real Assistant over `corpus` with its index in `index` (built when `build`)."""
    from assistant import Assistant, Settings

    a = Assistant.open(settings=Settings(corpus_dir=Path(corpus), index_dir=Path(index)), require_index=False)
    if build:
        a.reindex()
    return a


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def embedder():
    """The process-wide model (loaded once)."""
    from assistant.embedder import get_embedder

    return get_embedder()


@pytest.fixture(scope="session")
def seed_assistant(tmp_path_factory, embedder):
    """The real Assistant over a copy of the seed corpus (corpus/), index built once."""
    root = tmp_path_factory.mktemp("seed")
    corpus = copy_seed_corpus(root / "corpus")
    return open_assistant(corpus, root / "index")


@pytest.fixture(scope="session")
def small_assistant(tmp_path_factory, embedder):
    """The real Assistant over SMALL_CORPUS (two articles share a copied paragraph)."""
    root = tmp_path_factory.mktemp("small")
    corpus = write_corpus(root / "corpus", SMALL_CORPUS)
    return open_assistant(corpus, root / "index")


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """A fresh, writable copy of SMALL_CORPUS in tmp_path/corpus."""
    return write_corpus(tmp_path / "corpus", SMALL_CORPUS)
