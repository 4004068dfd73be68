"""Calibration of weight techniques: statistics of every Linear's inputs over a held-out text that no workload
scores (lab/prompts.calibration_text), computed once per model and stored under data/cache/quant, like
MagCache's ratios. The time spent is counted here, so the runner reports it beside (never inside) timed runs."""
from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lab.paths import data_dir


@dataclass
class Calibration:
    """Token windows to calibrate on, and what calibrating cost."""

    windows: list[list[int]]
    source: str  # what the windows are, as a run records it
    seconds: float = 0.0  # spent calibrating (loading a stored calibration included)
    notes: list[str] = field(default_factory=list)  # "reused ..." / "calibrated and stored ..."

    @torch.inference_mode()
    def run(self, model, on_input) -> None:
        """Forward every window through `model`, calling on_input(name, module, rows) with the input rows
        [tokens, in_features] (float32) of every nn.Linear."""
        start = time.perf_counter()
        handles = [m.register_forward_pre_hook(_input_hook(name, on_input))
                   for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        try:
            device = next(model.parameters()).device
            for ids in self.windows:
                model(input_ids=torch.tensor([ids], device=device), use_cache=False)
        finally:
            for h in handles:
                h.remove()
            self.seconds += time.perf_counter() - start

    def input_stats(self, model) -> dict[str, dict[str, torch.Tensor]]:
        """Per Linear input channel: max |x| ("absmax") and sum of x^2 ("sqsum") over the calibration tokens;
        loaded when stored for these weights and windows, else computed and stored."""
        start = time.perf_counter()
        path = self._path(model, "quant")
        if path.exists():
            return self._reuse(path, start)
        stats: dict[str, dict[str, torch.Tensor]] = {}

        def collect(name, _module, rows):
            s = stats.setdefault(name, {"absmax": torch.zeros(rows.shape[1]), "sqsum": torch.zeros(rows.shape[1])})
            s["absmax"] = torch.maximum(s["absmax"], rows.abs().amax(0).cpu())
            s["sqsum"] += (rows * rows).sum(0).cpu()

        self.run(model, collect)
        self._store(stats, path)
        return stats

    @torch.inference_mode()
    def attention_stats(self, model, span: int = 64) -> dict[str, torch.Tensor]:
        """Where each layer's heads put their attention over the calibration windows: "offsets" [layers, heads,
        window] the mass at each distance query - key (the slash lines), "columns" [layers, heads, span] the mass
        on each of the first `span` keys (the vertical lines). Loaded when stored, else computed and stored."""
        # lazy: the weight-returning attention registers itself with transformers on import
        from lab.ops.attention import WEIGHTS_ATTENTION

        start = time.perf_counter()
        path = self._path(model, "sparse")
        if path.exists():
            return self._reuse(path, start)
        offsets, columns = None, None
        previous = model.config._attn_implementation
        model.set_attn_implementation(WEIGHTS_ATTENTION)
        try:
            device = next(model.parameters()).device
            for ids in self.windows:
                out = model(input_ids=torch.tensor([ids], device=device), use_cache=False, output_attentions=True)
                probs = torch.stack(out.attentions)[:, 0].float().cpu()  # [layers, heads, n, n]
                n = probs.shape[-1]
                at = torch.stack([torch.diagonal(probs, -d, 2, 3).sum(-1) for d in range(n)], -1)
                cols = probs[..., :span].sum(2)
                offsets = at if offsets is None else offsets[..., :n] + at[..., :offsets.shape[-1]]
                columns = cols if columns is None else columns + cols
        finally:
            model.set_attn_implementation(previous)
        stats = {"offsets": offsets, "columns": columns}
        self._store(stats, path)
        self.seconds += time.perf_counter() - start
        return stats

    def _reuse(self, path, start: float):
        stats = torch.load(path, weights_only=True)
        self.seconds += time.perf_counter() - start
        self.notes.append(f"reused {path.name}")
        return stats

    def _store(self, stats, path) -> None:
        tmp = path.with_suffix(".partial")
        torch.save(stats, tmp)
        tmp.replace(path)  # atomic: never a half-written calibration
        self.notes.append(f"calibrated and stored {path.name}")

    def _path(self, model, kind: str):
        folder = data_dir() / "cache" / kind
        folder.mkdir(parents=True, exist_ok=True)
        source = Path(str(getattr(model.config, "name_or_path", "") or "model")).name  # a folder: its last part
        name = re.sub(r"[^\w.-]+", "_", source).strip("_")[-60:]
        tokens = hashlib.sha256(repr(self.windows).encode()).hexdigest()[:8]
        return folder / f"{name}-{weights_fingerprint(model)}-{tokens}.pt"


def _input_hook(name: str, on_input):
    def hook(module, args):
        x = args[0]
        on_input(name, module, x.reshape(-1, x.shape[-1]).float())
    return hook


def weights_fingerprint(model, samples: int = 256) -> str:
    """A short hash of a model's weights: every tensor's name, shape and dtype, and `samples` values spread
    over it. Cheap on a 12B-parameter denoiser, and any retraining changes it."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            flat = t.detach().reshape(-1)
            picked = flat[::max(1, flat.numel() // samples)][:samples].float().cpu()
            digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            digest.update(picked.numpy().tobytes())
    return digest.hexdigest()[:12]
