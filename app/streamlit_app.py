"""The dashboard's entry script: navigation, the shared sidebar (run picker, x axis) and nothing else.

Launched by `midflight dashboard` (or `streamlit run app/streamlit_app.py -- --runs PATH`);
the run folders come from --runs or $MIDFLIGHT_RUNS, else sample_runs/.
"""

import sys
from pathlib import Path

import streamlit as st

# `streamlit run app/streamlit_app.py` from anywhere: the folder that holds the `midflight` package goes on the
# path (the checkout's top; site-packages when installed), never a folder of its parts (it would shadow PyPI's
# logbook and Coqui's trainer)
_top = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_top if (_top / "midflight" / "__init__.py").is_file() else _top.parent))
from midflight.app import context, data  # noqa: E402

st.set_page_config(page_title="midflight", page_icon=":material/flight_takeoff:", layout="wide")

src = context.source()
runs = list(data.runs(src, data.key(src))["run_id"])
if "open_run" in st.session_state:  # the Runs page asked to open a run
    st.session_state["run"] = st.session_state.pop("open_run")
elif "run" not in st.session_state and st.query_params.get("run") in runs:  # a link to a run (?run=NAME)
    st.session_state["run"] = st.query_params["run"]
if runs and st.session_state.get("run") not in runs:
    st.session_state["run"] = runs[0]
if runs:
    st.query_params["run"] = st.session_state["run"]  # the address bar always links to what is shown

with st.sidebar:
    st.markdown("### :material/flight_takeoff: midflight")
    if runs:
        st.selectbox("run", runs, key="run")
    else:
        st.caption("No runs yet in " + ", ".join(str(r) for r in src.roots))
    st.radio("x axis", list(context.AXES), format_func=context.AXES.get, key="axis", horizontal=True)
    if src.note:
        st.caption(src.note)

pages = [
    st.Page("app_pages/runs.py", title="Runs", icon=":material/table_rows:", default=True),
    st.Page("app_pages/live.py", title="Live", icon=":material/monitoring:"),
    st.Page("app_pages/ranks.py", title="Ranks & devices", icon=":material/grid_view:"),
    st.Page("app_pages/lineage.py", title="Lineage & logbook", icon=":material/account_tree:"),
    st.Page("app_pages/incidents.py", title="Incidents", icon=":material/warning:"),
    st.Page("app_pages/energy.py", title="Energy & CO2", icon=":material/bolt:"),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/stacked_line_chart:"),
]
st.navigation(pages).run()
