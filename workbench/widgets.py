"""Small ipywidgets helpers for the notebooks: controls that redraw figures, and audio players.

A panel reads its controls, calls ``draw(**values)`` and shows what it returns (plotly figures from
:mod:`workbench.figures`, Markdown strings, audio players, any displayable object) in one
``widgets.Output``, redrawn whenever a control changes::

    panel = live_panel(lambda n_mels, hop_ms: figures.spectrogram(...),
                       n_mels=widgets.IntSlider(value=128, min=32, max=256, step=32),
                       hop_ms=widgets.FloatSlider(value=10, min=5, max=40, step=5))
    display(panel)

Nothing here computes features or runs a model.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import numpy as np
from IPython.display import Markdown, display

__all__ = ["audio_player", "audio_row", "live_panel", "redraw", "show"]


def show(item: Any) -> None:
    """Display one result of a draw function: a figure, a Markdown string, a widget, a list of them."""
    if item is None:
        return
    if isinstance(item, (list, tuple)):
        for part in item:
            show(part)
    elif isinstance(item, str):
        display(Markdown(item))
    elif hasattr(item, "show") and hasattr(item, "to_plotly_json"):  # a plotly Figure
        item.show()
    else:
        display(item)


def redraw(
    output: widgets.Output, draw: Callable[..., Any], values: Mapping[str, Any], raise_errors: bool = False
) -> None:
    """Clear ``output`` and show ``draw(**values)`` in it.

    A failure after the first draw is shown as one line inside the panel (an exception raised in a
    widget callback would only reach the kernel log, where nobody sees it).
    """
    with output:
        output.clear_output(wait=True)
        try:
            show(draw(**values))
        except Exception as exc:
            if raise_errors:
                raise
            print(f"{type(exc).__name__}: {exc}")


def live_panel(
    draw: Callable[..., Any],
    *,
    columns: int | None = None,
    continuous_update: bool = False,
    **controls: widgets.ValueWidget,
) -> widgets.VBox:
    """Controls above an output area that shows ``draw(**{name: control.value})``.

    The first draw runs at once and raises on error, so a notebook run headless fails loudly;
    later redraws (a control moved) print the error in the panel instead. Sliders get
    ``continuous_update=False`` unless asked otherwise: a redraw happens when the handle is
    released, not at every pixel of the drag. ``columns`` lays the controls out in a grid.
    """
    if not controls:
        raise ValueError("live_panel needs at least one control")
    for control in controls.values():
        if hasattr(control, "continuous_update"):
            control.continuous_update = continuous_update
        style = getattr(control, "style", None)
        if style is not None and hasattr(style, "description_width"):
            style.description_width = "initial"  # long descriptions are not cut off
    output = widgets.Output()

    def values() -> dict[str, Any]:
        return {name: control.value for name, control in controls.items()}

    def on_change(_change: Any) -> None:
        redraw(output, draw, values())

    for control in controls.values():
        control.observe(on_change, names="value")
    redraw(output, draw, values(), raise_errors=True)
    items = list(controls.values())
    if columns:
        box = widgets.GridBox(items, layout=widgets.Layout(grid_template_columns=f"repeat({columns}, auto)"))
    else:
        box = widgets.HBox(items, layout=widgets.Layout(flex_flow="row wrap"))
    return widgets.VBox([box, output])


def _wav_bytes(wave: Any, sample_rate: int) -> bytes:
    import soundfile as sf

    if hasattr(wave, "detach"):
        wave = wave.detach().cpu().numpy()
    data = np.asarray(wave, dtype=np.float32).reshape(-1)
    peak = float(np.abs(data).max()) if data.size else 0.0
    if peak > 1.0:  # augmentations can push a clip past full scale; scale instead of clipping
        data = data / peak
    buffer = io.BytesIO()
    sf.write(buffer, data, int(sample_rate), format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def audio_player(wave: Any, sample_rate: int, label: str | None = None) -> widgets.Widget:
    """A player for a mono wave (NumPy or torch, any shape with one non-singleton axis).

    Shapes: wave (T,) or (1, T).
    """
    player = widgets.Audio(value=_wav_bytes(wave, sample_rate), format="wav", autoplay=False, loop=False)
    if label is None:
        return player
    return widgets.VBox([widgets.Label(label), player])


def audio_row(waves: Mapping[str, Any] | Sequence[tuple[str, Any]], sample_rate: int) -> widgets.HBox:
    """Labelled players side by side, e.g. ``{"before": wave, "after": augmented}``."""
    pairs = waves.items() if isinstance(waves, Mapping) else waves
    return widgets.HBox([audio_player(w, sample_rate, label) for label, w in pairs])
