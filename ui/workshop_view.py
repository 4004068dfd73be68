"""The workshop's questions, under a workshop preset in the form and under its results."""
from __future__ import annotations

import streamlit as st

from lab.views import workshop


def show_questions(questions: tuple[str, ...], where: str) -> None:
    if questions:
        st.info(f"**Questions to discuss {where}**\n\n" + "\n".join(f"- {q}" for q in questions))


def show_preset_questions(preset: str) -> None:
    steps = workshop.steps()  # reads every workshop file: once per draw
    index = next((i for i, s in enumerate(steps) if s.preset == preset), None)
    if index is not None:
        show_questions(steps[index].questions,
                       f"(workshop step {index + 1} of {len(steps)}; run it, then look for the answers)")


def show_result_questions(experiment_name: str) -> None:
    show_questions(workshop.questions_for(experiment_name), "(workshop)")
