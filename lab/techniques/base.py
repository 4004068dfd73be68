"""The technique declaration: one dataclass per technique, knobs and metrics declared once.

Everything user-facing (page form, CLI listing, TOML validation, compare columns, report) reads these
declarations; nothing here imports torch, so pages can build forms without loading it.
"""
from __future__ import annotations

from typing import ClassVar

from lab.errors import SpecError, named
from lab.knobs import KnobInfo, knob, knobs_of
from lab.metrics import MetricDef
from lab.techniques.registry import register

__all__ = ["Technique", "KnobInfo", "knob", "metric"]


def metric(name: str, label: str, unit: str, definition: str, higher_is_better: bool | None,
           kind: str = "measured", share: bool = False) -> MetricDef:
    """Declare a metric a technique fills (see lab/metrics.py for the fields)."""
    return MetricDef(name, label, unit, definition, higher_is_better, kind, share)


class Technique:
    """Base of every technique. Subclasses are dataclasses; defining one with a `name` registers it.

    A technique subclasses the class of its slot (lab/techniques/slots.py: WeightsTechnique,
    AttentionTechnique, CacheTechnique, DecodingTechnique, DenoiserTechnique), which says which hooks the engine
    calls, and declares: name, family, title, summary, paper, idea, paper_claim, picture, applies_to, its knobs
    (knob()) and the metrics of its own it fills (metric(); measure() returns their values for one generation).
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    slot: ClassVar[str] = ""  # set by the slot class
    slot_order: ClassVar[int] = 0  # where the slot is applied in the canonical order (set by the slot class)
    model_kinds: ClassVar[tuple[str, ...]] = ()  # the model kinds whose runs use this slot (set by the slot class)
    batchable: ClassVar[bool] = True  # runs with batch_size > 1
    title: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    # The Techniques page's explanation, declared beside the code it explains so a new technique brings its own:
    # `idea`, 3-5 sentences a workshop student follows (what it does, why it should help, what it costs);
    # `paper_claim`, the paper's headline claim and the setting it was measured in (model, hardware), stated
    # qualitatively where no exact number is certain; `picture`, the kind of illustration that shows it (a key of
    # lab/views/technique_pictures.PICTURES).
    idea: ClassVar[str] = ""
    paper_claim: ClassVar[str] = ""
    picture: ClassVar[str] = ""
    applies_to: ClassVar[tuple[str, ...]] = ("llm",)
    denoisers: ClassVar[tuple[str, ...]] = ()  # diffusion: denoiser architectures it works on ("dit", "unet"); () = any
    # diffusion: denoiser classes of that architecture it is known to fail on, each with the reason
    unsupported_denoisers: ClassVar[dict[str, str]] = {}
    metrics: ClassVar[tuple[MetricDef, ...]] = ()  # metrics of its own, filled by measure()
    # True: an LLM run hands it the held-out calibration text (lab/ops/calibration.Calibration) before any timed
    # run: weights techniques through transform_weights(model, calibration), the others through calibrate()
    needs_calibration: ClassVar[bool] = False
    # engine 'hf_generate': the generate() argument that is this technique's counterpart in transformers ("" when
    # there is none); hf_generate_options() gives its value
    hf_generate_counterpart: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            register(cls)

    # --- declaration -----------------------------------------------------------------------------
    @classmethod
    def knobs(cls) -> list[KnobInfo]:
        return knobs_of(cls)

    @classmethod
    def from_params(cls, params: dict) -> "Technique":
        """Build from user params, validating every knob; unknown knobs are refused by name."""
        knobs = {k.name: k for k in cls.knobs()}
        unknown = sorted(named(str(p)) for p in params if p not in knobs)  # str(): a Python caller's keys
        if unknown:
            raise SpecError(f"technique '{cls.name}': unknown knob(s) {', '.join(unknown)}; "
                            f"its knobs are: {', '.join(knobs) or '(none)'}")
        values = {name: knobs[name].validate(f"technique '{cls.name}', knob '{name}'", v) for name, v in params.items()}
        return cls(**values)

    def params(self) -> dict:
        return {k.name: getattr(self, k.name) for k in self.knobs()}

    def label(self) -> str:
        inner = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({inner})"

    def check(self) -> None:
        """Checks beyond each knob's own range (e.g. that a named model exists); raise SpecError."""

    def check_spec(self, spec) -> None:
        """Checks against the rest of the experiment, a typed lab.spec.Spec (e.g. fewer steps than the baseline);
        raise SpecError."""

    def check_shape(self, shape) -> None:
        """Checks against an LLM's sizes read from its config before anything loads (lab/llm/models.ModelShape:
        layers, hidden, heads, kv_heads, head_dim, intermediate, vocab); called by validation when the config is
        readable. check_model() sees the loaded model later and may check more exactly."""

    def check_models(self, check_model) -> None:
        """Checks the models a knob names (a draft model) with `check_model(name)`, which raises SpecError when
        the name cannot load here; called by validation when models are checked."""

    def check_model(self, model) -> None:
        """Checks against the loaded model, before anything runs (e.g. that the hooks find what they attach to);
        raise SpecError naming the reason. A technique that cannot attach must refuse, never silently do nothing."""

    def conflicts_with(self, other: "Technique") -> str | None:
        """Why this technique cannot run together with `other` (None when it can)."""
        return None

    def calibrate(self, model, calibration) -> None:
        """Learn what the technique needs from held-out text (needs_calibration), once per variant."""
        raise NotImplementedError

    def details(self) -> dict:
        """What the technique found while preparing a variant (e.g. per-layer errors, bits per layer), stored
        with the run for its page view (JSON-able)."""
        return {}

    def run_metrics(self) -> dict[str, float]:
        """Values of its own metrics measured once per variant outside the timed repeats (e.g. the time to
        compile a kernel, spent in warm-up), recorded after the run."""
        return {}

    def compiles_per_shape(self) -> bool:
        """True when the technique runs code compiled for each input shape: the runner's warm-up then meets every
        shape of the workload, so no compile lands in a timed repeat."""
        return False

    def hf_generate_options(self, engine) -> dict:
        """Keyword arguments of transformers' generate() that run this technique's counterpart there."""
        return {}

    def hf_generate_refusal(self) -> str | None:
        """Why transformers' generate() has no counterpart of this technique with these knob values (None: it has
        one, or the technique declares none); validation asks before anything loads."""
        return None

    def extra_weight_bytes(self, engine) -> int:
        """Weights the technique adds beside the model (a draft model's), counted in the variant's weights."""
        return 0

    # --- its own metrics ------------------------------------------------------------------------
    def output_extra(self, output, decode, prompt_ids: list[int], detail: bool) -> dict:
        """What this technique's page view needs from one LLM output, stored with it (JSON-able). `decode` turns
        token ids into text; `detail` is true for the one item whose heavy views are kept."""
        return {}

    def measure(self, output) -> dict[str, float]:
        """Values of its own metrics for one output (an LLM Generation, or a diffusion batch's SampleResult);
        a metric without a value this time is left out."""
        return {}
