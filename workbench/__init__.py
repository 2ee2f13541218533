"""ASCA Workbench presentation layer: plotly figures, training-job control and Streamlit pages.

``workbench.figures`` builds every chart of the product from plain arrays, so the app and the
notebooks draw the same pictures; ``workbench.jobs`` starts, stops and lists ``asca train`` runs.
"""
