"""Runs: compare training runs (metrics, curves, confusion, per-class AP) and the layout ablation."""

from pathlib import Path

import pandas as pd
import streamlit as st

from asca_core.errors import AscaError
from asca_core.train.runstore import RunStore
from asca_core.utils import runs_dir
from workbench import figures, jobs, state


def _evaluation(info: jobs.RunInfo) -> dict:
    """The final test evaluation, else the validation details of the best (or last) epoch.

    ``{}`` for a damaged run (its table row says so); a damaged file never hides the other runs.
    """
    if info.problem:
        return {}
    store = RunStore(info.path)
    try:
        details = store.eval_details()
        if _usable(details):
            return details
        epoch = info.status.get("best_epoch") or info.epoch
        details = store.eval_details(epoch) if epoch else {}
    except AscaError as exc:
        st.warning(f"{info.name}: {exc}", icon=":material/warning:")
        return {}
    return details if _usable(details) else {}


def _usable(details: dict) -> bool:
    """Details with labels, per-class scores and a confusion matrix of matching sizes (or none)."""
    labels, per_class = details.get("labels"), details.get("per_class")
    if not isinstance(labels, list) or not labels:
        return False
    if per_class is not None and not (
        isinstance(per_class, dict) and isinstance(per_class.get("ap"), list) and len(per_class["ap"]) == len(labels)
    ):
        return False
    confusion = details.get("confusion")
    return confusion is None or (isinstance(confusion, list) and len(confusion) == len(labels))


def _ablations() -> list[Path]:
    root = runs_dir()
    found = (
        [p.parent for p in root.glob("*/results.csv") if not (p.parent / "cv.json").exists()] if root.is_dir() else []
    )
    return sorted(set(found), key=lambda p: p.stat().st_mtime, reverse=True)


def _compare(runs: list[jobs.RunInfo]) -> None:
    for r in runs:  # every damaged run is named, picked or not
        if r.problem:
            st.warning(f"{r.name} is damaged: {r.problem}", icon=":material/warning:")
    names = [r.name for r in runs]
    default = [r.name for r in runs if r.metrics][:3] or names[:1]
    chosen = st.multiselect("Runs to compare", names, default=default, key="compare_runs")
    picked = [r for r in runs if r.name in chosen]
    if not picked:
        st.info("Pick one or more runs.")
        return
    rows = []
    for r in picked:
        row = r.summary()
        row.update({"test acc": r.status.get("test_acc"), "test mAP": r.status.get("test_map")})
        rows.append(row)
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={
            k: st.column_config.NumberColumn(k, format="%.3f")
            for k in ("train_loss", "val_loss", "val_acc", "best val_map", "test acc", "test mAP")
        },
    )
    st.plotly_chart(figures.training_curves({r.name: r.metrics for r in picked}), key="compare_curves")

    evals = {r.name: _evaluation(r) for r in picked}
    ap = {
        name: dict(zip(e["labels"], e["per_class"]["ap"]))
        for name, e in evals.items()
        if e.get("labels") and e.get("per_class")
    }
    if ap:
        st.plotly_chart(
            figures.per_class_ap(
                ap if len(ap) > 1 else next(iter(ap.values())), title=f"Average precision per class ({_split(evals)})"
            ),
            key="per_class_ap",
        )
    with_confusion = [n for n, e in evals.items() if e.get("confusion")]
    if with_confusion:
        name = st.selectbox("Confusion matrix of", with_confusion, key="confusion_run")
        e = evals[name]
        st.plotly_chart(
            figures.confusion_matrix(
                e["confusion"],
                e["labels"],
                title=f"Confusion matrix · {name} · {e.get('split', 'val')} split, {e.get('n', '?')} clips",
            ),
            key="confusion",
        )
    elif evals:
        st.caption("No confusion matrix: multi-label runs have none, and a run shows one after its first epoch.")


def _parent(info: jobs.RunInfo) -> str | None:
    """The run a review retrained this one from, if any."""
    from asca_core.review import review_origin

    if info.problem:
        return None
    try:
        origin = review_origin(info.path)
    except AscaError:
        return None
    return str(origin["parent_run"]) if origin else None


@st.cache_data(max_entries=8, show_spinner="Scoring both models on the same test set…")
def _before_after(before: str, after: str, stamps: tuple[float, float]) -> str:
    from asca_core.review import compare_runs, compare_table

    return compare_table(compare_runs(before, after))


