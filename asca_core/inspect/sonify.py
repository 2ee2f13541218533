"""The listenable explanation: a recording resynthesised from its most attributed cells.

:func:`explain_audio` spreads an :class:`~asca_core.inspect.attribution.Attribution` map from mel
bins onto the recording's STFT through the mel filterbank, keeps the top cells and inverts the
STFT, so one can hear what the model listened to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from ..errors import AscaError

if TYPE_CHECKING:
    from .attribution import Attribution


def explain_audio(
    attribution: Attribution, wave: np.ndarray | Tensor, sample_rate: int, keep: float = 0.1
) -> np.ndarray:
    """Resynthesise ``wave`` from only its most attributed time-frequency regions.

    The (F, T) mel attribution (positive part) is spread onto linear-frequency STFT bins through
    the mel filterbank, the top ``keep`` fraction of STFT cells is kept, the rest zeroed, and the
    result inverted with an ISTFT. STFT settings are the run's (n_fft, win_length, hop_length), so
    STFT frames line up with the attribution's columns.

    Shapes: wave (T,) at ``sample_rate`` -> (T,) float32 at ``sample_rate``.
    """
    from ..audio import resample

    if not 0.0 < float(keep) <= 1.0:
        raise AscaError(f"keep must be in (0, 1], got {keep}")
    stft_cfg = attribution.meta.get("stft")
    if not stft_cfg:
        raise AscaError("this attribution carries no STFT settings: make it with attribute()")
    cfg_rate = int(stft_cfg["sample_rate"])
    wave_np = wave.detach().cpu().numpy() if isinstance(wave, Tensor) else np.asarray(wave, dtype=np.float32)
    wave_np = wave_np.reshape(-1).astype(np.float32)
    n_orig = wave_np.size
    x = torch.from_numpy(resample(wave_np, int(sample_rate), cfg_rate))
    n_fft, win_length, hop_length = int(stft_cfg["n_fft"]), int(stft_cfg["win_length"]), int(stft_cfg["hop_length"])
    f_min, f_max = float(stft_cfg["f_min"]), float(stft_cfg["f_max"] or cfg_rate / 2)
    window = torch.hann_window(win_length)
    stft = torch.stft(
        x, n_fft=n_fft, hop_length=hop_length, win_length=win_length, window=window, center=True, return_complex=True
    )  # (n_fft/2+1, frames)
    n_frames = stft.shape[-1]
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(
        n_fft // 2 + 1, f_min, float(f_max), attribution.map.shape[0], cfg_rate, norm=None, mel_scale="htk"
    )  # (freqs, n_mels)
    weights = fb / fb.sum(dim=1, keepdim=True).clamp(min=1e-12)
    mel_attr = torch.from_numpy(np.clip(attribution.map, 0.0, None)).float()  # (n_mels, T)
    linear = weights @ mel_attr  # (freqs, T)
    # Column j of the map is centred at times[j]; STFT frame k is centred at k * hop.
    cols = np.round(attribution.times * cfg_rate / hop_length).astype(int)
    cell_attr = torch.zeros(stft.shape[0], n_frames)
    ok = (cols >= 0) & (cols < n_frames)
    cell_attr[:, torch.from_numpy(cols[ok])] = linear[:, torch.from_numpy(np.nonzero(ok)[0])]
    n_keep = max(1, int(round(float(keep) * cell_attr.numel())))
    threshold = torch.topk(cell_attr.flatten(), n_keep).values[-1]
    mask = (cell_attr >= threshold) & (cell_attr > 0)
    out = torch.istft(
        stft * mask,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=True,
        length=x.numel(),
    )
    out_np = resample(out.numpy().astype(np.float32), cfg_rate, int(sample_rate))
    if out_np.size < n_orig:
        out_np = np.pad(out_np, (0, n_orig - out_np.size))
    return out_np[:n_orig].astype(np.float32)


__all__ = ["explain_audio"]
