"""The command line: reindex, ask, eval, serve, add. Thin: each command is a call into Assistant."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .config import Settings
from .errors import AssistantError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Ask questions of a folder of articles; answers are passages of the articles, cited.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

CorpusOpt = Annotated[Optional[Path], typer.Option("--corpus", help="Corpus folder [env ASSISTANT_CORPUS_DIR, default ./corpus]")]
IndexOpt = Annotated[Optional[Path], typer.Option("--index", help="Index folder [env ASSISTANT_INDEX_DIR, default ./index]")]
DatabaseOpt = Annotated[Optional[str], typer.Option(
    "--database", metavar="URL",
    help="Keep the index in PostgreSQL with pgvector (postgresql://user:pass@host/db) instead of the index folder "
         "[env ASSISTANT_DATABASE_URL]")]


def _fail(message: str) -> None:
    typer.secho(f"Error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _settings(corpus: Path | None, index: Path | None, database: str | None = None) -> Settings:
    if database is not None and not database.startswith(("postgresql://", "postgres://")):
        _fail(f"--database must be a PostgreSQL URL (postgresql://user:password@host:5432/dbname), not {database!r}")
    return Settings.from_env(corpus_dir=corpus, index_dir=index, database_url=database)


def _open(corpus: Path | None, index: Path | None, require_index: bool = True, database: str | None = None):
    from .assistant import Assistant

    return Assistant.open(settings=_settings(corpus, index, database), require_index=require_index)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("faiss", "bm25s", "sentence_transformers", "httpx", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for noisy in ("torch", "onnxscript", "onnx_ir"):  # the one-time ONNX export's chatter
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.ERROR)
    from .config import encoder_name, encoder_threads
    from .index import check_env

    try:  # ASSISTANT_ENCODER / ASSISTANT_THREADS / the vector settings: a typo is said before any work
        encoder_threads(encoder_name())
        check_env()
    except AssistantError as e:
        _fail(str(e))


@app.command()
def reindex(corpus: CorpusOpt = None, index: IndexOpt = None, database: DatabaseOpt = None) -> None:
    """Build or update the index: only new and changed articles are embedded."""
    s = _settings(corpus, index, database)
    if not s.corpus_dir.is_dir():
        _fail(f"corpus folder {s.corpus_dir}/ does not exist")
    try:
        a = _open(corpus, index, require_index=False, database=database)
        report = a.reindex(progress=sys.stderr.isatty())
    except AssistantError as e:
        _fail(str(e))
    typer.echo(
        f"{report.articles} articles, {report.passages} passages "
        f"(added {len(report.added)}, changed {len(report.changed)}, removed {len(report.removed)}, "
        f"unchanged {report.unchanged}; embedded {report.embedded_passages} passages in {report.seconds:.1f}s)"
    )
    for name, items in (("added", report.added), ("changed", report.changed), ("removed", report.removed)):
        for doc_id in items:
            typer.echo(f"  {name}: {doc_id}")
    for path in report.skipped:
        typer.secho(f"  skipped (unreadable): {path}", fg=typer.colors.YELLOW)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question.")],
    history: Annotated[Optional[list[str]], typer.Option("--history", help="An earlier question of the conversation (repeat, oldest first).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="How many passages (1-10).")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer JSON.")] = False,
    corpus: CorpusOpt = None,
    index: IndexOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Ask a question; prints the answering passages with the answering sentence marked."""
    if not 1 <= top_k <= 10:
        _fail("--top-k must be between 1 and 10")
    try:
        a = _open(corpus, index, database=database)
        res = a.ask(question, history or [], top_k=top_k)
    except AssistantError as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(res.model_dump(), indent=2, ensure_ascii=False))
        return
    typer.echo(render_text(res))


def render_text(res) -> str:
    """A readable answer: passages with »marked« answering sentences and [title] citations."""
    lines = []
    if res.resolved_question != res.question:
        lines.append(f"(searched for: {res.resolved_question})")
    if res.abstained:
        lines.append(res.message or "The articles do not answer this question.")
        return "\n".join(lines)
    for i, ans in enumerate(res.answers, 1):
        text, out, pos = ans.text, [], 0
        for h in ans.highlight:
            out += [text[pos : h.start], "»", text[h.start : h.end], "«"]
            pos = h.end
        out.append(text[pos:])
        about = f" ({ans.about})" if ans.about else ""
        lines.append(f"{i}.{about} " + "".join(out).replace("\n", "\n   "))
        src = ans.source
        byline = " · ".join(x for x in (getattr(src, "author", None), getattr(src, "published", None),
                                         getattr(src, "site", None)) if x)
        cite = f"   [{src.title}{f' — {byline}' if byline else ''}] {src.path}:{src.start}-{src.end}"
        if ans.also_in:
            cite += "; also in " + ", ".join(f"[{x.title}]" for x in ans.also_in)
        lines.append(cite)
        lines.append("")
    return "\n".join(lines).rstrip()


