"""Does an explanation agree with the attention, and is it faithful to the model?

- :func:`rank_agreement`: Spearman rank correlation and top-k overlap between two (F, T) maps;
  :func:`attention_agreement` compares an attribution with the model's attention rollout
  (upsampled from the last token grid to F x T).
- :func:`deletion_curve` / :func:`insertion_curve` (Petsiuk et al. 2018): cells are removed from
  the spectrogram (or revealed on a baseline) in order of attribution, most attributed first,
  and the target probability is recorded. A faithful map makes deletion fall fast (small area)
  and insertion rise fast (large area)::

      attr = attribute(clf, wave, method="integrated_gradients")
      curve = deletion_curve(clf, attr)
      curve.fractions, curve.probs, curve.auc
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AscaError
from ..scores import trapezoid_auc
from .attribution import Attribution, make_baseline


@dataclass
class Curve:
    """Target probability against the fraction of cells removed (deletion) or revealed (insertion).

    Shapes: fractions and probs (steps + 1,).
    """

    kind: str
    fractions: np.ndarray
    probs: np.ndarray
    auc: float
    target: int
    label: str
    baseline: str


@dataclass
class Agreement:
    """Rank agreement of two maps over their F x T cells."""

    spearman: float
    topk_overlap: float  # |top-k(a) ∩ top-k(b)| / k
    k: int


def _values(values: np.ndarray, mode: str) -> np.ndarray:
    if mode == "signed":
        return values
    if mode == "absolute":
        return np.abs(values)
    if mode == "positive":
        return np.clip(values, 0.0, None)
    raise AscaError(f"mode must be signed, absolute or positive, got {mode!r}")


def rank_agreement(a: np.ndarray, b: np.ndarray, top_fraction: float = 0.1) -> Agreement:
    """Spearman correlation and top-k overlap of two equally shaped maps.

    ``k = round(top_fraction * cells)``; chance-level overlap is ``top_fraction``.

    Shapes: a, b (F, T).
    """
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise AscaError(f"maps of different sizes cannot be compared: {a.size} and {b.size} cells")
    if not 0.0 < top_fraction <= 1.0:
        raise AscaError(f"top_fraction must be in (0, 1], got {top_fraction}")
    k = max(1, int(round(top_fraction * a.size)))
    top_a = set(np.argpartition(-a, k - 1)[:k].tolist())
    top_b = set(np.argpartition(-b, k - 1)[:k].tolist())
    rho = spearmanr(a, b).statistic if a.std() > 0 and b.std() > 0 else 0.0
    return Agreement(spearman=float(rho), topk_overlap=len(top_a & top_b) / k, k=k)


def _single_window(attribution: Attribution) -> tuple[torch.Tensor, tuple[slice, slice]]:
    if attribution.inputs is None or attribution.cells is None:
        raise AscaError(
            "this needs a one-window attribution (a clip no longer than the run's window, "
            "cropped input shape); attribute a single clip"
        )
    return attribution.inputs, attribution.cells


def rollout_map(classifier, attribution: Attribution) -> np.ndarray:
    """Attention rollout of the attributed clip, as an (F, T) map aligned with ``attribution.map``.

    Each token's relevance is the mean rollout weight it receives over all queries (the head
    pools every token equally), upsampled bilinearly from the last grid to the model input.

    Shapes: returns (F, T) like ``attribution.map``.
    """
    from .attention import attention_rollout, capture_attention

    inputs, (rows, cols) = _single_window(attribution)
    model = classifier.model
    with torch.no_grad(), capture_attention(model) as maps:
        model(inputs.to(classifier.device))
    if not maps:
        raise AscaError(f"model layout {getattr(model, 'layout', '?')} has no attention to roll out")
    last = maps[list(maps)[-1]]
    roll = attention_rollout(maps)[0]  # (N, N)
    p = last.prefix_tokens
    relevance = roll[p:, p:].mean(0).reshape(1, 1, *last.grid).float()  # (1, 1, H, W)
    up = F.interpolate(relevance, size=tuple(inputs.shape[-2:]), mode="bilinear", align_corners=False)
    return up[0, 0, rows, cols].cpu().numpy()


def attention_agreement(
    classifier, attribution: Attribution, top_fraction: float = 0.1, mode: str = "absolute"
) -> Agreement:
    """Rank agreement between an attribution (``absolute`` value by default) and attention rollout."""
    return rank_agreement(_values(attribution.map, mode), rollout_map(classifier, attribution), top_fraction)


def _order(values: np.ndarray, seed: int) -> np.ndarray:
    """Flat cell indices, most attributed first; ties broken by a seeded shuffle."""
    flat = values.ravel()
    shuffle = np.random.default_rng(seed).permutation(flat.size)
    return shuffle[np.argsort(-flat[shuffle], kind="stable")]


@torch.no_grad()
def _curve(
    classifier,
    attribution: Attribution,
    kind: str,
    values: np.ndarray | None,
    steps: int,
    baseline: str,
    mode: str,
    batch_size: int,
    seed: int,
) -> Curve:
    inputs, (rows, cols) = _single_window(attribution)
    values = attribution.map if values is None else np.asarray(values)
    if values.shape != attribution.map.shape:
        raise AscaError(f"values of shape {values.shape} do not match the map {attribution.map.shape}")
    if int(steps) < 1:
        raise AscaError(f"steps must be >= 1, got {steps}")
    x = inputs.to(classifier.device).float()
    base = make_baseline(x, baseline, classifier.extractor)
    order = torch.from_numpy(_order(_values(values, mode), seed)).to(x.device)
    n = order.numel()
    fractions = np.linspace(0.0, 1.0, int(steps) + 1)
    region_x = x[0, 0, rows, cols].flatten()
    region_b = base[0, 0, rows, cols].flatten()
    region_shape = tuple(x[0, 0, rows, cols].shape)  # (F, T)
    # rank[i] = position of cell i in the order: cell i is switched once rank < count.
    rank = torch.empty_like(order)
    rank[order] = torch.arange(n, device=x.device)
    probs = []
    for i in range(0, len(fractions), int(batch_size)):
        counts = torch.tensor([int(round(f * n)) for f in fractions[i : i + batch_size]], device=x.device)
        switched = rank[None, :] < counts[:, None]  # (b, n)
        src, dst = (region_x, region_b) if kind == "deletion" else (region_b, region_x)
        cells = torch.where(switched, dst[None], src[None])  # (b, n)
        batch = (x if kind == "deletion" else base).repeat(len(counts), 1, 1, 1)
        batch[:, 0, rows, cols] = cells.view(len(counts), *region_shape)
        logits = classifier.model(batch)
        probs.append(classifier.probabilities(logits.float())[:, attribution.target].cpu())
    p = torch.cat(probs).numpy()
    return Curve(
        kind=kind,
        fractions=fractions,
        probs=p,
        auc=trapezoid_auc(p, fractions),
        target=attribution.target,
        label=attribution.label,
        baseline=baseline,
    )


def deletion_curve(
    classifier,
    attribution: Attribution,
    values: np.ndarray | None = None,
    steps: int = 20,
    baseline: str = "blur",
    mode: str = "signed",
    batch_size: int = 8,
    seed: int = 0,
) -> Curve:
    """Remove the most attributed cells first (replaced by the ``baseline``) and track p(target).

    ``values`` ranks the cells instead of ``attribution.map`` (e.g. a random map as a control);
    ``mode`` ranks by the ``signed`` value (evidence for the class first), ``absolute`` or
    ``positive`` value. The default ``blur`` baseline replaces a cell by a Gaussian-blurred copy
    of the spectrogram: cells set to ``silence`` one by one leave a speckle the model never saw in
    training, and on the demo model 5% of random cells so replaced already destroyed the score,
    so every ranking, good or random, gave the same curve.

    Shapes: values (F, T) like the map; returns a curve of ``steps + 1`` points.
    """
    return _curve(classifier, attribution, "deletion", values, steps, baseline, mode, batch_size, seed)


def insertion_curve(
    classifier,
    attribution: Attribution,
    values: np.ndarray | None = None,
    steps: int = 20,
    baseline: str = "blur",
    mode: str = "signed",
    batch_size: int = 8,
    seed: int = 0,
) -> Curve:
    """Start from the ``baseline`` and reveal the most attributed cells first; track p(target)."""
    return _curve(classifier, attribution, "insertion", values, steps, baseline, mode, batch_size, seed)


def random_map(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A uniformly random ranking of the cells: the control every attribution should beat."""
    return np.random.default_rng(seed).random(shape)


__all__ = [
    "Agreement",
    "Curve",
    "attention_agreement",
    "deletion_curve",
    "insertion_curve",
    "random_map",
    "rank_agreement",
    "rollout_map",
]
