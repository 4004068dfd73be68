"""The app's pages, in the order a newcomer needs them, with icons that render without an emoji font."""
from pathlib import Path

import streamlit as st

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
