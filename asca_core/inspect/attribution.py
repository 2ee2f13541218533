"""Why did the model decide? Captum attributions on the spectrogram, behind one call.

:func:`attribute` explains a clip or a long recording with one of five methods and returns an
:class:`Attribution` whose ``map`` is aligned cell for cell with ``spec``, the spectrogram the model
sees (mel padding and time padding cropped)::

    clf = Classifier.from_run("runs/demo")
    attr = attribute(clf, "clip.wav", method="integrated_gradients", baseline="silence")
    attr.map.shape == attr.spec.shape        # (n_mels, frames)
    attr.times, attr.freqs                   # seconds and Hz of every column and row

Methods: ``integrated_gradients`` (baselines ``silence`` or ``blur``; ``n_steps``,
``internal_batch_size``), ``saliency`` (``abs``), ``occlusion`` over time-frequency patches
(``patch=(mel bins, frames)``, ``stride``, ``perturbations_per_eval``; both batch sizes default to
what suits the input, :func:`batch_size_for`), ``gradcam_conv`` (LayerGradCam on the last
convolution stage) and ``gradcam_attention`` (on the last attention stage), upsampled to
the input grid. A recording longer than one window is attributed window by window (streamed from
disk) and stitched into one full-length map, so memory is bounded by one window's batch.

Hooks that Captum (or this module) registers are always removed, even when the forward fails.
They are never registered on the classifier's own model: each call hooks a private copy of the
module tree that shares the model's parameters and buffers (:func:`~.hooks.private_model`), so
threads sharing one classifier (browser sessions of the app) can attribute and predict at once.

The placing of cells in seconds and Hz lives in :mod:`.grid`, the hooks in :mod:`.hooks`, and
:func:`~.sonify.explain_audio`, which turns a map into sound, in :mod:`.sonify`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import AscaError
from ..features import FeatureExtractor, normalize
from ..utils import rows_per_pass
from .grid import WindowGrid, frame_times, mel_frequencies, to_raw, total_frames, window_grid
from .hooks import gradcam_layer, grid_view, hooks_removed, private_model
from .sonify import explain_audio

METHODS = ("integrated_gradients", "saliency", "occlusion", "gradcam_conv", "gradcam_attention")
BASELINES = ("silence", "blur")
# Options each method understands (anything else is a user error, named in the message).
_OPTIONS = {
    "integrated_gradients": {"n_steps", "internal_batch_size", "integration", "blur_sigma", "output"},
    "saliency": {"abs", "output"},
    "occlusion": {"patch", "stride", "perturbations_per_eval", "blur_sigma", "output"},
    "gradcam_conv": {"relu", "layer", "output"},
    "gradcam_attention": {"relu", "layer", "output"},
}
_DEFAULTS: dict[str, Any] = {
    "n_steps": 32,
    "internal_batch_size": None,
    "integration": "gausslegendre",
    "blur_sigma": (4.0, 16.0),
    "abs": True,
    "patch": (16, 16),
    "stride": (8, 8),
    "perturbations_per_eval": None,
    "relu": True,
    "layer": None,
    "output": "logit",
}


@dataclass
class Attribution:
    """An attribution map aligned with the spectrogram the model sees.

    ``map`` and ``spec`` are (F, T) with F = n_mels (mel padding cropped) and T the frames the
    model saw (time padding cropped; for a long recording, the stitched frames of every window).
    Column ``j`` is centred at ``times[j]`` seconds of the recording, row ``i`` at ``freqs[i]`` Hz.
    """

    map: np.ndarray  # (F, T)
    spec: np.ndarray  # (F, T) normalised log-Mel, as the model sees it
    times: np.ndarray  # (T,) seconds
    freqs: np.ndarray  # (F,) Hz, mel-bin centre frequencies
    target: int
    label: str
    method: str
    meta: dict[str, Any] = field(default_factory=dict)
    inputs: Tensor | None = None  # (1, 1, F', T') model input of a one-window attribution
    cells: tuple[slice, slice] | None = None  # where map sits inside ``inputs`` (crop mode)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.map.shape[0]), int(self.map.shape[1])

    def time_profile(self, mode: str = "positive") -> np.ndarray:
        """Attribution per frame summed over frequency (``positive``, ``absolute`` or ``signed``).

        Shapes: returns (T,).
        """
        return _reduce(self.map, mode).sum(axis=0)

    def share_in_span(self, start: float, end: float, mode: str = "positive") -> float:
        """Fraction of the attribution mass in frames centred inside ``[start, end]`` seconds."""
        profile = self.time_profile(mode)
        total = float(profile.sum())
        if total <= 0:
            return 0.0
        inside = (self.times >= start) & (self.times <= end)
        return float(profile[inside].sum()) / total

    def span_time_share(self, start: float, end: float) -> float:
        """Fraction of the map's frames centred inside ``[start, end]`` seconds (the chance level)."""
        inside = (self.times >= start) & (self.times <= end)
        return float(inside.mean()) if inside.size else 0.0


