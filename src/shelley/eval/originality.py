"""The originality guard: how much of a generated text is copied from the training corpus, and from where.

The corpus is lowercased into words and indexed once with a suffix automaton over word ids (the minimal
automaton recognising every contiguous word span of the corpus). Walking a generated text through it gives,
for every word, the length of the longest span ending there that also occurs in the corpus, in one pass
(O(words)). From that come the three numbers reported for every text:

* ``longest_span``: the longest copied span, in words;
* ``ngram_share``: the share of the text's word 8-grams found in the corpus (an 8-gram ending at word j is
  in the corpus exactly when the match length at j is at least 8);
* ``location``: where in the corpus the longest span was copied from (row, section, the copied words).

The automaton is stored as flat numpy arrays (transitions in CSR form) in an ``.npz`` next to the run, keyed
by a SHA-256 of the corpus, so it is built once per run and never silently used for another corpus.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shelley.config import DataConfig
from shelley.data.corpus import open_corpus
from shelley.errors import ShelleyError
from shelley.io import atomic_write_bytes, shelley_home
from shelley.run import Run

WORD_RE = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")
DEFAULT_MAX_SPAN = 12  # longest copied span (words) `--original` accepts
NGRAM = 8
INDEX_VERSION = 1


def words(text: str) -> list[str]:
    """Lowercased words; punctuation and spacing do not count toward copying."""
    return WORD_RE.findall(text.lower().replace("’", "'"))


def word_spans(text: str) -> list[tuple[str, int, int]]:
    """The words of ``words(text)`` with where each stands in ``text`` (start and end character)."""
    low = text.lower()
    if len(low) != len(text):  # a few characters lowercase to two; keep offsets aligned with the text
        low = "".join(c.lower()[:1] or c for c in text)
    return [(m.group(), m.start(), m.end()) for m in WORD_RE.finditer(low.replace("’", "'"))]


def corpus_hash(rows: list[dict[str, Any]]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(r["text"].encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


@dataclass
class CorpusIndex:
    """A suffix automaton over the corpus's word ids plus what is needed to point back into the corpus."""

    vocab: dict[str, int]
    word_ids: np.ndarray  # (N,) corpus as word ids, rows concatenated
    row_of_word: np.ndarray  # (N,) which corpus row each word comes from
    rows: list[dict[str, Any]]  # {"text", "split", "row", "section"} per corpus row
    offsets: np.ndarray  # (S+1,) CSR: transitions of state s are [offsets[s], offsets[s+1])
    labels: np.ndarray  # (E,) word id of each transition, sorted within a state
    targets: np.ndarray  # (E,) target state of each transition
    link: np.ndarray  # (S,) suffix link
    length: np.ndarray  # (S,) longest span a state represents
    first_end: np.ndarray  # (S,) corpus word position where a span of this state first ends
    sha256: str

    # ------------------------------------------------------------------ build / save / load
    @classmethod
    def build(cls, rows: list[dict[str, Any]], progress: bool = False) -> CorpusIndex:
        vocab: dict[str, int] = {}
        ids: list[int] = []
        row_of: list[int] = []
        for i, r in enumerate(rows):
            for w in words(r["text"]):
                ids.append(vocab.setdefault(w, len(vocab)))
                row_of.append(i)
            # A separator id that no query word can have, so spans never run across two rows.
            ids.append(-1 - i)
            row_of.append(i)
        nxt, link, length, first_end = _suffix_automaton(ids, progress=progress)
        offsets = np.zeros(len(nxt) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(t) for t in nxt])
        labels = np.empty(offsets[-1], dtype=np.int64)
        targets = np.empty(offsets[-1], dtype=np.int64)
        for s, trans in enumerate(nxt):
            keys = sorted(trans)
            labels[offsets[s] : offsets[s + 1]] = keys
            targets[offsets[s] : offsets[s + 1]] = [trans[k] for k in keys]
        return cls(
            vocab=vocab,
            word_ids=np.asarray(ids, dtype=np.int64),
            row_of_word=np.asarray(row_of, dtype=np.int64),
            rows=rows,
            offsets=offsets,
            labels=labels,
            targets=targets,
            link=np.asarray(link, dtype=np.int64),
            length=np.asarray(length, dtype=np.int64),
            first_end=np.asarray(first_end, dtype=np.int64),
            sha256=corpus_hash(rows),
        )

    def save(self, path: Path) -> None:
        import io

        buf = io.BytesIO()
        meta = {"version": INDEX_VERSION, "sha256": self.sha256, "vocab": self.vocab, "rows": self.rows}
        np.savez(
            buf,
            meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
            word_ids=self.word_ids,
            row_of_word=self.row_of_word,
            offsets=self.offsets,
            labels=self.labels,
            targets=self.targets,
            link=self.link,
            length=self.length,
            first_end=self.first_end,
        )
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: Path, expect_sha256: str | None = None) -> CorpusIndex:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode("utf-8"))
                arrays = {k: z[k] for k in z.files if k != "meta"}
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise ShelleyError(f"originality index {path} is unreadable ({exc}); delete it to rebuild") from None
        if meta.get("version") != INDEX_VERSION:
            raise ShelleyError(f"originality index {path} is from another shelley version; delete it to rebuild")
        if expect_sha256 is not None and meta["sha256"] != expect_sha256:
            raise ShelleyError(
                f"originality index {path} was built from a different corpus than the run's "
                f"(sha256 {meta['sha256'][:12]} vs {expect_sha256[:12]}); delete it or pass the run's own index"
            )
        return cls(vocab=meta["vocab"], rows=meta["rows"], sha256=meta["sha256"], **arrays)

    # ------------------------------------------------------------------ queries
    def _step(self, state: int, word: int) -> int | None:
        lo, hi = self.offsets[state], self.offsets[state + 1]
        i = lo + int(np.searchsorted(self.labels[lo:hi], word))
        if i < hi and self.labels[i] == word:
            return int(self.targets[i])
        return None

    def match_lengths(self, query: list[str]) -> tuple[list[int], list[int]]:
        """For each query word j: the longest span ending at j found in the corpus, and the corpus word
        position where that span ends (-1 when nothing matches)."""
        state, cur = 0, 0
        lens: list[int] = []
        ends: list[int] = []
        for w in query:
            wid = self.vocab.get(w, -(10**12))  # unseen words match nothing
            while True:
                nxt = self._step(state, wid)
                if nxt is not None:
                    state, cur = nxt, cur + 1
                    break
                if state == 0:
                    cur = 0
                    break
                state = int(self.link[state])
                cur = int(self.length[state])
            lens.append(cur)
            ends.append(int(self.first_end[state]) if cur else -1)
        return lens, ends

    def overlong_copy(self, text: str, max_span: int, *, start: int = 0) -> tuple[int, int] | None:
        """The first span copied from the corpus that grows past ``max_span`` words inside ``text[start:]``:
        (the character of ``text`` where its part at or after ``start`` begins, its length in words), or None.
        The scene guard re-samples from that character, so text before ``start`` (already accepted) stays."""
        spans = word_spans(text)
        lens, _ = self.match_lengths([w for w, _, _ in spans])
        first_new = next((k for k, (_, a, _) in enumerate(spans) if a >= start), len(spans))
        for j in range(first_new, len(spans)):
            if lens[j] > max_span:
                return spans[max(j - lens[j] + 1, first_new)][1], lens[j]
        return None

    def check(self, text: str, n: int = NGRAM) -> dict[str, Any]:
        """Longest copied span (words), share of word n-grams found in the corpus, and where the span is from."""
        q = words(text)
        lens, ends = self.match_lengths(q)
        longest = max(lens, default=0)
        grams = max(0, len(q) - n + 1)
        shared = sum(1 for j in range(n - 1, len(q)) if lens[j] >= n)
        out: dict[str, Any] = {
            "words": len(q),
            "longest_span": longest,
            "ngram_n": n,
            "ngram_share": shared / grams if grams else 0.0,
            "location": None,
        }
        if longest:
            j = lens.index(longest)
            end = ends[j]
            start = end - longest + 1
            row = self.rows[int(self.row_of_word[end])]
            out["location"] = {
                "split": row.get("split"),
                "row": row.get("row"),
                "section": row.get("section"),
                "copied": " ".join(q[j - longest + 1 : j + 1]),
                "corpus_word": start,
            }
        return out


