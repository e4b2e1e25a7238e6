"""The front door: one `KnowledgeBase` that the CLI, the server and the adapters all stand on.

    from kb import KnowledgeBase

    kb = KnowledgeBase.open(".kb")
    kb.ingest(["corpora"])
    for hit in kb.search("Kessel Glass", k=3):
        print(hit.source, hit.score)
    print(kb.ask("When was the Kessel Glass stolen?").answer)
    print(kb.npc("Sefa").ask("Why was the Orrin Light dimmed?").answer)

A KnowledgeBase is safe to share between threads. It opens its store on first
use and keeps one corpus (a snapshot of the BM25 postings on disk, read per
query) per store generation: when an ingest moves the generation, a thread of
its own brings the postings up to date (kb/postings.py: only the changed files),
opens a new snapshot (and, after another process's write, the store afresh)
while searches keep answering from the previous one; the search that noticed
waits RELOAD_WAIT_S for it.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from ingest.cards import Card
from ingest.meta import meta_key
from ingest.tokens import encoding
from kb.answer import Answer, respond
from kb.catch_up import caught_up
from kb.config import RetrievalConfig, Settings
from kb.conversation import bounded_history, retrieval_query
from kb.errors import Busy, KBError
from kb.gamestate import card_visibility, visibility
from kb.memory import return_freed_memory
from kb.npc import ask_npc, cards, find_card, voice_lines
from kb.postings import DAMAGE, Postings, index_path
from kb.retrieve import Corpus, Hit, search
from kb.store import Store
from kb.store.compact import Compaction, compact, compact_suggestion, replaced_vectors
from kb.sync import IngestReport, forget, ingest, stored_limit_warnings

GENERATION_POLL_S = 0.1  # how long a read of the store's generation is trusted (one query of the store)
# The longest the generation goes unread while the store's files look unchanged: a safety net, should a write
# ever leave the files' signature as it was. (Suspected once, a long-lived chromadb client reading behind
# another process's write was not seen: 40 of 40 first reads after an upsert were current.)
GENERATION_READ_S = 1.0
RELOAD_RETRY_S = 1.0  # after a reload failed, how long the corpus loaded before answers until the next try
# How long a search that finds the store changed waits for the new canon before it answers from the one loaded
# before: a small store's reload is done by then; a large one's goes on behind (at a million chunks, opening
# the store afresh loads its vector index whole, seconds, and a server's every search waited on it).
RELOAD_WAIT_S = 0.5
# After a reload replaced the open store, when to collect it: chromadb's objects hold one another in cycles, so
# its vector index (2.7 GB at a million chunks) waited for a full collection; by then searches begun on it ended.
FREE_REPLACED_S = 2.0
# Up to this many chunks, a reload that opens the store afresh loads its vector index before searches go to it,
# beside the one they use (about 2.6 KB a chunk). Above, the replaced index is let go first and searches wait for
# the load: at a million prose chunks a server holding both peaked at 5.3-5.9 GB; letting go first, 3.4-3.9 GB,
# and its searches waited 4.3-5.0 s once (docs/scale.md).
LOAD_BESIDE_MAX_CHUNKS = 250_000

log = logging.getLogger("kb")


def _reading_postings(read: Callable[[], object], name: str) -> threading.Thread:
    """A thread, started, that reads postings before the questions that need them."""

    def run():
        try:
            read()
        except DAMAGE as exc:  # found by the first search that reads the damaged rows, as without this
            log.warning("read no postings ahead: %s: %s", type(exc).__name__, exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


class _GenerationRead(NamedTuple):
    """The store's generation as last read, and when (time.monotonic())."""

    generation: int
    checked: float  # last compared with the store's files
    signature: tuple | None  # the store's disk signature then (Store.disk_signature)
    read: float  # last read from chromadb
    moves_here: int  # the generation moves this process had made then (Store.moves_here)


