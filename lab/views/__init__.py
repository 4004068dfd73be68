"""What the pages show, as plain data read from the store: no Streamlit, no torch."""
