"""Stylometry: does a text read like the corpus? Burrows' Delta plus the surface habits of a writer.

* **Burrows' Delta** (Burrows 2002): take the corpus's most frequent function words, measure each word's
  relative frequency in every corpus chunk, and keep the mean and standard deviation. A text becomes a
  vector of z-scores; Delta between two texts is the mean absolute difference of their z-scores. 0 means
  the same function-word profile; unrelated authors typically sit well above 1.
* **Sentence length** (words per sentence) and **punctuation per 1,000 words**: semicolons and dashes
  are characteristic of Shelley's long periodic sentences.
* **MATTR**: type-token ratio averaged over a moving window, so texts of different lengths compare.
* **Unseen-word share**: words never seen in the corpus, a hint of anachronism ("okay", "phone").
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shelley.eval.originality import words

# English function words: pronouns, determiners, prepositions, conjunctions, auxiliaries, common adverbs.
# Delta uses the ones most frequent in the corpus; content words would measure topic, not style.
FUNCTION_WORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just may me might more most must
    my myself no nor not now of off on once only or other ought our ours ourselves out over own same shall she
    should so some such than that the their theirs them themselves then there these they this those thou thee
    thy thine through to too under until up upon very was we were what when where whether which while who whom
    whose why will with would yet you your yours yourself yourselves ye o whilst amongst among""".split()  # noqa: SIM905
)
SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)]*\s+")
PUNCTUATION = {"semicolon": ";", "colon": ":", "comma": ",", "dash": "—", "exclamation": "!", "question": "?"}
MATTR_WINDOW = 100
CHUNK_WORDS = 500  # corpus chunk size for fitting the z-scores; short snippets are pooled up to this


def _dashes(text: str) -> str:
    # An em dash written as two hyphens (or a spaced hyphen) counts as a dash.
    return re.sub(r"\s-\s|--", "—", text)


def sentence_lengths(text: str) -> list[int]:
    return [n for s in SENTENCE_END.split(text.strip()) if (n := len(words(s)))]


def mattr(ws: list[str], window: int = MATTR_WINDOW) -> float:
    if not ws:
        return 0.0
    if len(ws) <= window:
        return len(set(ws)) / len(ws)
    counts = Counter(ws[:window])
    total = len(counts)
    for i in range(window, len(ws)):
        counts[ws[i]] += 1
        out = ws[i - window]
        counts[out] -= 1
        if not counts[out]:
            del counts[out]
        total += len(counts)
    return total / (len(ws) - window + 1) / window  # mean type-token ratio of the windows


def chunk_texts(texts: list[str], chunk_words: int = CHUNK_WORDS) -> list[str]:
    """Pool short snippets (in order) into chunks of at least ``chunk_words`` words."""
    chunks, cur, n = [], [], 0
    for t in texts:
        cur.append(t)
        n += len(words(t))
        if n >= chunk_words:
            chunks.append("\n".join(cur))
            cur, n = [], 0
    if cur:
        if n >= chunk_words // 2 or not chunks:
            chunks.append("\n".join(cur))
        else:  # a short tail joins the last chunk rather than becoming a noisy chunk of its own
            chunks[-1] += "\n" + "\n".join(cur)
    return chunks


@dataclass
class StyleModel:
    """Function-word z-scores fitted on a corpus, and the corpus vocabulary for the unseen-word share."""

    features: list[str]
    mean: np.ndarray  # (F,)
    std: np.ndarray  # (F,)
    vocab: frozenset[str]

    @classmethod
    def fit(cls, texts: list[str], n_features: int = 50) -> StyleModel:
        all_words = [w for t in texts for w in words(t)]
        counts = Counter(w for w in all_words if w in FUNCTION_WORDS)
        features = [w for w, _ in counts.most_common(n_features)]
        chunks = chunk_texts(texts)
        freqs = np.stack([relative_frequencies(words(c), features) for c in chunks])  # (chunks, F)
        std = freqs.std(axis=0)
        std[std == 0] = 1e-6  # a word with no spread cannot discriminate; avoid dividing by zero
        return cls(features, freqs.mean(axis=0), std, frozenset(all_words))

    def z(self, text: str) -> np.ndarray:
        return (relative_frequencies(words(text), self.features) - self.mean) / self.std

    def delta(self, a: str, b: str) -> float:
        """Burrows' Delta between two texts: mean |z_a - z_b| over the function words."""
        return float(np.mean(np.abs(self.z(a) - self.z(b))))

    def profile(self, text: str) -> dict[str, Any]:
        """Surface style of one text (or many joined together)."""
        text = _dashes(text)
        ws = words(text)
        n = max(1, len(ws))
        sl = sentence_lengths(text)
        return {
            "words": len(ws),
            "sentence_length_mean": float(np.mean(sl)) if sl else 0.0,
            "sentence_length_median": float(np.median(sl)) if sl else 0.0,
            "sentence_length_std": float(np.std(sl)) if sl else 0.0,
            "per_1000_words": {name: 1000 * text.count(ch) / n for name, ch in PUNCTUATION.items()},
            "mattr": mattr(ws),
            "unseen_word_share": sum(1 for w in ws if w not in self.vocab) / n,
        }