@dataclass(frozen=True)
class _Loaded:
    generation: int
    corpus: Corpus


@dataclass(frozen=True)
class _Cards:
    generation: int
    cards: dict


class _Shared:
    """What views of one knowledge base share: the open store, the loaded corpus, the locks."""

    def __init__(self):
        self.store: Store | None = None
        self.loaded: _Loaded | None = None
        self.retry_at = 0.0  # time.monotonic() before which a failed reload is not tried again
        self.cards: _Cards | None = None
        self.generation_read: _GenerationRead | None = None
        self.postings: Postings | None = None
        self.reloading: threading.Event | None = None  # set when the reload running behind searches ends
        self.index_in = threading.Event()  # cleared while a reload lets a vector index go and loads the next
        self.index_in.set()
        self.open_lock = threading.Lock()
        self.reload_lock = threading.Lock()
        self.ingest_lock = threading.Lock()
        # this process's writes and a reload's fresh open of the store, one at a time: an open between a write and
        # its refresh would cache a copy of the store that may not hold the write's vectors
        self.write_lock = threading.Lock()


def _collect_until_gone(gone: weakref.ref, seconds: float) -> None:
    """Collect until what ``gone`` refers to is freed (chromadb's objects hold one another in cycles) or
    ``seconds`` pass: a search begun on it holds it until that search ends."""
    deadline = time.monotonic() + seconds
    gc.collect()
    while gone() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
        gc.collect()


def _collect_and_return() -> None:
    """Free what a reload replaced (held in cycles, see FREE_REPLACED_S) and give its heap back to the OS."""
    gc.collect()
    return_freed_memory()