def _reduce(values: np.ndarray, mode: str) -> np.ndarray:
    if mode == "positive":
        return np.clip(values, 0.0, None)
    if mode == "absolute":
        return np.abs(values)
    if mode == "signed":
        return values
    raise AscaError(f"mode must be positive, absolute or signed, got {mode!r}")


# -- baselines ----------------------------------------------------------------------------------
def _gaussian_blur(x: Tensor, sigma: tuple[float, float]) -> Tensor:
    """Separable Gaussian blur over (freq, time) with reflected edges. Shapes: (B, C, F, T) -> same."""
    out = x
    for axis, s in ((2, float(sigma[0])), (3, float(sigma[1]))):
        if s <= 0:
            continue
        radius = min(int(math.ceil(3 * s)), out.shape[axis] - 1)
        if radius < 1:
            continue
        k = torch.arange(-radius, radius + 1, dtype=out.dtype, device=out.device)
        kernel = torch.exp(-0.5 * (k / s) ** 2)
        kernel = kernel / kernel.sum()
        c = out.shape[1]
        if axis == 2:
            weight = kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
            out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), weight, groups=c)
        else:
            weight = kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
            out = F.conv2d(F.pad(out, (radius, radius, 0, 0), mode="reflect"), weight, groups=c)
    return out


def silence_value(extractor: FeatureExtractor) -> float:
    """The model-input value of digital silence (front-end floor after normalisation)."""
    cfg = extractor.cfg
    from ..features import KALDI_SILENCE, SILENCE

    value = SILENCE if cfg.frontend == "torchaudio" else KALDI_SILENCE
    if cfg.norm_mean is not None and cfg.norm_std is not None:
        value = float(normalize(torch.tensor(value), cfg.norm_mean, cfg.norm_std))
    return float(value)


def make_baseline(
    spec: Tensor,
    kind: str,
    extractor: FeatureExtractor,
    geom: WindowGrid | None = None,
    blur_sigma: tuple[float, float] = _DEFAULTS["blur_sigma"],
) -> Tensor:
    """Reference input for IG and Occlusion: ``silence`` (front-end floor) or ``blur``.

    ``blur`` smooths the real cells of the spectrogram with a Gaussian of ``blur_sigma`` (mel bins,
    frames); mel and time padding keep their silence value.

    Shapes: spec (B, 1, F', T') -> (B, 1, F', T').
    """
    if kind == "silence":
        return torch.full_like(spec, silence_value(extractor))
    if kind == "blur":
        if isinstance(blur_sigma, (int, float)):
            blur_sigma = (float(blur_sigma), float(blur_sigma))
        base = spec.detach().clone()
        if geom is None or geom.resize:
            return _gaussian_blur(base, blur_sigma)
        lo, hi = geom.model_span
        region = base[:, :, : geom.n_mels, lo:hi]
        base[:, :, : geom.n_mels, lo:hi] = _gaussian_blur(region, blur_sigma)
        return base
    raise AscaError(f"baseline must be silence or blur, got {kind!r}")


# -- one window ---------------------------------------------------------------------------------
def batch_size_for(spec: Tensor, requested: Any, most: int) -> int:
    """Inputs per forward (and backward) of a method that evaluates ``most`` perturbed copies of
    ``spec``: ``requested`` when given, else :func:`~asca_core.utils.rows_per_pass` (a bounded
    number of cells on a CPU, all of them on a GPU).

    Shapes: spec (1, 1, F', T').
    """
    if requested is not None:
        return int(requested)
    return rows_per_pass(spec[0].numel(), spec.device, most)


def _forward_fn(classifier, model: nn.Module, output: str) -> Callable[[Tensor], Tensor]:
    if output == "logit":
        return model
    if output == "prob":
        return lambda x: classifier.probabilities(model(x))
    raise AscaError(f"output must be logit or prob, got {output!r}")


