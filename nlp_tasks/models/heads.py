"""Classification heads fitted on the embeddings of a few labelled examples: nearest centroid or logistic.

Both are one linear map over a normalized embedding, scores = embedding @ weights.T + bias:
`centroid` scores each label by the cosine similarity to the mean of its examples' embeddings;
`logistic` is multinomial logistic regression (L2-regularized as scikit-learn's default, C=1),
its scores the labels' probabilities. A head is a plain dict of lists, so it travels in JSON:
in the output's manifest, and to every actor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HEADS = ("centroid", "logistic")


def fit_head(kind: str, embeddings: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Fit `kind` on normalized `embeddings` (rows) and their `labels`; labels are kept in sorted order."""
    names = sorted(set(labels))
    targets = np.array([names.index(label) for label in labels])
    if kind == "centroid":
        centroids = np.stack([embeddings[targets == index].mean(axis=0) for index in range(len(names))])
        weights = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        bias = np.zeros(len(names))
    elif kind == "logistic":
        weights, bias = _logistic(embeddings, targets, len(names))
    else:
        raise ValueError(f"unknown head {kind!r}; known: {', '.join(HEADS)}")
    return {"kind": kind, "labels": names, "weights": weights.astype(np.float32).tolist(),
            "bias": bias.astype(np.float32).tolist()}


def _logistic(embeddings: np.ndarray, targets: np.ndarray, classes: int, c: float = 1.0) -> tuple[np.ndarray, ...]:
    """Minimize sum of cross-entropies + ||weights||^2 / (2C) with L-BFGS (the bias is not penalized)."""
    import torch

    features = torch.tensor(embeddings, dtype=torch.float64)
    truth = torch.tensor(targets)
    weights = torch.zeros(classes, features.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=500, tolerance_grad=1e-8, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(features @ weights.T + bias, truth, reduction="sum")
        value = value + (weights ** 2).sum() / (2 * c)
        value.backward()
        return value

    optimizer.step(loss)
    return weights.detach().numpy(), bias.detach().numpy()


def head_scores(head: dict[str, Any], embeddings: np.ndarray) -> np.ndarray:
    """Each label's score for each normalized embedding (rows): similarities, or probabilities."""
    logits = embeddings @ np.asarray(head["weights"], np.float32).T + np.asarray(head["bias"], np.float32)
    if head["kind"] == "centroid":
        return logits
    exponents = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exponents / exponents.sum(axis=-1, keepdims=True)