@app.command("eval")
def eval_cmd(
    file: Annotated[Optional[Path], typer.Argument(help="A question set in the dev.jsonl format.")] = None,
    squad: Annotated[Optional[Path], typer.Option("--squad", help="A folder with corpus.jsonl and questions.jsonl.")] = None,
    mtrag: Annotated[Optional[Path], typer.Option("--mtrag", help="A folder with corpus.jsonl and queries.jsonl (MTRAG layout).")] = None,
    mode: Annotated[str, typer.Option("--mode", help="conversation | alone | concat (question sets, --mtrag; --mtrag also 'all'); hybrid | dense | bm25 (--squad).")] = "",
    no_abstain: Annotated[bool, typer.Option("--no-abstain", help="--squad, --mtrag: never abstain (pure retrieval figures).")] = False,
    keep_index: Annotated[Optional[Path], typer.Option("--keep-index", help="--squad, --mtrag: build (or reuse) the index in this folder instead of a throw-away one.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    corpus: CorpusOpt = None,
    index: IndexOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Measure quality: hit@1, hit@3, MRR, abstention; or answer-in-top-k on a SQuAD-style folder.

    With --database, --squad and --mtrag build their throw-away library in a schema of its own, dropped afterwards."""
    from . import evaluation as ev

    if sum(x is not None for x in (file, squad, mtrag)) != 1:
        _fail("give either a question file or --squad DIR (or --mtrag DIR)")
    try:
        if squad is not None:
            mode = mode or "hybrid"
            r = ev.evaluate_squad(squad, settings=_settings(corpus, index, database), index_dir=keep_index, mode=mode,
                                  abstain=not no_abstain, progress=sys.stderr.isatty())
            fig = {"mode": mode, "questions": r.questions, "top1": round(r.top1, 3), "top3": round(r.top3, 3),
                   "top5": round(r.top5, 3), "mrr": round(r.mrr, 3), "abstained": round(r.abstained, 3),
                   "highlight": round(r.highlight, 3), "passages": r.passages,
                   "median_passage_words": r.median_passage_words}
            if as_json:
                typer.echo(json.dumps(fig))
            else:
                typer.echo(f"{squad} ({mode}): {r.questions} questions over {r.passages} passages "
                           f"(median {r.median_passage_words:g} words)")
                typer.echo(f"  answer in top-1 {r.top1:.3f}  top-3 {r.top3:.3f}  top-5 {r.top5:.3f}  "
                           f"MRR {r.mrr:.3f}  abstained {r.abstained:.3f}")
                typer.echo(f"  top answer's highlighted sentence(s) hold the answer: {r.highlight:.3f}")
            return
        if mtrag is not None:
            modes = ("alone", "concat", "conversation") if mode == "all" else (mode or "conversation",)
            reports = ev.evaluate_mtrag(mtrag, settings=_settings(corpus, index, database), index_dir=keep_index, modes=modes,
                                        abstain=not no_abstain, progress=sys.stderr.isatty())
            figs = [{"mode": r.mode, "conversations": r.conversations, "with_gold": r.with_gold,
                     "top1": round(r.top1, 3), "top5": round(r.top5, 3), "followups": r.followups,
                     "followup_top5": round(r.followup_top5, 3),
                     "answerable_abstained": round(r.answerable_abstained, 3),
                     "unanswerable_abstained": round(r.unanswerable_abstained, 3)} for r in reports]
            if as_json:
                typer.echo(json.dumps(figs if len(figs) > 1 else figs[0]))
                return
            for f in figs:
                typer.echo(f"{mtrag} ({f['mode']}): {f['conversations']} conversations, {f['with_gold']} last turns "
                           f"with a gold passage ({f['followups']} follow-ups)")
                typer.echo(f"  gold in top-1 {f['top1']:.3f}  top-5 {f['top5']:.3f}  follow-ups top-5 "
                           f"{f['followup_top5']:.3f}")
                typer.echo(f"  abstained: ANSWERABLE {f['answerable_abstained']:.3f}  UNANSWERABLE "
                           f"{f['unanswerable_abstained']:.3f}")
            return
        if not file.is_file():
            _fail(f"{file} is not a file")
        cases = ev.load_cases(file)
        a = _open(corpus, index, database=database)
        report = ev.evaluate_cases(a, cases, mode=mode or "conversation")
    except AssistantError as e:
        _fail(str(e))
    s = report.summary()
    if as_json:
        typer.echo(json.dumps(s))
        return
    typer.echo(f"{file}: {s['turns']} turns ({s['answerable']} answerable), mode {mode or 'conversation'}")
    typer.echo(f"  hit@1 {s['hit@1']:.3f}  hit@3 {s['hit@3']:.3f}  MRR {s['mrr']:.3f}")
    typer.echo(f"  single-turn hit@1 {s['single_turn_hit@1']:.3f}  hit@3 {s['single_turn_hit@3']:.3f}  "
               f"follow-up hit@1 {s['followup_hit@1']:.3f}")
    typer.echo(f"  abstention precision {s['abstain_precision']:.3f}  recall {s['abstain_recall']:.3f}  "
               f"answerable turns that abstained: {s['answerable_abstained']}")
    misses = report.misses()
    if misses:
        typer.echo(f"misses ({len(misses)}):")
    for t in misses:
        want = "abstain" if t.expect_abstain else "an answer"
        got = "abstained" if t.abstained else f"rank {t.rank or '-'}"
        typer.echo(f"  [{t.case}#{t.turn + 1}] {t.question!r} (wanted {want}, got {got}; searched {t.resolved!r})")
        for g in t.got[:2]:
            typer.echo(f"      got: {g[:110].replace(chr(10), ' ')}…")


@app.command()
def add(
    source: Annotated[str, typer.Argument(help="An article file (.txt, .md, .html, .pdf) or the URL of a web page.", show_default=False)],
    name: Annotated[Optional[str], typer.Option("--name", help="File name to save it as in the corpus folder.")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite a different file of the same name.")] = False,
    corpus: CorpusOpt = None,
    index: IndexOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Add an article: copy a file into the corpus folder, or fetch a web page (saved as .html); then reindex.

    With a database, the article's original file is stored in the database's library instead (every
    replica answers it); the corpus folder is not touched."""
    from . import sources

    s = _settings(corpus, index, database)
    if s.database_url:
        _add_to_database(s, source, name, replace)
        return
    try:
        if s.corpus_dir.exists() and not s.corpus_dir.is_dir():
            _fail(f"{s.corpus_dir} is not a folder")
        s.corpus_dir.mkdir(parents=True, exist_ok=True)
        added = sources.add(s.corpus_dir, source, name=name, replace=replace)
    except sources.DocumentExistsError as e:
        _fail(f"{e} (--replace overwrites it, --name saves it under another name)")
    except AssistantError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"could not write to {s.corpus_dir}/ ({e.strerror or e})")
    rel = added.path.relative_to(s.corpus_dir).as_posix()
    said = {"added": "saved as", "replaced": "replaced", "unchanged": "already in the corpus as"}[added.status]
    typer.echo(f"{said} {s.corpus_dir}/{rel} (doc_id {added.doc_id!r}, title {added.title!r})")
    try:
        a = _open(corpus, index, require_index=False)
        report = a.reindex(progress=sys.stderr.isatty())
    except AssistantError as e:
        _fail(f"{e} The file was saved; run `assistant reindex` to index it.")
    if added.doc_id not in {d.doc_id for d in a.documents()}:
        _fail(f"{rel} was saved but could not be indexed; see `assistant reindex --verbose`")
    typer.echo(
        f"reindexed: {report.articles} articles, {report.passages} passages "
        f"(added {len(report.added)}, changed {len(report.changed)}, removed {len(report.removed)}; "
        f"embedded {report.embedded_passages} passages in {report.seconds:.1f}s). {added.doc_id!r} is answerable now."
    )


def _add_to_database(s: Settings, source: str, name: str | None, replace: bool) -> None:
    """`assistant add` in database mode: the same checks (in a throw-away folder), then an upload."""
    import tempfile

    from . import sources
    from .assistant import Assistant

    try:
        with tempfile.TemporaryDirectory(prefix="assistant-add-") as tmp:
            checked = sources.add(Path(tmp), source, name=name, replace=False)
            filename, data = checked.path.name, checked.path.read_bytes()
        a = Assistant.open(settings=s, require_index=False)
        added, report = a.upload(filename, data, replace=replace)
    except sources.DocumentExistsError as e:
        _fail(f"{e} (--replace overwrites it, --name saves it under another name)")
    except AssistantError as e:
        _fail(str(e))
    said = {"added": "stored", "replaced": "replaced", "unchanged": "already in the library as"}[added.status]
    from .pgstore import redact

    typer.echo(f"{said} {filename} in {redact(s.database_url)} (doc_id {added.doc_id!r}, title {added.title!r})")
    typer.echo(
        f"reindexed: {report.articles} articles, {report.passages} passages "
        f"(added {len(report.added)}, changed {len(report.changed)}, removed {len(report.removed)}; "
        f"embedded {report.embedded_passages} passages in {report.seconds:.1f}s). {added.doc_id!r} is answerable now."
    )


@app.command("export-eval")
def export_eval(
    file: Annotated[Path, typer.Argument(help="Where to write the question set (dev.jsonl format).", show_default=False)],
    index: IndexOpt = None,
) -> None:
    """Write readers' helpful answers and the questions you marked unanswerable as a question set for `assistant eval`."""
    from .owner_log import DB_ENV, OwnerLog, OwnerLogError

    s = _settings(None, index)
    owner = OwnerLog.from_env(s.index_dir)
    if not owner.db_path.is_file():
        _fail(f"no question log at {owner.db_path} (it is written by `assistant serve`; {DB_ENV} names another file)")
    if file.exists() and file.is_dir():
        _fail(f"{file} is a folder; give a file name like questions.jsonl")
    if not file.parent.is_dir():
        _fail(f"folder {file.parent}/ does not exist")
    try:
        answers, abstains = owner.export_eval(file)
    except (OwnerLogError, OSError) as e:
        _fail(f"could not export: {e}")
    finally:
        owner.close()
    typer.echo(f"wrote {answers + abstains} cases to {file}: {answers} helpful answers (expect_any), "
               f"{abstains} questions marked unanswerable (expect_abstain). Run `assistant eval {file}`.")


# Chosen by measurement on a 2-core machine (README, "Serving speed"): one process per core, each
# encoding on one thread, spends the least CPU per answer and keeps both cores busy.
SERVE_WORKERS = 2


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (each loads the model and the index).")] = SERVE_WORKERS,
    threads: Annotated[Optional[int], typer.Option(help="Threads one encode may use in a worker [env ASSISTANT_THREADS; default cores / workers].")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Reindex when files in the corpus folder change.")] = False,
    corpus: CorpusOpt = None,
    index: IndexOpt = None,
    database: DatabaseOpt = None,
) -> None:
    """Serve the chat page and the API (http://HOST:PORT)."""
    import os

    import uvicorn

    if workers < 1:
        _fail("--workers must be at least 1")
    if threads is not None:
        if threads < 1:
            _fail("--threads must be at least 1")
        os.environ["ASSISTANT_THREADS"] = str(threads)  # read by every worker when it loads the model
    elif not os.environ.get("ASSISTANT_THREADS", "").strip():
        # the cores shared out among the workers: each request encodes on its worker's share
        os.environ["ASSISTANT_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    s = _settings(corpus, index, database)
    if s.database_url and watch:  # refused before anything is set in the environment
        _fail("--watch watches one machine's corpus folder; with --database, run `assistant reindex --database URL` "
              "where the folder is (or upload through the admin API)")
    os.environ["ASSISTANT_CORPUS_DIR"] = str(s.corpus_dir)
    os.environ["ASSISTANT_INDEX_DIR"] = str(s.index_dir)
    if s.database_url:
        os.environ["ASSISTANT_DATABASE_URL"] = s.database_url
    if watch:
        from .watch import start_watcher

        if not s.corpus_dir.is_dir():
            _fail(f"corpus folder {s.corpus_dir}/ does not exist")
        start_watcher(s)
        typer.echo(f"Watching {s.corpus_dir}/: added, changed and removed articles are reindexed within seconds")
    if s.database_url:
        from .pgstore import redact

        typer.echo(f"Serving on http://{host}:{port}  (index in {redact(s.database_url)}, schema {s.database_schema})")
    else:
        typer.echo(f"Serving on http://{host}:{port}  (corpus {s.corpus_dir}/, index {s.index_dir}/)")
    if workers > 1 and not watch:
        _fork_workers_from_here()
    uvicorn.run("assistant.app:app_factory", factory=True, host=host, port=port, workers=workers, log_level="warning")


def _fork_workers_from_here() -> None:
    """Start uvicorn's workers by fork, after importing the app here, instead of by spawn.

    Spawned workers each import the app and its libraries again (about 1.5 s, all workers at
    once on the same cores); forked ones inherit them and only load the model and the index.
    Nothing that starts threads (a model, an index, the --watch thread) exists before the
    fork. uvicorn has no option for this: it makes its workers with the start method in
    `uvicorn._subprocess.spawn`, which is replaced here when it exists and fork is available."""
    import multiprocessing

    try:
        import uvicorn._subprocess as sub
    except ImportError:
        return
    if "fork" not in multiprocessing.get_all_start_methods() or not hasattr(sub, "spawn"):
        return
    import bm25s  # noqa: F401  (imports only: no threads, no files opened)
    import faiss  # noqa: F401
    import onnxruntime  # noqa: F401
    import tokenizers  # noqa: F401

    import assistant.app  # noqa: F401

    sub.spawn = multiprocessing.get_context("fork")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
