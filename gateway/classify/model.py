"""Features, training, evaluation and the model file (needs deskgate[classify]).

Features are hashed word 1-2-grams and character 3-5-grams (within words), with
sublinear TF and IDF weights, L2-normalised: no vocabulary to store, so the model
is a few arrays. Each head (queue, priority) is a linear model — logistic
regression (SGD) or complement naive Bayes, whichever scores better on the
held-out split — kept as a coefficient matrix and an intercept.

The model file is `<dir>/model.json` (metadata: training date, classes, sample
counts, evaluation) naming a `.npz` of plain numeric arrays, loaded with
allow_pickle=False and checked against the SHA-256 the metadata records: loading
a model cannot run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer

from gateway.classify.data import Example
from gateway.classify.meta import FORMAT, META, ModelError, read_meta

Progress = Callable[[str], None]

FEATURES: dict[str, Any] = {"word_ngrams": [1, 2], "char_ngrams": [3, 5],
                            "word_features": 2 ** 17, "char_features": 2 ** 17}
ALGORITHMS = ("sgd-logistic", "complement-nb")
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def _quiet(msg: str) -> None:
    pass


# ------------------------------------------------------------------ features


class Featurizer:
    """Text → hashed, TF-IDF weighted, L2-normalised sparse rows."""

    def __init__(self, params: dict[str, Any], idf: np.ndarray | None = None) -> None:
        self.params = params
        wn, cn = params["word_ngrams"], params["char_ngrams"]
        self.word = HashingVectorizer(n_features=int(params["word_features"]),
                                      ngram_range=(int(wn[0]), int(wn[1])),
                                      alternate_sign=False, norm=None, lowercase=True)
        self.char = HashingVectorizer(n_features=int(params["char_features"]),
                                      analyzer="char_wb", ngram_range=(int(cn[0]), int(cn[1])),
                                      alternate_sign=False, norm=None, lowercase=True)
        self.dim = int(params["word_features"]) + int(params["char_features"])
        self.idf = idf

    def counts(self, texts: Sequence[str]) -> sp.csr_matrix:
        x = sp.hstack([self.word.transform(texts), self.char.transform(texts)], format="csr")
        x.data = 1.0 + np.log(x.data)          # sublinear term frequency
        return x

    def fit_idf(self, x: sp.csr_matrix) -> None:
        df = np.bincount(x.indices, minlength=self.dim)
        n = x.shape[0]
        self.idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)

    def weight(self, x: sp.csr_matrix) -> sp.csr_matrix:
        assert self.idf is not None
        x = x.multiply(self.idf[np.newaxis, :]).tocsr().astype(np.float32)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        return sp.csr_matrix(sp.diags(1.0 / norms) @ x, dtype=np.float32)

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        return self.weight(self.counts(texts))

    def one(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The row of one text as (columns, values): the same numbers as transform(),
        without the sparse-matrix bookkeeping that dominates for a single message."""
        assert self.idf is not None
        w = self.word.transform([text])
        c = self.char.transform([text])
        idx = np.concatenate([w.indices, c.indices + int(self.params["word_features"])])
        val = (1.0 + np.log(np.concatenate([w.data, c.data]))) * self.idf[idx]
        norm = float(np.sqrt(np.dot(val, val)))
        return idx, (val / norm if norm else val).astype(np.float32)


# ------------------------------------------------------------------ heads


