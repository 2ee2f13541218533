"""ASCA Workbench: `streamlit run app.py` (or `make app`). Page config and navigation only."""

import streamlit as st

st.set_page_config(page_title="ASCA Workbench", page_icon=":material/graphic_eq:", layout="wide")

PAGES = "workbench/pages"
navigation = st.navigation(
    {
        "Explore": [
            st.Page(f"{PAGES}/data.py", title="Data", icon=":material/library_music:", default=True),
            st.Page(f"{PAGES}/augment.py", title="Augment", icon=":material/tune:"),
        ],
        "Train": [
            st.Page(f"{PAGES}/train.py", title="Train", icon=":material/model_training:"),
            st.Page(f"{PAGES}/runs.py", title="Runs", icon=":material/compare_arrows:"),
        ],
        "Inspect": [
            st.Page(f"{PAGES}/attention.py", title="Attention", icon=":material/visibility:"),
            st.Page(f"{PAGES}/classify.py", title="Classify", icon=":material/hearing:"),
            st.Page(f"{PAGES}/review.py", title="Review", icon=":material/fact_check:"),
        ],
    }
)
navigation.run()
