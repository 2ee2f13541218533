"""ONNX export of a trained run, with the log-Mel front end inside, and an ONNX Runtime scorer.

``export_onnx(run_dir)`` writes a folder that scores audio without PyTorch or this package::

    RUN/export/model.onnx       waveform windows (B, W) float32 at the run's rate -> probs (B, K)
    RUN/export/labels.json      class names in output order
    RUN/export/thresholds.json  per-class detection thresholds (see asca_core.tables)
    RUN/export/config.yaml      the run's resolved config
    RUN/export/export.json      input/output names and shapes, opset, versions, measured parity

PyTorch's STFT returns complex numbers, which ONNX graphs do not carry, so the exported front end
computes the same power spectrum as a strided convolution with fixed windowed DFT bases
(:class:`DftLogMel`): one real and one imaginary kernel per frequency bin, over the window's
``win_length`` non-zero taps only, and only the bins some mel filter uses. The rest (reflect
padding, mel matrix, ``log(x + 1e-6)``, time fit, mel padding, normalisation) is the torch front
end's own code.

``--no-frontend`` exports the model alone: input ``spec`` (B, 1, F, T), the normalised model
input :class:`~asca_core.features.FeatureExtractor` produces.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FeatureConfig
from .errors import AscaError, CheckpointError
from .features import LOG_OFFSET, FeatureExtractor, fit_time, normalize, pad_to_multiple, resize_224
from .fileio import output_folder
from .geometry import INPUT_MULTIPLE
from .scores import probabilities

OPSET = 17  # ONNX Runtime has run opset 17 since 1.13; newer opsets add nothing this graph uses
EXPORT_FORMAT = "asca-onnx/1"
MODEL_FILE = "model.onnx"
META_FILE = "export.json"
PARITY_LIMIT = 1e-4  # max absolute difference on probabilities accepted at export


class DftLogMel(nn.Module):
    """The torchaudio log-Mel front end as real convolutions, exportable to ONNX.

    Equal to :class:`~asca_core.features.LogMel` (centred frames, reflect padding, power 2, HTK
    mels, ``log(mel + 1e-6)``) up to float32 rounding.

    Shapes: wave (B, T) -> spec (B, 1, n_mels, T // hop_length + 1).
    """

    bases: Tensor  # (2 bins, 1, win): cosine and sine rows of the windowed DFT
    fb: Tensor  # (n_mels, bins)

    def __init__(self, extractor: FeatureExtractor) -> None:
        super().__init__()
        if extractor.logmel is None:
            raise AscaError(
                "features.frontend=kaldi has no exportable front end: export with "
                "--no-frontend and compute Kaldi fbanks outside the graph"
            )
        mel = extractor.logmel.mel
        n_fft = int(mel.spectrogram.n_fft)
        window = mel.spectrogram.window.detach().double()  # (win_length,)
        fb = mel.mel_scale.fb.detach().double()  # (n_fft // 2 + 1, n_mels)
        used = torch.nonzero(fb.abs().sum(dim=1) > 0).flatten()  # bins some filter reads
        self.n_fft, self.hop_length = n_fft, int(mel.spectrogram.hop_length)
        win = window.numel()
        self.left = (n_fft - win) // 2  # torch.stft centres a shorter window inside n_fft
        # Sample m of a frame has phase 2 pi k m / n_fft; the window sits at m = left .. left + win - 1.
        m = torch.arange(self.left, self.left + win, dtype=torch.float64)
        angle = 2 * math.pi * used.double()[:, None] * m[None, :] / n_fft  # (bins, win)
        bases = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])  # (2 bins, win)
        self.register_buffer("bases", bases.float().unsqueeze(1), persistent=False)  # (2 bins, 1, win)
        self.register_buffer("fb", fb[used].T.float().contiguous(), persistent=False)  # (n_mels, bins)
        self.bins = int(used.numel())

    def forward(self, wave: Tensor) -> Tensor:
        frames = wave.shape[-1] // self.hop_length + 1
        x = F.pad(wave.unsqueeze(1), (self.n_fft // 2, self.n_fft // 2), mode="reflect")  # (B, 1, T + n_fft)
        x = x[..., self.left :]
        spec = F.conv1d(x, self.bases, stride=self.hop_length)[..., :frames]  # (B, 2 bins, frames)
        power = spec[:, : self.bins].square() + spec[:, self.bins :].square()  # (B, bins, frames)
        mel = torch.matmul(self.fb, power)  # (B, n_mels, frames)
        return torch.log(mel + LOG_OFFSET).unsqueeze(1)


class WaveModel(nn.Module):
    """Waveform windows to probabilities: DFT log-Mel, the run's time fit and normalisation, the
    model, its activation.

    Shapes: wave (B, W) with W = the window's samples -> probs (B, K).
    """

    def __init__(self, model: nn.Module, features: FeatureConfig, activation: str) -> None:
        super().__init__()
        self.cfg = features
        self.frontend = DftLogMel(FeatureExtractor(features))
        self.model = model
        self.activation = activation

    def spectrogram(self, wave: Tensor) -> Tensor:
        """Shapes: wave (B, W) -> spec (B, 1, *cfg.input_size), as FeatureExtractor gives it."""
        cfg, spec = self.cfg, self.frontend(wave)
        if cfg.shape == "resize224":
            spec = resize_224(spec)
        else:
            spec = pad_to_multiple(fit_time(spec, cfg.frames, "center"), INPUT_MULTIPLE)
        if cfg.norm_mean is not None and cfg.norm_std is not None:
            spec = normalize(spec, cfg.norm_mean, cfg.norm_std)
        return spec

    def forward(self, wave: Tensor) -> Tensor:
        return _activate(self.model(self.spectrogram(wave)), self.activation)


class SpecModel(nn.Module):
    """The model and its activation on the normalised model input.

    Shapes: spec (B, 1, F, T) -> probs (B, K).
    """

    def __init__(self, model: nn.Module, activation: str) -> None:
        super().__init__()
        self.model = model
        self.activation = activation

    def forward(self, spec: Tensor) -> Tensor:
        return _activate(self.model(spec), self.activation)


def _activate(logits: Tensor, activation: str) -> Tensor:
    return probabilities(logits, activation)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (hex), read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_onnxruntime() -> Any:
    """The ``onnxruntime`` module, or one line saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise AscaError("the ONNX engine needs onnxruntime: pip install 'asca-workbench[deploy]'") from None
    return onnxruntime


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise AscaError("asca export needs onnx and onnxruntime: pip install 'asca-workbench[deploy]'") from None
    return onnx


def export_onnx(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    frontend: bool = True,
    checkpoint: str = "best",
    parity_waves: np.ndarray | None = None,
    thresholds: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export a run to ``out`` (default ``RUN/export``); returns the ``export.json`` record.

    The exported graph is checked against the PyTorch classifier on ``parity_waves`` (B, W)
    windows (default: generated noise, chirps and silence) and refused when any probability
    differs by more than :data:`PARITY_LIMIT`. ``thresholds`` (a :mod:`asca_core.tables`
    record) is written beside the graph; by default the run's stored thresholds, computed on
    its validation split when it has none.

    Shapes: parity_waves (B, W) with W = the run's clip samples.
    """
    from . import tables
    from .inference import Classifier
    from .train.runstore import atomic_write_bytes, atomic_write_json, atomic_write_text, now_iso

    onnx = _require_onnx()
    ort = require_onnxruntime()
    run_dir = Path(run_dir)
    clf = Classifier.from_run(run_dir, checkpoint=checkpoint)
    out = output_folder(out if out is not None else run_dir / "export", "--out")
    feats = clf.cfg.features
    n = feats.clip_samples
    if frontend:
        module: nn.Module = WaveModel(clf.model, feats, clf.activation).eval()
        example = torch.zeros(2, n)
        names, axes = ["wave"], {"wave": {0: "batch"}, "probs": {0: "batch"}}
    else:
        module = SpecModel(clf.model, clf.activation).eval()
        example = torch.zeros(2, 1, *feats.input_size)
        names, axes = ["spec"], {"spec": {0: "batch"}, "probs": {0: "batch"}}
    tmp = out / f".{MODEL_FILE}.export.tmp"
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter traces Python checks on shapes as constants: the exported
            # graph is fixed to this window length, which is what it is meant for.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=names,
                output_names=["probs"],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
            )
        graph = onnx.load(str(tmp))
        onnx.checker.check_model(graph)
        graph.metadata_props.add(key="labels", value=json.dumps(clf.labels))
        graph.metadata_props.add(key="sample_rate", value=str(feats.sample_rate))
        data = graph.SerializeToString()
    except AscaError:
        raise
    except Exception as exc:
        raise AscaError(
            f"ONNX export of {run_dir} failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    waves = parity_waves if parity_waves is not None else parity_signals(n, feats.sample_rate)
    waves = np.asarray(waves, dtype=np.float32)
    with torch.no_grad():
        reference = clf.predict_windows(waves)
        inputs = waves if frontend else clf.extractor(torch.from_numpy(waves)).numpy()
    got = session.run(None, {names[0]: inputs})[0]
    diff = float(np.abs(got - reference).max())
    if not diff <= PARITY_LIMIT:
        raise AscaError(
            f"the exported graph differs from PyTorch by {diff:.2e} on probabilities "
            f"(limit {PARITY_LIMIT:g}); the export was not written"
        )
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.safetensors" if run_dir.is_dir() else run_dir
    if thresholds is None:
        thresholds = tables.run_thresholds(run_dir, compute=True)
    record = {
        "format": EXPORT_FORMAT,
        "created": now_iso(),
        "run": str(run_dir),
        "checkpoint": checkpoint,
        "checkpoint_sha256": file_digest(ckpt),
        "frontend": bool(frontend),
        "input": {
            "name": names[0],
            "shape": ["batch", n] if frontend else ["batch", 1, *feats.input_size],
            "dtype": "float32",
            "sample_rate": feats.sample_rate,
            "window_seconds": feats.clip_seconds,
        },
        "output": {"name": "probs", "shape": ["batch", len(clf.labels)], "activation": clf.activation},
        "labels": clf.labels,
        "opset": OPSET,
        "exporter": "torch.onnx.export (TorchScript)",
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "python": platform.python_version(),
        },
        "parity": {
            "max_abs_diff": diff,
            "limit": PARITY_LIMIT,
            "windows": int(len(waves)),
            "against": "asca_core.inference.Classifier (PyTorch)",
        },
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_bytes(out / MODEL_FILE, data)
    atomic_write_json(out / "labels.json", clf.labels)
    atomic_write_json(out / "thresholds.json", thresholds)
    atomic_write_text(out / "config.yaml", clf.cfg.to_yaml())
    atomic_write_json(out / META_FILE, record)
    return record


def parity_signals(n: int, sample_rate: int, seed: int = 0) -> np.ndarray:
    """Six windows that exercise the front end: noise at two levels, a chirp, a tone burst,
    clicks and digital silence.

    Shapes: returns (6, n) float32.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sample_rate
    nyq = sample_rate / 2
    chirp = 0.5 * np.sin(2 * np.pi * (0.05 * nyq + 0.4 * nyq * t / t[-1] / 2) * t)
    burst = 0.3 * np.sin(2 * np.pi * 0.2 * nyq * t) * ((t % 0.5) < 0.2)
    clicks = np.zeros(n)
    clicks[:: max(1, sample_rate // 20)] = 0.9
    return np.stack(
        [0.3 * rng.standard_normal(n), 0.01 * rng.standard_normal(n), chirp, burst, clicks, np.zeros(n)]
    ).astype(np.float32)


@dataclass
class OnnxScorer:
    """An exported graph in an ONNX Runtime session (CPU provider).

    ``__call__`` scores waveform windows (front end inside) or normalised spectrograms
    (``--no-frontend`` exports); ``meta`` is the folder's ``export.json``.

    Shapes: (B, W) or (B, 1, F, T) -> (B, K).
    """

    session: Any
    meta: dict[str, Any]
    path: Path

    @classmethod
    def load(cls, folder: str | Path, threads: int | None = None) -> OnnxScorer:
        """Open ``folder/model.onnx`` (or an ``.onnx`` file beside its ``export.json``)."""
        from .fileio import read_json

        ort = require_onnxruntime()
        path = Path(folder)
        model = path if path.suffix == ".onnx" else path / MODEL_FILE
        if not model.is_file():
            raise CheckpointError(f"no ONNX model at {model}: run asca export first")
        meta_path = model.parent / META_FILE
        if not meta_path.is_file():
            raise CheckpointError(f"{model} has no {META_FILE} beside it: export it again with asca export")
        meta = read_json(meta_path, dict)
        if meta.get("format") != EXPORT_FORMAT:
            raise CheckpointError(f"{meta_path} is not an ASCA export record (format {meta.get('format')!r})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CheckpointError(f"{model} is not a loadable ONNX model: {' '.join(str(exc).split())[:200]}") from None
        return cls(session, meta, model)

    @property
    def frontend(self) -> bool:
        return bool(self.meta.get("frontend"))

    @property
    def input_name(self) -> str:
        return str(self.meta["input"]["name"])

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(inputs, dtype=np.float32)})[0]


__all__ = [
    "META_FILE",
    "MODEL_FILE",
    "OPSET",
    "PARITY_LIMIT",
    "DftLogMel",
    "OnnxScorer",
    "SpecModel",
    "WaveModel",
    "export_onnx",
    "parity_signals",
    "require_onnxruntime",
]