def attribute_input(
    classifier,
    spec: Tensor,
    method: str,
    target: int,
    baseline: str = "silence",
    extractor: FeatureExtractor | None = None,
    geom: WindowGrid | None = None,
    **options: Any,
) -> tuple[Tensor, dict[str, Any]]:
    """Attribute one model input (what :meth:`Classifier.spectrogram` returns) to class ``target``.

    Returns the attribution on the full model-input grid and method metadata.

    Shapes: spec (1, 1, F', T') -> (F', T').
    """
    extractor = extractor or classifier.extractor
    opts = {**_DEFAULTS, **options}
    model = private_model(classifier.model)
    forward = _forward_fn(classifier, model, opts["output"])
    spec = spec.detach().to(classifier.device).float()
    meta: dict[str, Any] = {}
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Occlusion, Saliency

    with hooks_removed(model), torch.enable_grad():
        if method == "integrated_gradients":
            base = make_baseline(spec, baseline, extractor, geom, opts["blur_sigma"])
            batch = batch_size_for(spec, opts["internal_batch_size"], int(opts["n_steps"]))
            attr, delta = IntegratedGradients(forward).attribute(
                spec,
                baselines=base,
                target=target,
                n_steps=int(opts["n_steps"]),
                method=opts["integration"],
                internal_batch_size=batch,
                return_convergence_delta=True,
            )
            meta.update(
                baseline=baseline,
                n_steps=int(opts["n_steps"]),
                internal_batch_size=batch,
                convergence_delta=float(delta.abs().max()),
            )
        elif method == "saliency":
            attr = Saliency(forward).attribute(spec.clone().requires_grad_(), target=target, abs=bool(opts["abs"]))
            meta.update(abs=bool(opts["abs"]))
        elif method == "occlusion":
            patch, stride = _pair(opts["patch"], "patch"), _pair(opts["stride"], "stride")
            base = make_baseline(spec, baseline, extractor, geom, opts["blur_sigma"])
            per_eval = batch_size_for(spec, opts["perturbations_per_eval"], _patches(spec, patch, stride))
            with torch.no_grad():
                attr = Occlusion(forward).attribute(
                    spec,
                    sliding_window_shapes=(1, *patch),
                    strides=(1, *stride),
                    baselines=base,
                    target=target,
                    perturbations_per_eval=per_eval,
                )
            meta.update(
                baseline=baseline,
                patch=list(patch),
                stride=list(stride),
                perturbations_per_eval=per_eval,
            )
        elif method in ("gradcam_conv", "gradcam_attention"):
            kind = method.split("_", 1)[1]
            name, block = gradcam_layer(model, kind, opts["layer"])
            with grid_view(model, block, spec) as layer:
                cam = LayerGradCam(forward, layer).attribute(spec, target=target, relu_attributions=bool(opts["relu"]))
            meta.update(layer=name, relu=bool(opts["relu"]), layer_grid=list(cam.shape[-2:]))
            attr = LayerAttribution.interpolate(cam, tuple(spec.shape[-2:]), interpolate_mode="bilinear")
        else:
            raise AscaError(f"unknown attribution method {method!r}: choose from {', '.join(METHODS)}")
    meta["output"] = opts["output"]
    return attr.detach()[0, 0].float(), meta


def _patches(spec: Tensor, patch: tuple[int, int], stride: tuple[int, int]) -> int:
    """How many occlusion patches cover ``spec`` (Captum's count: the last may stop short of the edge)."""
    rows, cols = spec.shape[-2:]
    return (max(0, rows - patch[0]) // stride[0] + 1) * (max(0, cols - patch[1]) // stride[1] + 1)


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, (int, float)):
        value = (value, value)
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise AscaError(f"{name} must be an int or (mel bins, frames), got {value!r}") from None
    if a < 1 or b < 1:
        raise AscaError(f"{name} must be positive, got {value!r}")
    return a, b


