"""Train: start `asca train` in the background from a preset plus overrides; watch, stop, resume."""

import streamlit as st

from asca_core.config import LAYOUTS, load_config
from asca_core.models import list_models
from workbench import figures, jobs, state

AUTO = "Auto, N minutes"
PRESET = "Preset and overrides"


def _auto_form() -> None:
    c1, c2, c3 = st.columns([3, 1, 2])
    data = c1.text_input(
        "Dataset", "demo", key="tr_auto_data", help="A dataset folder or CSV manifest on this machine, or 'demo'."
    )
    minutes = c2.number_input(
        "Minutes", 1, 24 * 60, 3, key="tr_auto_minutes", help="Training ends within this budget, final test included."
    )
    name = c3.text_input("Run name", "auto", key="tr_auto_name")
    extra = st.text_area(
        "Overrides, one `section.key=value` per line (optional)",
        key="tr_auto_extra",
        placeholder="model.name=asca_pico\naugment.mixup=false",
        height=68,
    )
    overrides = [line.strip() for line in extra.splitlines() if line.strip()]
    command = jobs.auto_train_command(data, f"{minutes:g}m", overrides)[3:]
    st.code("asca " + " ".join(command), language="bash")
    st.caption(
        "The recipe (front end, loss, augmentation, protocol, epochs) is chosen from the dataset and a "
        "short speed probe; the console below prints every choice with its reason."
    )
    if st.button("Start training", type="primary", icon=":material/play_arrow:", key="tr_auto_start"):
        info = jobs.start_auto_training(data, minutes, overrides, name=name)
        st.session_state["tr_selected"] = info.name
        st.toast(f"Started {info.name}")
        st.rerun()


def _form() -> None:
    auto, preset = st.tabs([AUTO, PRESET])
    with auto:
        _auto_form()
    with preset:
        _preset_form()


def _preset_form() -> None:
    presets = jobs.list_presets()
    c1, c2 = st.columns(2)
    preset = c1.selectbox(
        "Preset",
        list(presets) or ["(defaults)"],
        key="tr_preset",
        help="A YAML file of configs/; the fields below override it.",
    )
    name = c2.text_input("Run name", value=preset if presets else "run", key=f"tr_name_{preset}")
    cfg = load_config(presets.get(preset))
    models = list_models()
    c = st.columns(4)
    values = {
        "data.path": c[0].text_input("Dataset", cfg.data.path, key=f"tr_data_{preset}"),
        "model.name": c[1].selectbox("Model", models, index=models.index(cfg.model.name), key=f"tr_model_{preset}"),
        "model.layout": c[2].selectbox(
            "Layout", LAYOUTS, index=LAYOUTS.index(cfg.model.layout), key=f"tr_layout_{preset}"
        ),
        "train.epochs": c[3].number_input("Epochs", 1, 1000, cfg.train.epochs, key=f"tr_epochs_{preset}"),
    }
    c = st.columns(4)
    values["train.batch_size"] = c[0].number_input(
        "Batch size", 1, 1024, cfg.train.batch_size, key=f"tr_batch_{preset}"
    )
    values["train.lr"] = c[1].number_input(
        "Learning rate", 1e-6, 1.0, cfg.train.lr, step=1e-4, format="%.1e", key=f"tr_lr_{preset}"
    )
    values["features.clip_seconds"] = c[2].number_input(
        "Clip (s)", 0.5, 60.0, cfg.features.clip_seconds, key=f"tr_clip_{preset}"
    )
    values["augment.mixup"] = c[3].checkbox("Mixup", cfg.augment.mixup, key=f"tr_mixup_{preset}")
    extra = st.text_area(
        "More overrides, one `section.key=value` per line",
        key="tr_extra",
        placeholder="train.weight_decay=0.05\naugment.noise_prob=0.5",
        height=80,
    )
    current = cfg.to_dict()
    overrides = [f"{k}={v}" for k, v in values.items() if current[k.split(".")[0]][k.split(".")[1]] != v]
    overrides += [line.strip() for line in extra.splitlines() if line.strip()]
    command = jobs.train_command(presets.get(preset), overrides)[3:]
    st.code("asca " + " ".join(command).replace(str(jobs.PROJECT_ROOT) + "/", ""), language="bash")
    if st.button("Start training", type="primary", icon=":material/play_arrow:", key="tr_start"):
        info = jobs.start_training(presets.get(preset), overrides, name=name)
        st.session_state["tr_selected"] = info.name
        st.toast(f"Started {info.name}")
        st.rerun()


def _panel(name: str, live: bool) -> None:
    def body() -> None:
        info = next((r for r in jobs.list_runs() if r.name == name), None)
        if info is None:
            return
        if live and not info.active:
            st.rerun()  # the run ended: redraw the page without the refresh timer
        c1, c2, c3 = st.columns([4, 1, 1])
        c1.markdown(state._progress_line(info) + (f" · best val mAP {info.best():.3f}" if info.best() else ""))
        if info.active and c2.button(
            "Stop",
            icon=":material/stop:",
            key=f"stop_{name}",
            help="Graceful: the trainer saves a checkpoint and marks the run stopped",
        ):
            jobs.stop_run(info.path)
            st.toast(f"Stopping {name}…")
        if info.can_resume and c3.button("Resume", icon=":material/play_arrow:", key=f"resume_{name}"):
            jobs.resume_run(info.path)
            st.rerun(scope="app")
        st.progress(state.run_fraction(info))
        if info.state == "damaged":
            st.warning(f"This run cannot be read back: {info.problem}", icon=":material/warning:")
        elif info.state == "queued":
            st.info(
                "Queued: another training is using this machine; this one starts when it ends "
                "(one at a time, as two would share the cores and each run many times slower).",
                icon=":material/hourglass_top:",
            )
        elif info.state == "failed" and info.error:
            st.error(info.error)
        elif info.state == jobs.CRASHED:
            st.warning(
                "The training process ended without marking the run (killed or the machine restarted). "
                "Resume continues from the last checkpoint."
            )
        if info.metrics:
            st.plotly_chart(figures.training_curves({name: info.metrics}), key=f"curves_{name}")
        st.caption("Console (last lines)")
        st.code(
            "\n".join(jobs.read_console(info.path, 8000).splitlines()[-15:]) or "(no output yet)",
            language="log",
            wrap_lines=True,
        )

    state.guarded(body)


def render() -> None:
    st.title("Train")
    st.caption(
        "Runs go to the background as `asca train`; reload or close the page any time, the run folder keeps everything."
    )
    state.quick_demo_offer()
    with st.expander("New training run", expanded=not jobs.list_runs(), icon=":material/add:"):
        _form()
    runs = jobs.list_runs()
    if not runs:
        return
    st.subheader("Runs")
    st.dataframe(
        [r.summary() for r in runs],
        hide_index=True,
        key="train_runs",
        column_config={
            k: st.column_config.NumberColumn(k, format="%.3f")
            for k in ("train_loss", "val_loss", "val_acc", "best val_map")
        },
    )
    names = [r.name for r in runs]
    default = next((r.name for r in runs if r.active), names[0])
    if st.session_state.get("tr_selected") not in names:
        st.session_state["tr_selected"] = default
    name = st.selectbox("Run", names, key="tr_selected")
    active = next(r for r in runs if r.name == name).active
    (st.fragment(run_every=2.0)(_panel) if active else _panel)(name, active)


state.guarded(render)
