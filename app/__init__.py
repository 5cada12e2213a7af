"""midflight's dashboard: a Streamlit multipage app over the logbook's query layer (run it with `python -m app`)."""