@dataclass
class Head:
    """One linear classifier: scores = X @ coef.T + intercept; the link turns them into
    confidences that add up to 1."""

    classes: list[str]
    coef: np.ndarray            # (k, d) float32
    intercept: np.ndarray       # (k,) float32
    algorithm: str = "sgd-logistic"
    link: str = "ovr"           # ovr: normalised one-vs-rest sigmoids; softmax
    samples: dict[str, int] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)

    def _link(self, scores: np.ndarray) -> np.ndarray:
        if self.link == "ovr":
            e = 1.0 / (1.0 + np.exp(-np.clip(scores, -50, 50)))
        else:
            e = np.exp(scores - scores.max(axis=-1, keepdims=True))
        total = e.sum(axis=-1, keepdims=True)
        return np.asarray(e / np.where(total > 0, total, 1.0))

    def proba(self, x: sp.csr_matrix) -> np.ndarray:
        return self._link(np.asarray(x @ self.coef.T) + self.intercept)

    def proba_one(self, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
        """One row given as its nonzero columns: a gather instead of a sparse product."""
        return self._link(self.coef[:, indices] @ values + self.intercept)


def fit_head(x: sp.csr_matrix, y: Sequence[str], algorithm: str) -> Head:
    if algorithm == "sgd-logistic":
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import SGDClassifier

        clf = SGDClassifier(loss="log_loss", alpha=1e-5, max_iter=50, tol=1e-4,
                            random_state=0)
        with warnings.catch_warnings():
            # 50 epochs are plenty for text; the held-out figures say how good it is.
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(x, list(y))
        coef = np.asarray(clf.coef_, dtype=np.float32)
        intercept = np.asarray(clf.intercept_, dtype=np.float32)
        classes = [str(c) for c in clf.classes_]
        if len(classes) == 2:              # one score z: the classes are -z and z
            coef = np.vstack([-coef, coef])
            intercept = np.array([-intercept[0], intercept[0]], dtype=np.float32)
        link = "ovr"
    elif algorithm == "complement-nb":
        from sklearn.naive_bayes import ComplementNB

        nb = ComplementNB(alpha=0.3)
        nb.fit(x, list(y))
        coef = np.asarray(nb.feature_log_prob_, dtype=np.float32)
        classes = [str(c) for c in nb.classes_]
        intercept = np.zeros(len(classes), dtype=np.float32)
        link = "softmax"
    else:
        raise ValueError(f"unknown algorithm {algorithm!r}")
    return Head(classes=classes, coef=coef, intercept=intercept, algorithm=algorithm,
                link=link, samples=dict(sorted(Counter(y).items())))


# ------------------------------------------------------------------ evaluation


def report(y_true: Sequence[str], proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall, confusion matrix, thresholds."""
    pred_idx = proba.argmax(axis=1)
    conf = proba.max(axis=1)
    pred = [classes[i] for i in pred_idx]
    labels = sorted(set(y_true) | set(classes))
    pos = {c: i for i, c in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true, pred, strict=True):
        cm[pos[t], pos[p]] += 1
    per_class: dict[str, dict[str, float | int]] = {}
    f1s = []
    for c, i in pos.items():
        tp = int(cm[i, i])
        prec = tp / cm[:, i].sum() if cm[:, i].sum() else 0.0
        rec = tp / cm[i, :].sum() if cm[i, :].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[c] = {"precision": round(float(prec), 4), "recall": round(float(rec), 4),
                        "f1": round(float(f1), 4), "support": int(cm[i, :].sum())}
        if cm[i, :].sum():
            f1s.append(f1)
    n = len(y_true)
    correct = np.array([t == p for t, p in zip(y_true, pred, strict=True)])
    majority = Counter(y_true).most_common(1)[0][1] / n if n else 0.0
    thresholds = []
    for th in THRESHOLDS:
        keep = conf >= th
        covered = int(keep.sum())
        thresholds.append({"threshold": th, "coverage": round(covered / n, 4) if n else 0.0,
                           "accuracy": round(float(correct[keep].mean()), 4) if covered
                           else None})
    return {"samples": n, "accuracy": round(float(correct.mean()), 4) if n else 0.0,
            "macro_f1": round(float(np.mean(f1s)), 4) if f1s else 0.0,
            "majority_baseline": round(float(majority), 4),
            "per_class": per_class, "labels": labels, "confusion": cm.tolist(),
            "thresholds": thresholds}


def stratified_folds(y: Sequence[str], k: int, seed: int = 7) -> list[np.ndarray]:
    """k disjoint index sets, each class spread evenly over them."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(y):
        by_class.setdefault(label, []).append(i)
    offset = 0
    for label in sorted(by_class):
        idx = np.array(by_class[label])
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[(j + offset) % k].append(int(i))
        offset += len(idx)
    return [np.array(sorted(f), dtype=np.int64) for f in folds]


# ------------------------------------------------------------------ training


@dataclass
class Model:
    """A loaded or freshly trained model: featurizer + queue head (+ priority head)."""

    featurizer: Featurizer
    queue: Head
    priority: Head | None
    meta: dict[str, Any]

    @property
    def trained_at(self) -> str:
        return str(self.meta.get("trained_at", ""))

    def predict(self, text: str) -> dict[str, Any]:
        """Queue and priority with confidences and the queue's runner-up."""
        idx, vals = self.featurizer.one(text)
        out: dict[str, Any] = {}
        p = self.queue.proba_one(idx, vals)
        order = np.argsort(p)[::-1]
        out["queue"] = self.queue.classes[order[0]]
        out["confidence"] = round(float(p[order[0]]), 4)
        if len(order) > 1:
            out["runner_up"] = self.queue.classes[order[1]]
            out["runner_up_confidence"] = round(float(p[order[1]]), 4)
        if self.priority is not None:
            pp = self.priority.proba_one(idx, vals)
            j = int(pp.argmax())
            out["priority"] = self.priority.classes[j]
            out["priority_confidence"] = round(float(pp[j]), 4)
        return out


def _labels(examples: Sequence[Example], attr: str, min_per_class: int) -> list[int]:
    """Indices of the examples whose label of `attr` has at least min_per_class examples."""
    counts = Counter(getattr(e, attr) for e in examples)
    return [i for i, e in enumerate(examples) if counts[getattr(e, attr)] >= min_per_class]


def _split(y: Sequence[str], holdout: float, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    k = max(2, round(1 / holdout))
    folds = stratified_folds(y, k, seed)
    test = folds[0]
    train = np.array(sorted(set(range(len(y))) - set(test.tolist())), dtype=np.int64)
    return train, test


def _evaluate_head(x: sp.csr_matrix, y: list[str], algorithms: Sequence[str],
                   train: np.ndarray, test: np.ndarray, progress: Progress
                   ) -> tuple[str, dict[str, dict[str, Any]]]:
    """Fit each algorithm on `train`, score on `test`; the best by macro-F1 wins."""
    results: dict[str, dict[str, Any]] = {}
    for algo in algorithms:
        t0 = time.perf_counter()
        head = fit_head(x[train], [y[i] for i in train], algo)
        rep = report([y[i] for i in test], head.proba(x[test]), head.classes)
        rep["fit_seconds"] = round(time.perf_counter() - t0, 2)
        results[algo] = rep
        progress(f"  {algo}: held-out accuracy {rep['accuracy']:.3f}, macro-F1 "
                 f"{rep['macro_f1']:.3f} ({rep['fit_seconds']} s)")
    best = max(results, key=lambda a: (results[a]["macro_f1"], results[a]["accuracy"]))
    return best, results


def train(examples: Sequence[Example], *, min_per_class: int = 20, holdout: float = 0.2,
          with_priority: bool = True, algorithms: Sequence[str] = ALGORITHMS,
          progress: Progress = _quiet, info: dict[str, Any] | None = None) -> Model:
    """Held-out evaluation of each algorithm, then the winner refitted on all examples."""
    keep = _labels(examples, "queue", min_per_class)
    qclasses = sorted({examples[i].queue for i in keep})
    if len(qclasses) < 2:
        raise ModelError(f"need at least two queues with {min_per_class} tickets each to "
                         f"learn from; found {len(qclasses)} ({len(examples)} tickets)")
    t0 = time.perf_counter()
    progress(f"featurising {len(examples)} tickets")
    feat = Featurizer(dict(FEATURES))
    counts = feat.counts([e.text for e in examples])
    feat.fit_idf(counts)
    x = feat.weight(counts)
    progress(f"  {x.shape[0]} x {x.shape[1]} features, {x.nnz} nonzero "
             f"({time.perf_counter() - t0:.1f} s)")

    xq, yq = x[keep], [examples[i].queue for i in keep]
    progress(f"queue: {len(keep)} tickets in {len(qclasses)} queues")
    tr, te = _split(yq, holdout)
    best, results = _evaluate_head(xq, yq, algorithms, tr, te, progress)
    progress(f"  refitting {best} on all {len(keep)} tickets")
    qhead = fit_head(xq, yq, best)
    qhead.evaluation = {**results[best], "holdout": holdout,
                        "candidates": {a: {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
                                       for a, r in results.items()}}

    phead = None
    if with_priority:
        pkeep = _labels(examples, "priority", min_per_class)
        pclasses = sorted({examples[i].priority for i in pkeep})
        if len(pclasses) >= 2:
            xp, yp = x[pkeep], [examples[i].priority for i in pkeep]
            progress(f"priority: {len(pkeep)} tickets in {len(pclasses)} priorities")
            tr, te = _split(yp, holdout)
            pbest, presults = _evaluate_head(xp, yp, algorithms, tr, te, progress)
            phead = fit_head(xp, yp, pbest)
            phead.evaluation = {**presults[pbest], "holdout": holdout}
        else:
            progress(f"priority: not learnt (fewer than two priorities with {min_per_class} "
                     "tickets)")
    # Microseconds: moves made in the second before training must not count as after it.
    trained_at = datetime.now(UTC).isoformat(timespec="microseconds")
    meta = {"format": FORMAT, "trained_at": trained_at,
            "tickets": len(examples), "min_per_class": min_per_class, "features": feat.params,
            "train_seconds": round(time.perf_counter() - t0, 2), **(info or {})}
    return Model(feat, qhead, phead, meta)


def cross_validate(examples: Sequence[Example], *, folds: int = 5, min_per_class: int = 20,
                   attr: str = "queue", algorithms: Sequence[str] = ALGORITHMS,
                   progress: Progress = _quiet) -> dict[str, Any]:
    """Stratified k-fold cross-validation of each algorithm on one label (queue|priority).

    The IDF weights are learnt on each fold's training part only.
    """
    keep = _labels(examples, attr, min_per_class)
    ex = [examples[i] for i in keep]
    y = [getattr(e, attr) for e in ex]
    if len(set(y)) < 2:
        raise ModelError(f"need at least two {attr} values with {min_per_class} tickets each")
    feat = Featurizer(dict(FEATURES))
    progress(f"featurising {len(ex)} tickets")
    counts = feat.counts([e.text for e in ex])
    parts = stratified_folds(y, folds)
    out: dict[str, Any] = {"label": attr, "folds": folds, "samples": len(ex),
                           "classes": dict(sorted(Counter(y).items())), "algorithms": {}}
    classes = sorted(set(y))
    col = {c: j for j, c in enumerate(classes)}
    for algo in algorithms:
        proba = np.zeros((len(ex), len(classes)))
        for k, test in enumerate(parts):
            train_idx = np.concatenate([p for j, p in enumerate(parts) if j != k])
            feat.fit_idf(counts[train_idx])
            head = fit_head(feat.weight(counts[train_idx]), [y[i] for i in train_idx], algo)
            p = head.proba(feat.weight(counts[test]))
            for j, c in enumerate(head.classes):     # a class may miss from a training part
                proba[test, col[c]] = p[:, j]
            progress(f"  {algo}: fold {k + 1}/{folds}")
        out["algorithms"][algo] = report(y, proba, classes)
    best = max(out["algorithms"], key=lambda a: out["algorithms"][a]["macro_f1"])
    out["best"] = best
    return out


# ------------------------------------------------------------------ storage


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _head_meta(h: Head) -> dict[str, Any]:
    return {"classes": h.classes, "algorithm": h.algorithm, "link": h.link,
            "samples": h.samples,
            "evaluation": h.evaluation}


def save(model: Model, directory: Path) -> Path:
    """Write the arrays under a new name, then switch model.json to them atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + f"-{os.getpid()}"
    npz = directory / f"model-{stamp}.npz"
    assert model.featurizer.idf is not None
    arrays: dict[str, np.ndarray] = {"idf": model.featurizer.idf,
                                     "queue_coef": model.queue.coef,
                                     "queue_intercept": model.queue.intercept}
    if model.priority is not None:
        arrays["priority_coef"] = model.priority.coef
        arrays["priority_intercept"] = model.priority.intercept
    tmp = npz.with_suffix(".tmp")
    with tmp.open("wb") as f:
        np.savez_compressed(f, allow_pickle=False, **arrays)
    tmp.replace(npz)
    meta = {**model.meta, "file": npz.name, "sha256": _sha256(npz),
            "queue": _head_meta(model.queue),
            "priority": _head_meta(model.priority) if model.priority else None}
    model.meta = meta
    mtmp = directory / f".{META}.tmp"
    mtmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    mtmp.replace(directory / META)
    for old in directory.glob("model-*.npz"):       # earlier models nobody points to
        if old.name != npz.name:
            old.unlink(missing_ok=True)
    return directory / META


def _array(data: Any, name: str, ndim: int, path: Path) -> np.ndarray:
    if name not in data.files:
        raise ModelError(f"{path}: array {name!r} missing")
    try:
        arr = data[name]
    except ValueError as exc:      # an object array: it would need pickle to load
        raise ModelError(f"{path}: array {name!r} refused: {exc}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f" or arr.ndim != ndim:
        raise ModelError(f"{path}: array {name!r} is not a {ndim}-d float array")
    if not np.all(np.isfinite(arr)):
        raise ModelError(f"{path}: array {name!r} holds NaN or infinity")
    return arr.astype(np.float32, copy=False)


def load(directory: Path) -> Model:
    """Load and check a model; every problem is a ModelError (never a pickle load)."""
    meta = read_meta(directory)
    name = str(meta.get("file", ""))
    if not name or "/" in name or name.startswith("."):
        raise ModelError(f"{directory / META}: bad file name {name!r}")
    path = directory / name
    try:
        digest = _sha256(path)
    except OSError as exc:
        raise ModelError(f"{path}: {exc.strerror or exc}") from None
    if digest != meta.get("sha256"):
        raise ModelError(f"{path}: SHA-256 differs from {META} (replaced or damaged)")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise ModelError(f"{path}: not a model archive: {exc}") from None
    with data:
        idf = _array(data, "idf", 1, path)
        heads: dict[str, Head | None] = {}
        for key in ("queue", "priority"):
            hm = meta.get(key)
            if hm is None:
                heads[key] = None
                continue
            classes = hm.get("classes")
            if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
                raise ModelError(f"{directory / META}: {key}.classes is not a list of names")
            coef = _array(data, f"{key}_coef", 2, path)
            intercept = _array(data, f"{key}_intercept", 1, path)
            if coef.shape != (len(classes), idf.shape[0]) or intercept.shape != (len(classes),):
                raise ModelError(f"{path}: {key} arrays do not match {len(classes)} classes "
                                 f"and {idf.shape[0]} features")
            heads[key] = Head(classes=classes, coef=coef, intercept=intercept,
                              algorithm=str(hm.get("algorithm", "")),
                              link="softmax" if hm.get("link") == "softmax" else "ovr",
                              samples=dict(hm.get("samples") or {}),
                              evaluation=dict(hm.get("evaluation") or {}))
    feat_params = meta.get("features")
    try:
        assert isinstance(feat_params, dict)
        feat = Featurizer(feat_params, idf)
    except Exception as exc:
        raise ModelError(f"{directory / META}: bad features: {exc}") from None
    if feat.dim != idf.shape[0]:
        raise ModelError(f"{path}: {idf.shape[0]} IDF weights for {feat.dim} features")
    queue = heads["queue"]
    if queue is None:
        raise ModelError(f"{directory / META}: no queue head")
    return Model(feat, queue, heads["priority"], meta)