def _reviews(runs: list[jobs.RunInfo]) -> None:
    """Before and after: each run retrained from a review beside the run it was retrained from."""
    retrained = [(r, parent) for r in runs if (parent := _parent(r))]
    if not retrained:
        return
    st.subheader("Before and after review")
    names = [r.name for r, _ in retrained]
    picked = st.selectbox("Retrained run", names, key="review_run")
    info, parent = retrained[names.index(picked)]
    before = Path(parent) if Path(parent).is_absolute() else runs_dir() / parent
    if info.state != "finished":
        st.info(f"{info.name} is {info.state}; the comparison with {before.name} shows when it has finished.")
        return
    if not (before / "checkpoints" / "best.safetensors").is_file():
        st.warning(f"{info.name} was retrained from {before}, which has no model any more.", icon=":material/warning:")
        return
    stamps = (state.checkpoint_stamp(before), state.checkpoint_stamp(info.path))
    st.caption(f"{before.name} (before) and {info.name} (after), on the same test set.")
    st.markdown(_before_after(str(before), str(info.path), stamps))


def _split(evals: dict) -> str:
    splits = {e.get("split", "val") for e in evals.values() if e}
    return " / ".join(sorted(splits)) + " split"


def _ablation() -> None:
    found = _ablations()
    default = str(found[0]) if found else ""
    folder = st.text_input(
        "Ablation folder (the OUT of `asca ablate`)", value=default, key="ablation_dir", placeholder="runs/ablation"
    )
    if not folder:
        st.info(
            "No ablation yet. Run one from a terminal, e.g. `asca ablate --config configs/demo.yaml "
            "--layouts CCCT,CCTT,CCCC --seeds 2 --out runs/ablation`, then open it here."
        )
        return
    path = Path(folder).expanduser()
    if not (path / "results.csv").is_file():
        st.error(f"{path} holds no results.csv: point this at the output folder of `asca ablate`.")
        return
    table = pd.read_csv(path / "results.csv")
    metric = "test_map" if table.get("test_map") is not None and table["test_map"].notna().any() else "val_map"
    st.dataframe(table, hide_index=True)
    rows = table.astype(object).where(table.notna(), None).to_dict("records")
    st.plotly_chart(
        figures.ablation(
            rows,
            metric=metric,
            error=f"{metric}_std",
            cost="gmacs",
            cost_title="GMACs per clip",
            metric_title=metric.replace("_", " "),
        ),
        key="ablation",
    )
    if (path / "runs.csv").is_file():
        with st.expander("Every run of the ablation"):
            st.dataframe(pd.read_csv(path / "runs.csv"), hide_index=True)


def render() -> None:
    st.title("Runs")
    st.caption(f"Every run under `{runs_dir()}`; the run folders are the record.")
    runs = jobs.list_runs()
    compare, ablation = st.tabs(["Compare runs", "Layout ablation"])
    with compare:
        if runs:
            _compare(runs)
            state.guarded(lambda: _reviews(runs))
        else:
            st.info("No runs yet: start one on the Train page.")
            state.quick_demo_offer()
    with ablation:
        _ablation()
    _cross_validation()


def _cross_validation() -> None:
    """The CV folders (``asca cv``) under the runs folder: one row per fold, mean ± std, a chart."""
    from asca_core.train.cv import cv_summary, result_rows

    root = runs_dir()
    found = [p.parent for p in root.glob("*/cv.json")] if root.is_dir() else []
    summaries = [s for s in (cv_summary(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)) if s]
    st.subheader("Cross-validation")
    if not summaries:
        st.info(
            "No cross-validation yet. Run one from a terminal, e.g. `asca cv DATA --budget 5m` (one run per "
            "fold of its fold column) or `asca cv DATA --by speaker` (leave one speaker out); it shows here."
        )
        return
    names = [s["name"] for s in summaries]
    summary = summaries[names.index(st.selectbox("Cross-validation folder", names, key="cv_folder"))]
    by = summary["by"] or "fold"
    st.caption(
        f"{summary['title']} · {summary['finished']} of {len(summary['rows'])} {by}s finished · `{summary['folder']}`"
    )
    st.dataframe(pd.DataFrame(result_rows(summary)).astype({"fold": str}), hide_index=True)
    if summary["finished"]:
        st.plotly_chart(figures.cv_figure(summary), key="cv_figure")


state.training_sidebar(offer=False)
state.guarded(render)
