"""Attention: where one query position looks, per head and on average; rollout; relative bias."""

import streamlit as st

from asca_core.inspect.views import AttentionViews
from workbench import figures, state

CLICK, SEEN, QF, QT = "attn_click", "attn_click_seen", "attn_qf", "attn_qt"


def _apply_click(grid: tuple[int, int]) -> None:
    """A click on the map (previous run) moves the query sliders, once per new click."""
    event = st.session_state.get(CLICK)
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else []
    cell = next((p.get("customdata") for p in points if p.get("customdata")), None)
    if isinstance(cell, dict):  # plotly sends array customdata as {"0": f, "1": t, ...}
        cell = [cell.get("0"), cell.get("1")]
    cell = tuple(int(v) for v in cell[:2]) if cell and None not in cell[:2] else None
    if cell and cell != st.session_state.get(SEEN):
        st.session_state[SEEN] = cell
        st.session_state[QF] = min(int(cell[0]), grid[0] - 1)
        st.session_state[QT] = min(int(cell[1]), grid[1] - 1)


def _kw(view: AttentionViews) -> dict:
    return dict(sample_rate=view.sample_rate, hop_length=view.hop_length, freqs_hz=view.freqs, t0=float(view.times[0]))


def render() -> None:
    st.title("Attention")
    st.caption(
        "Pick a clip and a query position (a click on the map or the sliders): the map shows "
        "how much that position attends to every other one in the chosen transformer block."
    )
    run = state.pick_run(state.model_runs())
    if run is None:
        state.quick_demo_offer()
        return
    table, _ = state.dataset_table(str((run.config.get("data") or {}).get("path", "demo")))
    splits = table.sort_values("split", key=lambda s: s != "test")  # unseen clips first
    c1, c2 = st.columns([3, 1])
    file = c1.selectbox(
        "Clip",
        splits["file"],
        key="attn_clip",
        format_func=lambda f: f"{f} · {table.set_index('file').at[f, 'labels']}",
    )
    path = table.set_index("file").at[file, "path"]
    duration = float(table.set_index("file").at[file, "duration"] or 0)
    start = c2.number_input("Start (s)", 0.0, max(0.0, duration - 1.0), 0.0, 1.0, key="attn_start")
    stamp = state.checkpoint_stamp(run.path)
    overview = state.attention(str(run.path), stamp, path, start, None, None)
    names = list(overview.blocks)

    c1, c2, c3, c4 = st.columns(4)
    block = c1.selectbox(
        "Block",
        names,
        index=len(names) - 1,
        key="attn_block",
        format_func=lambda n: f"{n} · {overview.blocks[n].grid[0]}×{overview.blocks[n].grid[1]} tokens",
    )
    grid = overview.blocks[block].grid
    n_heads = overview.blocks[block].heads.shape[0]
    head = c2.selectbox("Head", ["average"] + list(range(n_heads)), key="attn_head")
    _apply_click(grid)
    for key, size in ((QF, grid[0]), (QT, grid[1])):
        if st.session_state.get(key, 0) >= size:
            st.session_state[key] = size // 2
    qf = c3.slider("Query frequency row", 0, grid[0] - 1, grid[0] // 2, key=QF)
    qt = c4.slider("Query time column", 0, grid[1] - 1, grid[1] // 2, key=QT)

    view = state.attention(str(run.path), stamp, path, start, block, (qf, qt))
    b = view.blocks[block]
    attn = b.mean if head == "average" else b.heads[int(head)]
    heard = ""
    if view.probs is not None:
        best = int(view.probs.argmax())
        label = state.classifier(str(run.path), stamp).labels[best]
        heard = f" The model hears **{label}** ({view.probs[best]:.0%})."
    st.markdown(
        f"Query token ({qf}, {qt}) is centred at **{b.token_times[qt]:.2f} s**, "
        f"**{figures.format_hz(b.token_freqs[qf])}**; each token covers {b.stride[0]} mel bins × "
        f"{b.stride[1]} frames.{heard}"
    )
    st.plotly_chart(
        figures.attention_map(
            view.spec,
            attn,
            query=b.query,
            **_kw(view),
            title=f"{block} · {'head average' if head == 'average' else f'head {head}'}",
        ),
        key=CLICK,
        on_select="rerun",
        selection_mode="points",
    )
    st.plotly_chart(
        figures.attention_heads(
            view.spec, b.heads, view.sample_rate, view.hop_length, query=b.query, t0=float(view.times[0])
        ),
        key="attn_heads",
    )

    last = names[-1]
    lg = overview.blocks[last].grid
    roll = state.attention(
        str(run.path),
        stamp,
        path,
        start,
        None,
        (min(lg[0] - 1, qf * lg[0] // grid[0]), min(lg[1] - 1, qt * lg[1] // grid[1])),
    )
    if roll.rollout is not None:
        left, right = st.columns(2)
        left.plotly_chart(
            figures.attention_map(
                roll.spec,
                roll.rollout,
                query=roll.query,
                clickable=False,
                title=f"Rollout of the query over the {last} grid",
                **_kw(roll),
            ),
            key="rollout",
        )
        right.plotly_chart(
            figures.attention_map(
                roll.spec,
                roll.rollout_relevance,
                clickable=False,
                title="Rollout averaged over all queries (what pooling sees)",
                **_kw(roll),
            ),
            key="relevance",
        )
    bias = view.bias.get(block)
    if bias is not None:
        st.plotly_chart(
            figures.relative_bias(
                bias.table,
                bias.time_offsets_s,
                bias.freq_offsets_hz,
                head=None if head == "average" else int(head),
                freq_title=f"Δ frequency (Hz, from {bias.ref_freq_hz:.0f} Hz)",
                title=f"Relative position bias · {block}",
            ),
            key="bias",
        )


state.training_sidebar(offer=False)
state.guarded(render)
