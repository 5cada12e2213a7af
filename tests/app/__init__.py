"""Headless tests of the Streamlit dashboard."""
