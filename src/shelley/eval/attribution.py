"""Who wrote this? Authorship attribution of a text among the corpus's author and a set of other authors.

The method is the stylometry literature's standard for short texts, not an invention of ours:

* **Bags** of ``bag_words`` (default 1,000) consecutive words. Below about 1,000 words, most-frequent-word
  profiles are too noisy to attribute (Eder 2015, "Does size matter?").
* **Features**: the ``n_features`` (300) most frequent words *and punctuation marks* of the pooled training
  bags, as relative frequencies per bag, z-scored with the mean and spread of **all** training bags (a
  multi-author reference, as Delta requires), then scaled to length 1: cosine Delta (Evert et al. 2017).
* **Classifiers**: the nearest author centroid by cosine (Delta's own rule), and a linear SVM (scikit-learn),
  the headline. The other authors are impostors (Koppel & Winter 2014): a text must look more like the
  target author than like any of them, not merely "unlike the base model".
* **Validity**, computed every time: the corpus's own held-out bags must go to its author, and other authors'
  held-out bags must not. Training bags come from the corpus's train split and the first 80% of each
  reference book; the validation split and the last 20% of each book are never seen by the classifiers.

**Names are left out of the features** by default: a word the corpus and the reference books write capitalised
in at least 90% of its mid-sentence uses (``elizabeth``, ``margaret``, ``adeline``, ``mr``) carries who is in
the story, not how it is told, and a model that repeats a character's name would earn the author's votes
for content. ``keep_names`` restores them; the report lists the names that would have been features.

Typography is normalised before counting (curly quotes, ``--`` and en dashes, ``_italics_`` marks), so a
punctuation feature measures how an author punctuates, not how an edition was typeset.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from shelley.errors import ShelleyError

BAG_WORDS = 1000
N_FEATURES = 300
TRAIN_SHARE = 0.8  # of each reference book; the rest is held out for the validity check
# Pre-registered pass rule (issue 25), fixed before any model output was seen: do not tune it afterwards.
PASS_RULE = {
    "own_held_out_min": 0.70,  # valid: the author's own held-out bags go to the author at least this often
    "impostor_max": 0.10,  # valid: no other author's held-out bags go to the author more often than this
    "finetuned_min": 0.60,  # fine-tuned text: at least this share of bags attributed to the author
    "base_max": 0.10,  # base model text: at most this share
    "p_max": 0.01,  # one-sided Fisher exact test, fine-tuned vs base
}

_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*|[.,;:!?\"()—]")
# A word, and whether something that opens a sentence (its end, a line break, an opening quote) stands before it.
_RAW_WORD = re.compile(r"([.!?]['\"”’)]*\s+|\n\s*|[\"“‘(]\s*)?([A-Za-z]+)")
NAME_SHARE = 0.9  # capitalised in at least this share of mid-sentence uses: a name
NAME_MIN_USES = 3
_WORD = re.compile(r"[a-z]")


def normalize(text: str) -> str:
    """Lowercase, straight quotes, one dash, no ``_italic_`` marks: what is left is the author's, not the printer's."""
    text = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    text = re.sub(r"--+|–|—|\s-\s", "—", text)
    return text.replace("_", " ").lower()


def tokens(text: str) -> list[str]:
    """Words and punctuation marks, in order."""
    return _TOKEN.findall(normalize(text))


def make_bags(text: str, bag_words: int = BAG_WORDS) -> list[list[str]]:
    """Consecutive bags of ``bag_words`` words each (punctuation rides along with its words); a shorter tail
    is dropped, since a short bag is a noisier sample than the rest."""
    if bag_words < 1:
        raise ShelleyError(f"bag size must be at least 1 word (got {bag_words}); 1000 is the tested size")
    bags, cur, n = [], [], 0
    for tok in tokens(text):
        cur.append(tok)
        if _WORD.match(tok):
            n += 1
            if n == bag_words:
                bags.append(cur)
                cur, n = [], 0
    return bags


def name_words(texts: list[str], share: float = NAME_SHARE, min_uses: int = NAME_MIN_USES) -> set[str]:
    """Lowercased words written capitalised in at least ``share`` of their mid-sentence uses (at least
    ``min_uses`` of them) across ``texts``: names of people and places, and titles (mr, mrs, lord)."""
    uses: Counter = Counter()
    capital: Counter = Counter()
    for text in texts:
        for m in _RAW_WORD.finditer(text.replace("_", " ")):
            if m.group(1) or m.start(2) == 0:
                continue  # the first word of a sentence, a paragraph or a quotation is capitalised anyway
            w = m.group(2)
            low = w.lower()
            uses[low] += 1
            capital[low] += w[0].isupper()
    return {w for w, n in uses.items() if n >= min_uses and capital[w] >= share * n and w != "i"}


def word_count(text: str) -> int:
    return sum(1 for t in tokens(text) if _WORD.match(t))


def relative_frequencies(bags: list[list[str]], features: list[str]) -> np.ndarray:
    index = {f: i for i, f in enumerate(features)}
    out = np.zeros((len(bags), len(features)))  # (bags, F)
    for b, bag in enumerate(bags):
        for tok, c in Counter(bag).items():
            if tok in index:
                out[b, index[tok]] = c
        out[b] /= max(1, len(bag))
    return out


@dataclass
class Attributor:
    """Fitted features, scaler and classifiers over a fixed set of candidate authors."""

    authors: list[str]
    features: list[str]
    scaler: Any  # sklearn Pipeline: StandardScaler (z-scores over all training bags) -> Normalizer (length 1)
    svm: Any  # sklearn LinearSVC
    centroids: np.ndarray  # (authors, F) mean z-scored vector of each author's training bags

    @classmethod
    def fit(
        cls,
        bags: dict[str, list[list[str]]],
        n_features: int = N_FEATURES,
        seed: int = 0,
        exclude: frozenset = frozenset(),
    ) -> Attributor:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import Normalizer, StandardScaler
        from sklearn.svm import LinearSVC

        empty = [a for a, b in bags.items() if not b]
        if empty:
            raise ShelleyError(f"no training text for {', '.join(empty)}: each author needs at least one full bag")
        if len(bags) < 2:
            raise ShelleyError("attribution needs at least two authors: add other authors' books to the reference set")
        authors = sorted(bags)
        counts = Counter(tok for a in authors for bag in bags[a] for tok in bag)
        features = [t for t, _ in counts.most_common(n_features + len(exclude)) if t not in exclude][:n_features]
        x = np.concatenate([relative_frequencies(bags[a], features) for a in authors])  # (bags, F)
        y = np.array([a for a in authors for _ in bags[a]])
        scaler = make_pipeline(StandardScaler(), Normalizer()).fit(x)
        z = scaler.transform(x)
        # class_weight=balanced: a short book gives few bags; its author must not be out-voted by bag count.
        svm = LinearSVC(C=1.0, class_weight="balanced", random_state=seed).fit(z, y)
        centroids = np.stack([z[y == a].mean(axis=0) for a in authors])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        return cls(authors, features, scaler, svm, centroids)

    def z(self, bags: list[list[str]]) -> np.ndarray:
        """The bags as the classifiers see them: z-scored relative frequencies, length 1. (bags, F)"""
        if not bags:
            return np.zeros((0, len(self.features)))
        return self.scaler.transform(relative_frequencies(bags, self.features))

    def predict(self, bags: list[list[str]]) -> dict[str, list[str]]:
        """Author predicted for each bag, by each classifier."""
        if not bags:
            return {"svm": [], "centroid": []}
        z = self.scaler.transform(relative_frequencies(bags, self.features))
        nearest = np.argmax(z @ self.centroids.T, axis=1)  # cosine: both sides have length 1
        return {"svm": [str(a) for a in self.svm.predict(z)], "centroid": [self.authors[i] for i in nearest]}


def wilson(k: int, n: int, confidence: float = 0.95) -> list[float]:
    """Wilson score interval of a proportion k/n (scipy's binomtest)."""
    if n == 0:
        return [0.0, 1.0]
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def shares(predicted: list[str], authors: list[str]) -> dict[str, float]:
    n = max(1, len(predicted))
    counts = Counter(predicted)
    return {a: counts[a] / n for a in authors}


def summarize(att: Attributor, target: str, bags: list[list[str]]) -> dict[str, Any]:
    """Attribution of one text's bags: the SVM's shares (the headline) with the centroid's beside them."""
    pred = att.predict(bags)
    n = len(bags)
    k = sum(p == target for p in pred["svm"])
    return {
        "target": target,
        "bags": n,
        "target_bags": k,
        "target_share": k / n if n else 0.0,
        "interval": wilson(k, n),
        "shares": shares(pred["svm"], att.authors),
        "centroid": {
            "target_share": sum(p == target for p in pred["centroid"]) / n if n else 0.0,
            "shares": shares(pred["centroid"], att.authors),
        },
    }


@dataclass
class Candidate:
    """One author's text: training part and held-out part (both already joined into one string each)."""

    key: str
    name: str
    title: str
    train: str
    held_out: str


@dataclass
class AttributionTest:
    """An attributor fitted for one target author, with its validity measured on held-out text."""

    target: str
    target_name: str
    attributor: Attributor
    bag_words: int
    validity: dict[str, Any]
    candidates: list[dict[str, Any]]
    dropped: list[str]
    reference: str = ""  # the folder the other authors came from
    names_left_out: list[str] | None = None  # names that would have been features (None: names kept)
    verifier: Any = None  # eval.verify.Verifier: open-set verification, calibrated on the validity set

    def attribute(self, text: str) -> dict[str, Any]:
        return summarize(self.attributor, self.target, make_bags(text, self.bag_words))

    def verify(self, text: str) -> dict[str, Any]:
        """General Impostors over the text's bags: is it the author's, or someone's not in the set?"""
        return self.verifier.summarize(self.attributor.z(make_bags(text, self.bag_words)))


def build_test(
    target: Candidate,
    impostors: list[Candidate],
    *,
    bag_words: int = BAG_WORDS,
    n_features: int = N_FEATURES,
    dropped: list[str] | None = None,
    keep_names: bool = False,
) -> AttributionTest:
    """Fit on the training parts of ``target`` and ``impostors``; measure validity on their held-out parts.
    Names are left out of the features unless ``keep_names``."""
    everyone = [target, *impostors]
    keys = [c.key for c in everyone]
    if len(set(keys)) != len(keys):
        raise ShelleyError(f"two candidates share an author key ({', '.join(keys)}); each author must appear once")
    if not impostors:
        raise ShelleyError(
            "attribution needs at least one other author besides the corpus's: the reference set has none left"
        )
    train = {c.key: make_bags(c.train, bag_words) for c in everyone}
    short = [c.key for c in everyone if not train[c.key]]
    if short:
        raise ShelleyError(
            f"fewer than {bag_words} words of training text for {', '.join(short)}; lower --bag-words or add text"
        )
    names = frozenset() if keep_names else frozenset(name_words([c.train for c in everyone]))
    att = Attributor.fit(train, n_features=n_features, exclude=names)
    left_out = None
    if not keep_names:
        counts = Counter(tok for bags in train.values() for bag in bags for tok in bag)
        left_out = sorted(t for t, _ in counts.most_common(n_features) if t in names)
    held = {c.key: make_bags(c.held_out, bag_words) for c in everyone}
    own = summarize(att, target.key, held[target.key])
    others = {c.key: summarize(att, target.key, held[c.key]) for c in impostors}
    # Each author's held-out bags attributed to that same author, read off the summaries above (no second pass).
    self_shares = {k: s["shares"][k] for k, s in {target.key: own, **others}.items() if s["bags"]}
    worst = max(others, key=lambda k: others[k]["target_share"]) if others else None
    rule = PASS_RULE
    validity = {
        "own_held_out": own,
        "impostor_max_share": others[worst]["target_share"] if worst else 0.0,
        "impostor_max_author": worst,
        "impostors": {k: {"bags": v["bags"], "target_share": v["target_share"]} for k, v in others.items()},
        "self_attribution": self_shares,
        "valid": bool(
            own["bags"]
            and own["target_share"] >= rule["own_held_out_min"]
            and all(v["target_share"] <= rule["impostor_max"] for v in others.values())
        ),
    }
    candidates = [
        {
            "key": c.key,
            "name": c.name,
            "title": c.title,
            "train_bags": len(train[c.key]),
            "held_out_bags": len(held[c.key]),
        }
        for c in everyone
    ]
    from shelley.eval.verify import Verifier

    z_train = {k: att.z(b) for k, b in train.items()}
    author = z_train[target.key].mean(axis=0)
    impostor_z = np.concatenate([z_train[c.key] for c in impostors])
    held_z = [att.z(held[target.key]), *(att.z(held[c.key]) for c in impostors)]
    truth = [1] * len(held_z[0]) + [0] * sum(len(h) for h in held_z[1:])
    verifier = Verifier.fit(author, impostor_z, np.concatenate(held_z), truth)
    return AttributionTest(
        target.key, target.name, att, bag_words, validity, candidates, dropped or [], names_left_out=left_out,
        verifier=verifier,
    )  # fmt: skip


def fisher_greater(k1: int, n1: int, k0: int, n0: int) -> float:
    """One-sided Fisher exact p that group 1's share (k1/n1) exceeds group 0's (k0/n0)."""
    from scipy.stats import fisher_exact

    if not n1 or not n0:
        return 1.0
    return float(fisher_exact([[k1, n1 - k1], [k0, n0 - k0]], alternative="greater").pvalue)


def verdict(
    validity: dict[str, Any], finetuned: dict[str, Any], base: dict[str, Any], prompted: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The pre-registered pass rule (``PASS_RULE``), each part with its number. With ``prompted`` (the base model
    asked to write like the author) the rule gains issue 48's row: the fine-tuned share must exceed the prompted
    base model's with a one-sided Fisher p below ``p_max`` too."""
    rule = PASS_RULE
    p = fisher_greater(finetuned["target_bags"], finetuned["bags"], base["target_bags"], base["bags"])
    checks = {
        "valid": validity["valid"],
        "finetuned": finetuned["target_share"] >= rule["finetuned_min"],
        "base": base["target_share"] <= rule["base_max"],
        "fisher": p < rule["p_max"],
    }
    out: dict[str, Any] = {"fisher_p": p, "rule": dict(rule)}
    if prompted is not None:
        p2 = fisher_greater(finetuned["target_bags"], finetuned["bags"], prompted["target_bags"], prompted["bags"])
        checks["beats_prompted"] = finetuned["target_share"] > prompted["target_share"] and p2 < rule["p_max"]
        out["prompted_fisher_p"] = p2
    return {"passed": all(checks.values()), "checks": checks, **out}


def pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def describe(r: dict[str, Any]) -> str:
    lo, hi = r["interval"]
    return f"{r['target_bags']}/{r['bags']} bags = {pct(r['target_share'])} (95% CI {pct(lo)}–{pct(hi)})"
