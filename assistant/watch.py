"""`assistant serve --watch`: reindex when files under the corpus folder change.

A background thread watches the corpus folder (watchfiles: inotify on Linux, polling as a
fallback). Changes are debounced: the thread waits until the folder has been quiet for
`quiet_ms` (a file being copied in arrives as many events), at most `max_wait_ms`, then
runs one reindex for the whole batch. Changes that arrive during a reindex make another
one. Servers pick the new index up by themselves (they poll index/CURRENT), so this works
with any number of workers: the watcher runs once, in the process that starts them.

Relevant changes: article files (.txt, .md, .html, .pdf...), `glossary.toml`, and folders
being removed. Ignored: hidden files and folders (also how uploads stage their temp files),
names starting with '_', editor and download temp files, and the index folder itself.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

from .config import Settings
from .documents import SUPPORTED_SUFFIXES
from .errors import ReindexBusyError

log = logging.getLogger(__name__)

GLOSSARY_NAME = "glossary.toml"  # subjects.GLOSSARY_NAME; not imported to keep this module light
_TEMP = re.compile(r"(~|\.(swp|swx|swo|tmp|temp|part|partial|crdownload|download|bak|orig)|#)$", re.I)


def relevant(path: str | Path, corpus_dir: Path, index_dir: Path | None = None) -> bool:
    """Whether a changed path under the corpus folder calls for a reindex."""
    p = Path(path)
    try:
        rel = p.resolve().relative_to(Path(corpus_dir).resolve()) if p.is_absolute() else p
    except ValueError:
        try:
            rel = p.relative_to(corpus_dir)
        except ValueError:
            return False
    if index_dir is not None:
        try:
            p.resolve().relative_to(Path(index_dir).resolve())
            return False
        except ValueError:
            pass
    parts = rel.parts
    if not parts or any(part.startswith((".", "_")) for part in parts):
        return False
    name = parts[-1]
    if _TEMP.search(name) or name.startswith("#"):
        return False
    suffix = Path(name).suffix.lower()
    if suffix in SUPPORTED_SUFFIXES:
        return True
    if name == GLOSSARY_NAME and len(parts) == 1:
        return True
    # a folder (removed or renamed: its files may produce no events of their own)
    return suffix == "" and (not p.exists() or p.is_dir())


class Watcher:
    """The watching thread. `start()`, `stop()`; `reindexes` counts the reindexes it ran."""

    def __init__(self, settings: Settings, quiet_ms: int = 700, max_wait_ms: int = 5000,
                 embedder=None, on_reindex=None, initial: bool = True) -> None:
        self.settings = settings
        self.corpus_dir = Path(settings.corpus_dir)
        self.index_dir = Path(settings.index_dir)
        self.quiet_ms = quiet_ms
        self.max_wait_ms = max_wait_ms
        self.initial = initial
        self.on_reindex = on_reindex  # called with each ReindexReport (tests, logging)
        self._embedder = embedder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()  # set once the folder is being watched
        self.reindexes = 0
        self.last_report = None
        self.last_error: Exception | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "Watcher":
        self._thread = threading.Thread(target=self._run, name="corpus-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> "Watcher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def embedder(self):
        if self._embedder is None:
            from .embedder import get_embedder

            self._embedder = get_embedder()
        return self._embedder

    # --- the loop ----------------------------------------------------------------------------

    def _folder_id(self) -> int | None:
        try:
            st = self.corpus_dir.stat()
        except OSError:
            return None
        return st.st_ino if self.corpus_dir.is_dir() else None

    def _filter(self, change, path: str) -> bool:
        return relevant(path, self.corpus_dir, self.index_dir)

    def _run(self) -> None:
        import watchfiles

        catch_up = self.initial  # what changed while nobody was watching
        while not self._stop.is_set():
            ino = self._folder_id()
            if ino is None:  # no folder (yet, or any more): wait for it, never create it
                self._stop.wait(1.0)
                catch_up = True
                continue
            try:
                # the first batch comes after at most rust_timeout: by then the folder is being
                # watched, so the catch-up reindex can't miss a file written meanwhile
                for changes in watchfiles.watch(
                    self.corpus_dir,
                    watch_filter=self._filter,
                    debounce=self.max_wait_ms,
                    step=self.quiet_ms,
                    stop_event=self._stop,
                    rust_timeout=500,
                    yield_on_timeout=True,
                    raise_interrupt=False,
                ):
                    if self._stop.is_set():
                        return
                    if self._folder_id() != ino:  # the folder was removed or replaced: watch it anew
                        log.warning("the corpus folder %s was removed or replaced; watching it again", self.corpus_dir)
                        catch_up = True
                        break
                    if catch_up:
                        catch_up = False
                        self._reindex_until_done("start-up")
                    elif changes:
                        names = sorted({Path(p).name for _, p in changes})
                        log.info("corpus changed (%s); reindexing", ", ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
                        self._reindex_until_done(f"{len(changes)} change(s)")
                    self.ready.set()
            except Exception as e:  # the folder went away, the watcher broke: wait and watch again
                if self._stop.is_set():
                    return
                if not isinstance(self.last_error, type(e)):
                    log.warning("watching %s failed (%s); retrying every 2s", self.corpus_dir, e)
                self.last_error = e
                catch_up = True  # never recreate a vanished folder: an empty one would empty the index
                self._stop.wait(2.0)

    def _reindex_until_done(self, why: str) -> None:
        """One reindex; if another holds the lock, wait for it and run ours after (our changes
        may have come after it started). Errors are logged, never fatal to the watcher."""
        from .reindex import reindex

        while not self._stop.is_set():
            try:
                report = reindex(self.settings, self.embedder, lock_timeout=5.0)
            except ReindexBusyError:
                continue
            except Exception as e:
                log.exception("reindex after %s failed; the previous index keeps serving", why)
                self.last_error = e
                return
            self.reindexes += 1
            self.last_report = report
            if report.touched or report.skipped:
                log.warning(
                    "reindexed: added %s, changed %s, removed %s%s", report.added or "none", report.changed or "none",
                    report.removed or "none", f"; unreadable: {report.skipped}" if report.skipped else "",
                )
            if self.on_reindex is not None:
                try:
                    self.on_reindex(report)
                except Exception:
                    log.exception("on_reindex callback failed")
            return


def start_watcher(settings: Settings, **kw) -> Watcher:
    """Start watching settings.corpus_dir in a daemon thread (used by `assistant serve --watch`).

    The model is loaded now, so the first change is reindexed quickly (and, with one worker,
    the server shares it).
    """
    w = Watcher(settings, **kw)
    w.embedder  # noqa: B018 - load the model before serving starts
    return w.start()