def _suffix_automaton(seq: list[int], progress: bool = False):
    """Classic online suffix automaton construction (Blumer et al.), over word ids."""
    nxt: list[dict[int, int]] = [{}]
    link = [-1]
    length = [0]
    first_end = [-1]
    last = 0
    iterator = seq
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(seq, desc="indexing corpus", unit="word", leave=False)
    for pos, c in enumerate(iterator):
        cur = len(nxt)
        nxt.append({})
        length.append(length[last] + 1)
        link.append(0)
        first_end.append(pos)
        p = last
        while p != -1 and c not in nxt[p]:
            nxt[p][c] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][c]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(nxt)
                nxt.append(dict(nxt[q]))
                length.append(length[p] + 1)
                link.append(link[q])
                first_end.append(first_end[q])
                while p != -1 and nxt[p].get(c) == q:
                    nxt[p][c] = clone
                    p = link[p]
                link[q] = clone
                link[cur] = clone
        last = cur
    link[0] = 0  # the root links to itself; the query walk stops there
    return nxt, link, length, first_end


def index_for_rows(rows: list[dict[str, Any]], path: Path, progress: bool = False) -> CorpusIndex:
    """Load the cached index at ``path`` if it was built from exactly ``rows``; otherwise build and cache it."""
    path = Path(path)
    sha = corpus_hash(rows)
    if path.exists():
        return CorpusIndex.load(path, expect_sha256=sha)
    index = CorpusIndex.build(rows, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    index.save(path)
    return index


def run_index(run: Run, progress: bool = False) -> CorpusIndex:
    """The run's originality index, built on first use and cached in the run dir."""
    return index_for_rows(run.corpus_rows(), run.originality_index, progress=progress)


def index_for(run: Run | None, corpus: Path | None, index_path: Path | None, data_cfg: DataConfig) -> CorpusIndex:
    """The originality index for writing: an explicit saved index (checked against the corpus by hash), else the
    run's own, else one built from ``corpus`` and cached under SHELLEY_HOME/indexes."""
    if corpus is None and run is None:
        raise ShelleyError("the originality check needs the training corpus: pass a run dir as MODEL or --corpus FILE")
    rows = open_corpus(corpus, data_cfg).rows() if corpus is not None else run.corpus_rows()
    if index_path is not None:
        if not index_path.exists():
            raise ShelleyError(f"originality index not found: {index_path}; drop --index to build one")
        return CorpusIndex.load(index_path, expect_sha256=corpus_hash(rows))
    if corpus is None:
        return index_for_rows(rows, run.originality_index)

    return index_for_rows(rows, shelley_home() / "indexes" / f"{corpus_hash(rows)[:16]}.npz")
