"""Long recordings built from demo clips at known offsets, with quiet noise between them.

``long_recording(path, ["trill", "buzz"], seed=5)`` writes one WAV and returns the true spans:
where each 3 s demo clip was placed (``start``/``end``) and where its call lies
(``call_start``/``call_end``), in seconds of the recording.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from asca_core.data.demo import make_clip

RATE = 16000
CLIP = 3.0


@dataclass
class Span:
    file: Path
    start: float
    end: float
    label: str
    call_start: float
    call_end: float


def long_recording(
    path: Path, labels: list[str], *, seed: int = 5, gap: tuple[float, float] = (2.0, 4.0), first: int = 0
) -> list[Span]:
    """Write ``path``: quiet pink-ish noise with one demo clip of each of ``labels`` in turn,
    ``gap`` seconds (drawn per gap) apart, the first after a gap too. ``first`` offsets the clip
    numbers so recordings made with one seed differ. Returns the placed spans."""
    rng = np.random.default_rng([seed, first, 99])
    parts: list[np.ndarray] = []
    spans: list[Span] = []
    t = 0
    for i, label in enumerate(labels):
        n_gap = int(rng.uniform(*gap) * RATE)
        parts.append((0.003 * rng.standard_normal(n_gap)).astype(np.float32))
        t += n_gap
        wave, fields = make_clip(label, seed, first + i, sample_rate=RATE, seconds=CLIP)
        parts.append(wave)
        start = t / RATE
        spans.append(
            Span(
                path,
                round(start, 3),
                round(start + CLIP, 3),
                label,
                round(start + float(fields["call_start"]), 3),  # type: ignore[arg-type]
                round(start + float(fields["call_end"]), 3),  # type: ignore[arg-type]
            )
        )
        t += wave.size
    tail = int(rng.uniform(*gap) * RATE)
    parts.append((0.003 * rng.standard_normal(tail)).astype(np.float32))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.concatenate(parts), RATE, subtype="PCM_16")
    return spans


def overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    """Seconds shared by the intervals a0-a1 and b0-b1."""
    return max(0.0, min(a1, b1) - max(a0, b0))
