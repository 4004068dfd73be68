"""The lab's KV methods against golden files made by NVIDIA's kvpress 0.5.5 (see
tests/data/kvpress_golden/make_golden.py): same kept positions per layer and KV head, same answer."""
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_model
GOLDEN = Path(__file__).parent / "data" / "kvpress_golden" / "golden.json"
CASES = json.loads(GOLDEN.read_text())["cases"] if GOLDEN.exists() else []


@pytest.fixture(scope="module")
def smollm2():
    from lab.models import load
    return load("smollm2-135m-instruct", device="cpu")


def test_golden_file_covers_the_kvpress_methods():
    assert {c["technique"] for c in CASES} == {"knorm", "streaming_llm", "snapkv", "tova"}


@pytest.mark.parametrize("case", CASES, ids=[f"{c['technique']}@{c['knobs']['compression_ratio']}" for c in CASES])
def test_same_kept_tokens_and_answer_as_kvpress(smollm2, case):
    from lab.engine import Engine, GenerationSettings
    from lab.techniques import build
    golden = json.loads(GOLDEN.read_text())
    engine = Engine(smollm2.model, smollm2.tokenizer, build([{"name": case["technique"], **case["knobs"]}]))
    gen = engine.generate(case["context_ids"], GenerationSettings(golden["max_new_tokens"]), case["question_ids"])
    kept = gen.extra["kept_positions"]
    context_len = len(case["context_ids"])
    for layer, heads in case["kept"].items():
        ours = kept[int(layer)][0]
        for h, expected in enumerate(heads):
            mine = sorted(p for p in ours[h].tolist() if p < context_len)  # drop question/answer tokens
            assert mine == expected, f"layer {layer} head {h}"
    answer = smollm2.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
    assert answer == case["answer"]