# -- the one call -------------------------------------------------------------------------------
def attribute(
    classifier,
    audio: str | Path | np.ndarray | Tensor,
    method: str = "integrated_gradients",
    target: int | str | None = None,
    baseline: str = "silence",
    *,
    sample_rate: int | None = None,
    window: float | None = None,
    hop: float | None = None,
    **options: Any,
) -> Attribution:
    """Explain the classifier's score for ``target`` on ``audio`` with one attribution method.

    ``audio`` is a file path (streamed window by window) or a wave at ``sample_rate`` (``None``:
    the model's rate). ``target`` is a class index or name; ``None`` picks the top class of the
    whole recording (max over windows). ``window`` defaults to the run's clip length and ``hop`` to
    the frames the model sees of one window, so windows tile the recording without gaps.
    Per-method ``options`` are listed in the module docstring.

    Shapes: returns map and spec (n_mels, T) with T the frames covered by the windows.
    """
    if method not in METHODS:
        raise AscaError(f"unknown attribution method {method!r}: choose from {', '.join(METHODS)}")
    if baseline not in BASELINES:
        raise AscaError(f"baseline must be silence or blur, got {baseline!r}")
    unknown = sorted(set(options) - _OPTIONS[method])
    if unknown:
        raise AscaError(f"{method} does not take option {unknown[0]!r}; it takes {', '.join(sorted(_OPTIONS[method]))}")
    cfg = classifier.cfg.features
    window = classifier.clip_seconds if window is None else float(window)
    extractor = classifier.extractor_for(window)
    window_samples = int(round(window * classifier.sample_rate))
    geom = window_grid(extractor, window_samples)
    if hop is None:
        lo, hi = geom.raw_span
        hop = (hi - lo) * cfg.hop_length / classifier.sample_rate if not geom.resize else window
        hop = min(hop, window)

    if target is None:
        pred = classifier.predict(audio, sample_rate=sample_rate, top_k=1, window=window, hop=hop)
        target_index = classifier.label_index(pred.top[0][0])
    else:
        target_index = classifier.label_index(target)

    stream, duration = classifier.windows(audio, sample_rate, window, hop)
    n_total = total_frames(cfg, int(round(duration * classifier.sample_rate)))
    acc_map = torch.zeros(cfg.n_mels, n_total)
    acc_spec = torch.zeros(cfg.n_mels, n_total)
    count = torch.zeros(n_total)
    metas: list[dict[str, Any]] = []
    starts: list[float] = []
    inputs = None
    for start, chunk in stream:
        wave = torch.from_numpy(np.ascontiguousarray(chunk)).unsqueeze(0).to(classifier.device)
        with torch.no_grad():
            spec = extractor(wave)  # (1, 1, F', T')
        values, meta = attribute_input(classifier, spec, method, target_index, baseline, extractor, geom, **options)
        metas.append(meta)
        starts.append(start)
        raw_map = to_raw(values.cpu(), geom)
        raw_spec = to_raw(spec[0, 0].cpu(), geom) if not geom.resize else _normalised_raw(extractor, wave)
        # Raw frame r of this window is frame r + shift of the recording (a short clip centred
        # in its window starts before 0, so shift < 0 and its padding frames fall off the left).
        shift = int(round(start * classifier.sample_rate / cfg.hop_length))
        lo = geom.raw_span[0] + shift
        skip = max(0, -lo)
        lo, hi = lo + skip, min(lo + raw_map.shape[1], n_total)
        if hi <= lo:
            continue
        acc_map[:, lo:hi] += raw_map[:, skip : skip + hi - lo]
        acc_spec[:, lo:hi] += raw_spec[:, skip : skip + hi - lo]
        count[lo:hi] += 1
        inputs = spec.detach().cpu() if len(starts) == 1 else None
    covered = torch.nonzero(count > 0).flatten()
    if covered.numel() == 0:
        raise AscaError("the audio is too short to attribute")
    first, last = int(covered[0]), int(covered[-1]) + 1
    denom = count[first:last].clamp(min=1)
    att_map = (acc_map[:, first:last] / denom).numpy()
    spec_out = acc_spec[:, first:last] / denom
    spec_out[:, count[first:last] == 0] = silence_value(extractor)  # gaps only with a hop > window
    meta = _merge_meta(metas)
    meta.update(
        window=window,
        hop=hop,
        windows=len(starts),
        window_starts=starts,
        duration=duration,
        sample_rate=classifier.sample_rate,
        frame_offset=first,
        stft={
            "sample_rate": classifier.sample_rate,
            "n_fft": cfg.n_fft,
            "win_length": cfg.win_length,
            "hop_length": cfg.hop_length,
            "f_min": cfg.f_min,
            "f_max": cfg.f_max,
        },
    )
    single = len(starts) == 1 and not geom.resize
    return Attribution(
        map=att_map,
        spec=spec_out.numpy(),
        times=frame_times(cfg, last - first, first),
        freqs=mel_frequencies(cfg),
        target=target_index,
        label=classifier.labels[target_index],
        method=method,
        meta=meta,
        inputs=inputs if len(starts) == 1 else None,
        cells=(slice(0, geom.n_mels), slice(first - shift - geom.offset, last - shift - geom.offset))
        if single
        else None,
    )


def _normalised_raw(extractor: FeatureExtractor, wave: Tensor) -> Tensor:
    """Front end and normalisation without the time fit (the resize224 input before resizing)."""
    cfg = extractor.cfg
    with torch.no_grad():
        spec = extractor.spectrogram(wave)[0, 0].cpu()
    if cfg.norm_mean is not None and cfg.norm_std is not None:
        spec = normalize(spec, cfg.norm_mean, cfg.norm_std)
    return spec


def _merge_meta(metas: list[dict[str, Any]]) -> dict[str, Any]:
    meta = dict(metas[0]) if metas else {}
    if "convergence_delta" in meta:
        deltas = [m["convergence_delta"] for m in metas]
        meta["convergence_delta"] = float(max(deltas))
        if len(deltas) > 1:
            meta["convergence_deltas"] = deltas
    return meta


__all__ = [
    "BASELINES",
    "METHODS",
    "Attribution",
    "WindowGrid",
    "attribute",
    "attribute_input",
    "explain_audio",
    "frame_times",
    "gradcam_layer",
    "hooks_removed",
    "make_baseline",
    "mel_frequencies",
    "private_model",
    "silence_value",
    "total_frames",
    "window_grid",
]