class KnowledgeBase:
    """A knowledge base on disk (or on a Chroma server), with search, answers and NPCs.

    Use ``KnowledgeBase.open(...)``; nothing is read until the first call that needs it.
    """

    def __init__(self, settings: Settings, _shared: _Shared | None = None):
        self.settings = settings
        self._shared = _shared or _Shared()

    @classmethod
    def open(cls, location: str | Path | None = None, settings: Settings | None = None) -> "KnowledgeBase":
        """A knowledge base at a directory or a Chroma server URL (default: the settings').

        Raises:
            ConfigError: a setting read from the environment cannot be used.
        """
        settings = dataclasses.replace(settings) if settings else Settings()
        if location is not None:
            if str(location).startswith(("http://", "https://")):
                settings.chroma_url = str(location)
            else:
                settings.kb_dir, settings.chroma_url = Path(location), None
        return cls(settings)

    def with_retrieval(self, config: RetrievalConfig) -> "KnowledgeBase":
        """The same store and corpus, searched with other retrieval weights (bench/ablation.py)."""
        settings = dataclasses.replace(self.settings, retrieval=config)
        return KnowledgeBase(settings, self._shared)

    @property
    def location(self) -> str:
        return self.settings.chroma_url or str(self.settings.kb_dir)

    # -- the store and its corpus ------------------------------------------

    @property
    def store(self) -> Store:
        """The store, opened on first use.

        Raises:
            Unavailable: there is no knowledge base there yet, or it cannot be reached.
            ModelMismatch: the store was built with another embedding model.
        """
        shared = self._shared
        if shared.store is None:
            with shared.open_lock:
                if shared.store is None:
                    shared.store = Store(self.settings.kb_dir, self.settings.chroma_url)
        shared.index_in.wait()
        return shared.store

    @property
    def corpus(self) -> Corpus:
        """The corpus of the store's current generation, or the previous one while another thread reloads."""
        shared = self._shared  # and no store held here while a reload may replace it (LOAD_BESIDE_MAX_CHUNKS)
        loaded = shared.loaded
        if loaded is not None and loaded.generation == self._generation(self.store):
            return loaded.corpus
        if loaded is None:
            with shared.reload_lock:
                if shared.loaded is None:
                    self._reload(self.store)
            return shared.loaded.corpus
        if time.monotonic() >= shared.retry_at:
            started = self._reload_behind()
            if started is not None:  # searches that come while it loads answer from the corpus before at once
                started.wait(RELOAD_WAIT_S)
        return shared.loaded.corpus

    def _reload_behind(self) -> threading.Event | None:
        """Start loading the store's new generation in a thread of its own, unless one is: the Event set when
        it ends, or None when one was running already."""
        shared = self._shared
        with shared.open_lock:
            if shared.reloading is not None:
                return None
            shared.reloading = threading.Event()
            threading.Thread(target=self._reload_or_keep, args=(shared.reloading,), name="kb-reload").start()
            return shared.reloading

    def _reload_or_keep(self, done: threading.Event) -> None:
        """Load the store's new generation; if that fails (a store file caught mid-write, a damaged
        index), go on answering from the corpus loaded before and try again RELOAD_RETRY_S later, rather
        than failing every request until the store is readable again."""
        shared = self._shared
        reloaded = False
        try:
            with shared.write_lock, shared.reload_lock:
                self._reload(self.store)
                reloaded = True
        except Exception as exc:  # whatever failed, the canon loaded before can still answer
            shared.retry_at = time.monotonic() + RELOAD_RETRY_S
            log.warning("answering from the canon loaded before: loading the store's new state failed (%s: %s)",
                        type(exc).__name__, exc)
        finally:
            with shared.open_lock:
                shared.reloading = None
            done.set()
        if reloaded:
            # the log copied here, not by the next search's poll, which then only begins its read again
            # (Snapshot.settle): at a million chunks the copy took that search 0.69 s after the reload
            shared.postings.checkpoint()

    def refresh(self) -> None:
        """Load the current generation now, after this process's ingest or forget, so its canon is
        visible at once."""
        store = self.store
        with self._shared.reload_lock:
            loaded = self._shared.loaded
            if loaded is None or loaded.generation != store.generation():
                self._reload(store, fresh=False)

    def _generation(self, store: Store) -> int:
        """The store's generation, checked at most every GENERATION_POLL_S (at once after a write by this
        process), and read from chromadb when the store's files changed or GENERATION_READ_S passed: the read
        cost a server 1.2-3 ms of CPU, and under load its request waited 10-140 ms on chromadb's threads
        (10 polls a second, in process, load 8)."""
        last = self._shared.generation_read
        now = time.monotonic()
        moves = store.moves_here()  # before the read below: a write after it is seen next call
        if last is None or now - last.checked >= GENERATION_POLL_S or moves != last.moves_here:
            signature = store.disk_signature()
            if (last is not None and signature is not None and signature == last.signature
                    and now - last.read < GENERATION_READ_S and moves == last.moves_here):
                last = last._replace(checked=now)
            else:
                last = _GenerationRead(store.generation(), now, signature, now, moves)
            self._shared.generation_read = last
            loaded = self._shared.loaded
            # once the previous corpus is let go, and not on the way to a reload: at a million chunks the log's
            # copy took 0.44-0.65 s of the poll that found another writer's edit, before the reload began
            if loaded is not None and loaded.generation == last.generation:
                loaded.corpus.settle()
        return last.generation

    def _reload(self, store: Store, fresh: bool = True) -> None:
        shared = self._shared
        return_freed_memory()  # what searches freed and glibc kept, before the reload's own peak
        previous = shared.loaded.corpus if shared.loaded else None
        behind = previous is not None and not store.chroma_url  # a local store's index, loaded before this write
        load_after = False
        if behind and not fresh:  # this process's own write: the copy of the store it opened afresh holds it
            store = Store(self.settings.kb_dir, None)
        generation, corpus = self._load_corpus(store, previous)
        if behind and fresh:
            # another process's write, whose vectors the index this process loaded lacks: a few are kept beside it
            # (kb/catch_up.py); more, and the store is opened afresh, its index loaded before searches go to it
            # while two copies fit
            caught = caught_up(store, previous, corpus)
            if caught is None:
                store = Store(self.settings.kb_dir, None, fresh=True)
                load_after = corpus.size > LOAD_BESIDE_MAX_CHUNKS
                if not load_after:  # searches stay on the index they use until this one is in
                    store.dense_query("load the vector index", 1)
                generation, corpus = self._load_corpus(store, previous)
            else:
                store = caught
        if not load_after:
            replaced = self._swap(store, generation, corpus)
            if replaced is not None and replaced.client is not store.client:
                collect = threading.Timer(FREE_REPLACED_S, _collect_and_return)
                collect.daemon = True
                collect.start()
            return
        shared.index_in.clear()  # searches wait in ``store`` until the new index is in
        previous = None  # and the postings it kept go with the old index (up to 504 MB at a million chunks)
        try:
            index = weakref.ref(self._swap(store, generation, corpus).client._server)  # chromadb's, holding it
            _collect_until_gone(index, FREE_REPLACED_S)
            return_freed_memory()  # else glibc kept it: 566 MB at a million prose chunks, a server's peak over 4 GB
            store.dense_query("load the vector index", 1)
        finally:
            shared.index_in.set()

    def _swap(self, store: Store, generation: int, corpus: Corpus) -> Store | None:
        """Put a reload's store and corpus where searches find them; the store replaced. The commonest terms the
        corpus before kept are read again in a thread: one held by over a third of the chunks took 17 to 27 ms to
        read and weigh at a million prose chunks, where the first 100 new questions after a change ran at 1.9x to
        3.2x dense."""
        shared = self._shared
        common = shared.loaded.corpus.common_terms() if shared.loaded else []
        replaced, shared.store = shared.store, store  # before the corpus: searches read them the other way
        shared.loaded = _Loaded(generation, corpus)
        if common:
            _reading_postings(lambda: corpus.keep_terms(common), "kb-read-common")
        return replaced

    def _load_corpus(self, store: Store, previous: Corpus | None) -> tuple[int, Corpus]:
        """The store's generation and its corpus, the generation read first: a write landing during the load
        makes the next call reload."""
        signature, moves = store.disk_signature(), store.moves_here()
        generation = store.generation()
        now = time.monotonic()
        self._shared.generation_read = _GenerationRead(generation, now, signature, now, moves)
        return generation, Corpus.load(store, self._postings(store), previous)

    def _postings(self, store: Store) -> Postings:
        """The store's BM25 postings on disk, opened once per knowledge base."""
        if self._shared.postings is None:
            self._shared.postings = Postings(index_path(store))
        return self._shared.postings

    def warm(self) -> None:
        """Open the store, load the corpus, the embedding model and the vector index, and read the commonest
        terms' postings, before the first question (at a million chunks, chromadb's first query loads 2.4 GB:
        4-20 s; the postings are read in a thread beside it)."""
        common = _reading_postings(self.corpus.keep_common_terms, "kb-warm-postings")
        self.store.dense_query("warm up", 1)
        encoding()  # the token counter that packs the context (1.5 s to load)
        common.join()

    def warm_or_log(self) -> None:
        """``warm`` for a server about to take requests: a store it cannot open yet is each request's error to
        report, so here it is only a warning."""
        try:
            self.warm()
        except KBError as exc:
            log.warning("%s", exc)

    # -- writes -------------------------------------------------------------

    def ingest(self, paths: list[str], on_file: Callable[[str], None] | None = None) -> IngestReport:
        """Add, update and remove files incrementally; one ingest at a time per KnowledgeBase.

        Raises:
            Busy: another thread of this process is ingesting into it.
            StoreLocked: another process holds the local store's write lock.
            KBError: the store cannot be created or written.
        """
        if not self._shared.ingest_lock.acquire(blocking=False):
            raise Busy("an ingest is already running on this knowledge base; try again when it finishes")
        try:
            with self._shared.write_lock:
                report = ingest([str(p) for p in paths], self.settings, on_file=on_file)
                self._after_write()
        finally:
            self._shared.ingest_lock.release()
        return report

    def forget(self, paths: list[str]) -> list[str]:
        """Remove files (or everything under folders); the sources removed.

        Raises:
            Unavailable: there is no knowledge base there.
            StoreLocked: another process holds the write lock.
        """
        with self._shared.write_lock:
            removed = forget([str(p) for p in paths], self.settings)
            if removed:
                self._after_write()
        return removed

    def compact(self, on_progress: Callable[[int, int], None] | None = None) -> Compaction:
        """Rebuild the store's vector index without the vectors of replaced chunks (kb/store/compact.py). A process
        that loaded the index before keeps its copy (still right, not smaller) until it loads it afresh.

        Raises:
            Unavailable: there is no knowledge base there.
            StoreLocked: another process holds the write lock.
            KBError: a Chroma server's store (its index is the server's), or it cannot be rebuilt.
        """
        if self.settings.chroma_url:
            raise KBError(f"{self.settings.chroma_url}: kb compact rebuilds a local store's vector index; "
                          "a Chroma server keeps its own")
        self.store  # noqa: B018 - raises Unavailable when there is no store there
        with self._shared.write_lock:
            return compact(self.settings.kb_dir, on_progress)

    def _after_write(self) -> None:
        """A server loads the new canon now, so its next answer sees it. Any other process (`kb ingest`) brings
        the BM25 postings on disk up to date, building them on a new local store: the next reader, a server
        or a fresh `kb search`, then only opens them (at a million loc rows, a first open that built them
        took 254 s, and redoing an edited 10,000-row table's postings was most of the 2.2 s a server took to
        see the edit). A Chroma server's readers keep their own postings, so a pipeline's machine writing to
        it builds none. If that fails, the next reader does it."""
        if self._shared.loaded is not None:
            self.refresh()
            return
        store = self.store
        path = index_path(store)
        if store.chroma_url and not path.exists():
            return
        postings = self._postings(store)
        try:
            if postings.path == path:  # not a temporary index: the cache could not be written
                store.consistent(lambda: postings.update(store))
        except DAMAGE as exc:
            log.warning("left the BM25 index at %s to be rebuilt by its next reader (%s: %s)",
                        postings.path, type(exc).__name__, exc)
            postings.reset()

    # -- reads --------------------------------------------------------------

    def search(self, query: str, k: int = 5, mode: str = "hybrid", where: dict | None = None,
               limits: dict | None = None, flags: frozenset[str] | None = None,
               strict: bool = False) -> list[Hit]:
        """The k best visible chunks for a query, filtered by metadata ``where``, NPC ``limits``
        (``strict``: canon without a limited key is hidden too) and quest ``flags`` (None: canon
        that `requires:` flags is not hidden).

        Keys are case-folded, as ingest stores them (`Chapter` is `chapter`).

        Raises:
            Unavailable: there is no knowledge base there.
        """
        where = {meta_key(key): value for key, value in where.items()} if where else where
        corpus = self.corpus  # first: a reload replaces the store before the corpus, never after
        return search(self.store, corpus, query, k=k, mode=mode, where=where, limits=limits,
                      config=self.settings.retrieval, flags=flags, strict=strict)

    def ask(self, question: str, *, k: int = 5, extractive: bool = False, model: str | None = None,
            retrieval: bool = True, on_token: Callable[[str], None] | None = None,
            history: list[dict] | None = None, state: dict | None = None) -> Answer:
        """An answer from the canon with [n] citations (from the chat model, or quoted offline).

        ``history``: the conversation so far; ``state``: a game state (kb/gamestate.py) that
        narrows the canon and, once given, hides canon whose `requires:` flags it does not set.

        Raises:
            Unavailable: there is no knowledge base there.
            InvalidState: the state is malformed.
            LLMError: the configured chat model cannot be reached or refuses.
        """
        seen = visibility({}, state, gate_flags=False)
        turns, corpus = bounded_history(history or []), self.corpus
        query = retrieval_query(question, turns, self.settings, corpus.idf, model, extractive)
        return respond(self, question, k=k, extractive=extractive, model=model, retrieval=retrieval,
                       on_token=on_token, limits=seen.limits, flags=seen.flags, query=query,
                       history=turns, corpus=corpus)

    def npcs(self) -> dict[str, Card]:
        """Every NPC card, by name (read from the manifest once per store generation)."""
        store = self.store
        generation = self._generation(store)
        loaded = self._shared.cards
        if loaded is None or loaded.generation != generation:
            loaded = self._shared.cards = _Cards(generation, cards(store))
        return loaded.cards

    def npc(self, name: str) -> "NPC":
        """The NPC whose card name or speaker name is ``name`` (case-insensitive).

        Raises:
            NotFound: no such NPC; the message lists the ones there are.
        """
        return NPC(self, find_card(self.npcs(), name))

    def status(self) -> dict:
        """Files, cards, chunks, model, size, generation, last ingest, the vectors of replaced chunks the index
        still holds (`kb compact`), and warnings (``{path, warning}``): metadata the cards' limits cannot compare,
        and the suggestion to compact that `kb ingest` gives."""
        store = self.store
        live, records = store.count(), store.files()
        replaced = replaced_vectors(store, live)
        return {**store.status(records), "generation": store.generation(), "replaced_vectors": replaced,
                "warnings": stored_limit_warnings(records.values()) + compact_suggestion(store.kb_dir, replaced, live)}


