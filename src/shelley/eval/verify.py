"""Open-set verification: is this text by the author, or by someone who is not in the set?

The closed-set SVM must name one of its candidates, so a pastiche can land on the author by elimination.
The General Impostors method (Koppel & Winter 2014, "Determining if two documents are written by the same
author") asks another question. In each of ``rounds`` rounds it keeps a random half of the features and asks
whether the text is closer (cosine, on the attribution's z-scored features) to the author's centroid than to
every impostor bag; the score is the share of rounds the author wins, in [0, 1].

The score is calibrated on the attribution's validity set (the author's held-out bags against every other
author's held-out bags): two thresholds ``lo <= 0.5 <= hi`` are chosen to maximise c@1 there, so a text scores
as *the author's* (above ``hi``), *not the author's* (below ``lo``) or *undecided* (between: reported as 0.5,
which PAN's verification tasks allow and c@1 rewards over a wrong answer). The report gives AUC, c@1, F0.5u and
Brier on that set, as PAN scores authorship verification (pan-webis-de/pan-code).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

ROUNDS = 100
FEATURE_SHARE = 0.5


def c_at_1(truth: list[int], scores: list[float]) -> float:
    """Peñas & Rodrigo (2011): correct answers, plus unanswered ones (score exactly 0.5) credited at the rate
    of correct answers: (nc + nu * nc / n) / n."""
    n = len(truth)
    if not n:
        return 0.0
    nc = sum(1 for t, s in zip(truth, scores, strict=True) if s != 0.5 and (s > 0.5) == bool(t))
    nu = sum(1 for s in scores if s == 0.5)
    return (nc + nu * nc / n) / n


def f05u(truth: list[int], scores: list[float]) -> float:
    """Bevendorff et al. (2019): F0.5 with unanswered (0.5) counted as false negatives."""
    tp = sum(1 for t, s in zip(truth, scores, strict=True) if t and s > 0.5)
    fp = sum(1 for t, s in zip(truth, scores, strict=True) if not t and s > 0.5)
    fn = sum(1 for t, s in zip(truth, scores, strict=True) if t and s < 0.5)
    nu = sum(1 for s in scores if s == 0.5)
    denom = 1.25 * tp + 0.25 * (fn + nu) + fp
    return 1.25 * tp / denom if denom else 0.0


def brier(truth: list[int], scores: list[float]) -> float:
    """PAN's Brier figure: 1 minus the mean squared error of the scores (higher is better)."""
    if not truth:
        return 0.0
    return 1.0 - float(np.mean([(s - t) ** 2 for t, s in zip(truth, scores, strict=True)]))


def auc(truth: list[int], scores: list[float]) -> float | None:
    """Area under the ROC curve (None when one class is missing)."""
    if len(set(truth)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(truth, scores))


def impostor_scores(
    texts: np.ndarray, author: np.ndarray, impostors: np.ndarray, *, rounds: int = ROUNDS, seed: int = 0
) -> np.ndarray:
    """General Impostors: for each row of ``texts`` (z-scored bags), the share of ``rounds`` random feature
    halves in which it is closer to ``author`` (a centroid) than to every row of ``impostors``."""
    rng = np.random.default_rng(seed)
    f = texts.shape[1]
    wins = np.zeros(len(texts))
    for _ in range(rounds):
        keep = rng.choice(f, size=max(1, int(FEATURE_SHARE * f)), replace=False)
        t = _unit(texts[:, keep])
        to_author = t @ _unit(author[None, keep])[0]
        to_impostors = (t @ _unit(impostors[:, keep]).T).max(axis=1)
        wins += to_author > to_impostors
    return wins / rounds


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def calibrate(truth: list[int], raw: list[float]) -> tuple[float, float]:
    """The thresholds ``lo <= 0.5 <= hi`` that maximise c@1 of the three-way answers on a labelled set (ties:
    the narrowest band)."""
    grid = sorted({0.5, *raw})
    best = (-1.0, 0.0, 0.5, 0.5)
    for lo in [g for g in grid if g <= 0.5]:
        for hi in [g for g in grid if g >= 0.5]:
            c = c_at_1(truth, [answer(s, lo, hi) for s in raw])
            key = (c, -(hi - lo))
            if key > best[:2]:
                best = (c, -(hi - lo), lo, hi)
    return best[2], best[3]


def answer(raw: float, lo: float, hi: float) -> float:
    """The calibrated answer: the raw score outside the band, 0.5 (undecided) inside it."""
    return raw if raw > hi or raw < lo else 0.5


@dataclass
class Verifier:
    """General Impostors over an attribution test's features, calibrated on its validity set."""

    author: np.ndarray  # (F,) the target author's centroid of z-scored training bags
    impostors: np.ndarray  # (bags, F) every other author's z-scored training bags
    lo: float = 0.5
    hi: float = 0.5
    validity: dict[str, Any] = field(default_factory=dict)

    def raw(self, z: np.ndarray) -> np.ndarray:
        return impostor_scores(z, self.author, self.impostors)

    def verdicts(self, z: np.ndarray) -> list[dict[str, Any]]:
        out = []
        for s in self.raw(z):
            a = answer(float(s), self.lo, self.hi)
            word = "undecided" if a == 0.5 else "the author's" if a > 0.5 else "not the author's"
            out.append({"score": float(s), "answer": word})
        return out

    @classmethod
    def fit(cls, author: np.ndarray, impostors: np.ndarray, held: np.ndarray, truth: list[int]) -> Verifier:
        v = cls(author, impostors)
        raw = [float(s) for s in v.raw(held)]
        v.lo, v.hi = calibrate(truth, raw)
        answers = [answer(s, v.lo, v.hi) for s in raw]
        v.validity = {
            "bags": len(truth),
            "author_bags": int(sum(truth)),
            "thresholds": [v.lo, v.hi],
            "auc": auc(truth, raw),
            "c_at_1": c_at_1(truth, answers),
            "f05u": f05u(truth, answers),
            "brier": brier(truth, answers),
        }
        return v

    def summarize(self, z: np.ndarray) -> dict[str, Any]:
        """One text's bags: the mean score and how many bags fall in each answer."""
        rows = self.verdicts(z)
        counts = {k: sum(r["answer"] == k for r in rows) for k in ("the author's", "not the author's", "undecided")}
        return {"bags": len(rows), "mean_score": float(np.mean([r["score"] for r in rows])) if rows else 0.0} | counts
