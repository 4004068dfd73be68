"""Produce golden files from NVIDIA's kvpress for the lab's KV methods to be tested against.

kvpress 0.5.5 pins transformers<5.3, so it cannot live in the lab's environment. Run this in a separate
venv (same Python, so the held-out text is the same):

    python3 -m venv /tmp/kvpress-venv
    /tmp/kvpress-venv/bin/pip install torch==2.13.0 transformers==5.2.0 safetensors accelerate cachetools datasets fire
    /tmp/kvpress-venv/bin/pip install --no-deps kvpress==0.5.5
    /tmp/kvpress-venv/bin/python tests/data/kvpress_golden/make_golden.py   # from the repository root

It reads the lab's converted SmolLM2 (data/cache/models/smollm2-135m-instruct, made by `python -m lab
prepare`) and writes golden.json: for each press and ratio, the context and question token ids kvpress's
pipeline used, the kept key positions per layer and KV head after the prefill, and the greedy answer.
"""
import json
import sys
from pathlib import Path

import torch
from kvpress import KnormPress, SnapKVPress, StreamingLLMPress, TOVAPress
from kvpress.pipeline import KVPressTextGenerationPipeline
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "data" / "cache" / "models" / "smollm2-135m-instruct"
QUESTION = "What does the assert statement do, and when is it removed?"
MAX_NEW_TOKENS = 24
CASES = [  # (lab technique name, lab knobs, kvpress press, attention implementation kvpress needs)
    ("knorm", {}, lambda r: KnormPress(compression_ratio=r), "sdpa"),
    ("streaming_llm", {"n_sink": 4}, lambda r: StreamingLLMPress(compression_ratio=r, n_sink=4), "sdpa"),
    ("snapkv", {"window_size": 64, "kernel_size": 5},
     lambda r: SnapKVPress(compression_ratio=r, window_size=64, kernel_size=5), "sdpa"),
    ("tova", {}, lambda r: TOVAPress(compression_ratio=r), "eager"),
]
RATIOS = [0.25, 0.5, 0.75]


def context_text() -> str:
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k].strip() for k in sorted(topics))[:2400]


def kept_positions(full: DynamicCache, pressed: DynamicCache) -> dict:
    """For each layer and KV head, the original positions of the keys the press kept (matched exactly)."""
    out = {}
    for layer, (a, b) in enumerate(zip(full.layers, pressed.layers)):
        heads = []
        for h in range(a.keys.shape[1]):
            match = (b.keys[0, h][:, None, :] == a.keys[0, h][None, :, :]).all(-1)  # [kept, n]
            heads.append(sorted(match.float().argmax(-1).tolist()))
        out[str(layer)] = heads
    return out


def main() -> None:
    tok = AutoTokenizer.from_pretrained(MODEL)
    golden = {"question": QUESTION, "max_new_tokens": MAX_NEW_TOKENS, "cases": []}
    for attn in ("sdpa", "eager"):
        model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32, attn_implementation=attn).eval()
        pipe = KVPressTextGenerationPipeline(model=model, tokenizer=tok)
        inputs = pipe.preprocess(context_text(), [QUESTION], answer_prefix="", max_context_length=100_000)
        context_ids = inputs["context_ids"]
        full = DynamicCache()
        with torch.no_grad():
            model.model(input_ids=context_ids, past_key_values=full)
        for name, knobs, make, needs in CASES:
            if needs != attn:
                continue
            for ratio in RATIOS:
                press = make(ratio)
                cache = DynamicCache()
                with torch.no_grad(), press(model):
                    model.model(input_ids=context_ids, past_key_values=cache)
                answer = pipe(context_text(), question=QUESTION, press=press, max_new_tokens=MAX_NEW_TOKENS)["answer"]
                golden["cases"].append({
                    "technique": name, "knobs": {**knobs, "compression_ratio": ratio},
                    "context_ids": context_ids[0].tolist(), "question_ids": inputs["questions_ids"][0][0].tolist(),
                    "kept": kept_positions(full, cache), "answer": answer})
                print(name, ratio, repr(answer), file=sys.stderr)
    versions = {"kvpress": "0.5.5", "transformers": __import__("transformers").__version__,
                "torch": torch.__version__}
    golden["made_with"] = versions
    (Path(__file__).parent / "golden.json").write_text(json.dumps(golden))


if __name__ == "__main__":
    main()