def relative_frequencies(ws: list[str], features: list[str]) -> np.ndarray:
    counts = Counter(ws)
    n = max(1, len(ws))
    return np.array([counts[f] / n for f in features], dtype=np.float64)


def window_spans(texts: list[str], n_words: int, k: int = 24) -> list[tuple[int, int]]:
    """Up to ``k`` (start, end) runs of consecutive ``texts`` of about ``n_words`` words each, starting at evenly
    spaced points through the list (so they cover the whole book, every narrator). Runs that reach the end of
    the list before 90% of ``n_words`` are dropped."""
    if not texts or n_words <= 0:
        return []
    lengths = [len(words(t)) for t in texts]
    spans = []
    for start in sorted({int(s) for s in np.linspace(0, len(texts), k, endpoint=False)}):
        n, end = 0, start
        while end < len(texts) and n < n_words:
            n += lengths[end]
            end += 1
        if n >= 0.9 * n_words:
            spans.append((start, end))
    return spans


def same_length_windows(texts: list[str], n_words: int, k: int = 24) -> list[str]:
    """The runs of ``window_spans``, each joined into one text."""
    return ["\n".join(texts[start:end]) for start, end in window_spans(texts, n_words, k)]


def delta_floor(style: StyleModel, texts: list[str], reference: str, n_words: int, k: int = 24) -> dict[str, Any]:
    """Delta to ``reference`` of the author's own text cut to the length of the texts being judged.

    Function-word frequencies of a ~2,000-word sample are noisy, so even the author's own prose does not
    score 0: this distribution is the floor a perfect imitator would reach at that length, and the yardstick
    for reading any other Delta."""
    d = np.array([style.delta(w, reference) for w in same_length_windows(texts, n_words, k)])
    if not d.size:
        return {"windows": 0}
    return {
        "windows": int(d.size),
        "words": n_words,
        "median": float(np.median(d)),
        "min": float(d.min()),
        "max": float(d.max()),
        "values": [round(float(x), 4) for x in d],
    }


def compare(style: StyleModel, texts: dict[str, list[str]], reference: str) -> dict[str, dict[str, Any]]:
    """For each named group of texts: its profile (all texts joined), Delta of the joined texts to the
    ``reference`` group, and the mean per-text Delta (noisier: each text is short)."""
    ref = "\n".join(texts[reference])
    out = {}
    for name, group in texts.items():
        joined = "\n".join(group)
        row = style.profile(joined)
        row["delta"] = style.delta(joined, ref)
        row["delta_per_text"] = float(np.mean([style.delta(t, ref) for t in group])) if group else 0.0
        row["texts"] = len(group)
        out[name] = row
    return out


def profile(text: str, corpus: Path, data_cfg, features: int = 50) -> tuple[list[str], dict[str, Any]]:
    """Stylometry of ``text`` (a file path or the text itself) against ``corpus``'s held-out text: the function
    words Delta used, and the comparison table."""
    from shelley.data.corpus import open_corpus
    from shelley.data.ingest import text_argument

    _name, body = text_argument(text)
    found = open_corpus(corpus, data_cfg, split=False)  # a corpus file whole; a run or dataset dir as split
    fit_on = found.train or [t for texts in found.texts.values() for t in texts]
    style = StyleModel.fit(fit_on, n_features=features)
    held = found.validation or fit_on
    return style.features, compare(style, {"text": [body], "corpus_held_out": held}, reference="corpus_held_out")
