"""Test-set metrics and the figures every run logs."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display in containers or CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    PrecisionRecallDisplay,
    RocCurveDisplay,
    accuracy_score,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)


def metrics(y_true: np.ndarray, proba: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    pred = (proba >= threshold).astype(int)
    return {
        "auc_roc": float(roc_auc_score(y_true, proba)),
        "precision": float(precision_score(y_true, pred, zero_division=0)),
        "recall": float(recall_score(y_true, pred, zero_division=0)),
        "f1": float(f1_score(y_true, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y_true, pred)),
        "log_loss": float(log_loss(y_true, proba, labels=[0, 1])),
    }


def figures(y_true: np.ndarray, proba: np.ndarray, importance: list[tuple[str, float]]) -> dict[str, Figure]:
    """Artifact file name -> figure (closed by the caller after logging)."""
    out: dict[str, Figure] = {}

    fig, ax = plt.subplots(figsize=(5, 5))
    RocCurveDisplay.from_predictions(y_true, proba, ax=ax, name="model")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_title("ROC curve (test set)")
    out["roc_curve.png"] = fig

    fig, ax = plt.subplots(figsize=(5, 5))
    PrecisionRecallDisplay.from_predictions(y_true, proba, ax=ax, name="model")
    ax.set_title("Precision-recall curve (test set)")
    out["precision_recall_curve.png"] = fig

    fig, ax = plt.subplots(figsize=(5, 4.5))
    ConfusionMatrixDisplay.from_predictions(
        y_true, (proba >= 0.5).astype(int), display_labels=["stayed", "exited"], ax=ax, colorbar=False
    )
    ax.set_title("Confusion matrix (threshold 0.5)")
    out["confusion_matrix.png"] = fig

    top = importance[:15][::-1]
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.barh([name for name, _ in top], [value for _, value in top])
    ax.set_title("Feature importance")
    fig.tight_layout()
    out["feature_importance.png"] = fig
    return out