@dataclass
class NPC:
    """A character who answers in character from only the canon their card allows."""

    kb: KnowledgeBase
    card: Card

    @property
    def name(self) -> str:
        return self.card.name

    def voice_lines(self, state: dict | None = None) -> list[str]:
        """A few of the NPC's own lines, from canon they may know (in this game state)."""
        return voice_lines(self.kb.corpus, self.card, card_visibility(self.card, state))

    def search(self, query: str, k: int = 5, mode: str = "hybrid", where: dict | None = None,
               state: dict | None = None) -> list[Hit]:
        """The k best chunks this NPC may see in ``state``: the card's limits narrowed by the state,
        and canon whose `requires:` flags the state does not set hidden, as in ``ask``.

        Raises:
            InvalidState: the state is malformed.
            StateBeyondCard: the state asks for more than the card allows.
        """
        seen = card_visibility(self.card, state)
        return self.kb.search(query, k=k, mode=mode, where=where, limits=seen.limits, flags=seen.flags,
                              strict=seen.strict)

    def ask(self, question: str, *, k: int = 5, extractive: bool = False, model: str | None = None,
            retrieval: bool = True, on_token: Callable[[str], None] | None = None,
            history: list[dict] | None = None, state: dict | None = None,
            on_prompt: Callable[[list[dict]], None] | None = None) -> Answer:
        """The NPC's answer to a player's question; ``unknown_answer`` for anything beyond their limits.

        ``history``: the conversation so far (``{"role", "content"}`` turns, oldest first);
        ``state``: the player's game state, e.g. ``{"chapter": 2, "flags": {"met_sefa": True}}``,
        which narrows what the card allows and unlocks canon that `requires:` its flags;
        ``on_prompt``: called with the messages the model is (offline: would be) sent.

        Raises:
            InvalidState: the state is malformed.
            StateBeyondCard: the state asks for more than the card allows (chapter 4 of a chapter-3 card).
            LLMError: the configured chat model cannot be reached or refuses.
        """
        return ask_npc(self.kb, self.card, question, k=k, extractive=extractive, model=model,
                       retrieval=retrieval, on_token=on_token, history=history, state=state,
                       on_prompt=on_prompt)

