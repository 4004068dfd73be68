"""The app's pages, in the order a newcomer needs them, with icons that render without an emoji font."""
from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager  # Streamlit's own v1/v2 switch (no public API)

PAGES = Path(__file__).resolve().parent.parent / "pages"
# file stem -> (title in the sidebar, Material icon, URL path); the home page is the default
KNOWN = {"0_Home": ("Home", ":material/home:", ""),
         "1_LLM_Lab": ("LLM Lab", ":material/science:", "LLM_Lab"),
         "2_Diffusion_Lab": ("Diffusion Lab", ":material/image:", "Diffusion_Lab"),
         "3_Compare": ("Compare", ":material/compare_arrows:", "Compare"),
         "4_Techniques": ("Techniques", ":material/school:", "Techniques"),
         "5_What_if": ("What-if calculator", ":material/calculate:", "What_if")}


def _page(path: Path) -> st.Page:
    # a page not listed above still appears, titled from its file name (1_My_Page.py -> "My Page")
    stem_title = path.stem.split("_", 1)[-1].replace("_", " ")
    title, icon, url = KNOWN.get(path.stem, (stem_title, ":material/article:", path.stem.split("_", 1)[-1]))
    if path.stem == "0_Home":
        return st.Page(str(path), title=title, icon=icon, default=True)
    return st.Page(str(path), title=title, icon=icon, url_path=url)


def run_app() -> None:
    st.navigation([_page(p) for p in sorted(PAGES.glob("*.py"))]).run()


def route_through_app() -> None:
    """Called first by every page. Streamlit decides at server start, from the mere existence of pages/, to run
    pages the v1 way (each page file alone, the sidebar titled from file names, "app" among them) until some
    session runs app.py's st.navigation; a colleague's link straight to a page would land there. Switching that
    flag off and rerunning sends the same URL through app.py, so the sidebar always says Home, LLM Lab, ..."""
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()
