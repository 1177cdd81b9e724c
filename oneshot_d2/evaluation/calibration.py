"""Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks"): one scalar
T > 0 divides a slice classifier's logits before the softmax, fitted by minimising the negative
log-likelihood on a validation split. The predicted class and the ranking (ROC-AUC) do not
change; the probabilities do. The fitted T is saved with the model (its
``image_cls_temperature`` buffer)."""
from __future__ import annotations

import logging
from typing import Dict

import numpy as np
import torch

from .classification_metrics import brier_score, expected_calibration_error

__all__ = ["fit_temperature", "calibration_summary", "TEMPERATURE_RANGE"]

logger = logging.getLogger(__name__)

# Fitted temperatures are clipped into this range (a degenerate split, e.g. every image right
# with probability 1, would drive T to 0 or infinity).
TEMPERATURE_RANGE = (0.05, 20.0)


def _nll(log_probs: torch.Tensor, labels: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(log_probs / temperature, labels)


def fit_temperature(log_probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the mean NLL of ``softmax(log_probs / T)``.

    Args:
        log_probs: (M, C) logits or log-probabilities of the uncalibrated model (T = 1); the
            softmax is shift-invariant, so either gives the same T.
        labels: (M,) true class ids.
    Returns:
        T in :data:`TEMPERATURE_RANGE` (1.0 without images).
    """
    if len(labels) == 0:
        return 1.0
    from scipy.optimize import minimize_scalar

    x = torch.as_tensor(np.asarray(log_probs), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)

    def nll_of_inverse(beta: float) -> float:  # convex in beta = 1 / T: one minimum
        with torch.no_grad():
            return float(_nll(x, y, torch.tensor(1.0 / beta, dtype=torch.float64)))

    lo, hi = 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]
    beta = minimize_scalar(nll_of_inverse, bounds=(lo, hi), method="bounded",
                           options={"xatol": 1e-6}).x
    return float(np.clip(1.0 / beta, *TEMPERATURE_RANGE))


def calibration_summary(log_probs: np.ndarray, labels: np.ndarray,
                        temperature: float) -> Dict[str, float]:
    """NLL, expected calibration error (percent) and Brier score of ``softmax(log_probs / T)``
    at T = 1 and at ``temperature`` (keys ``*_before`` / ``*_after``)."""
    x = torch.as_tensor(np.asarray(log_probs), dtype=torch.float64)
    y = np.asarray(labels)
    out: Dict[str, float] = {"temperature": float(temperature), "num_images": int(len(y))}
    for tag, t in (("before", 1.0), ("after", float(temperature))):
        probs = torch.softmax(x / t, dim=1).numpy()
        out[f"nll_{tag}"] = float(_nll(x, torch.as_tensor(y, dtype=torch.long),
                                       torch.tensor(t, dtype=torch.float64)))
        out[f"ece_{tag}"] = 100.0 * expected_calibration_error(y, probs)
        out[f"brier_{tag}"] = brier_score(y, probs)
    return out
