"""What the docs and metric definitions say is what the code and the shipped files do."""
import json
import re

from lab.paths import ROOT

DRAFT = ROOT / "data" / "models" / "smollm2-draft"


def test_the_distilled_drafts_head_size_in_the_docs_is_the_shipped_one():
    from safetensors import safe_open
    vocab = len(json.loads((DRAFT / "draft.json").read_text())["vocab_ids"])
    with safe_open(str(DRAFT / "model.safetensors"), "pt") as f:
        head = next(f.get_slice(k).get_shape() for k in f.keys() if "lm_head" in k)
    assert head[0] == vocab
    for doc in ("README.md", "docs/ARCHITECTURE.md", "data/models/smollm2-draft/README.md"):
        text = (ROOT / doc).read_text()
        sizes = {int(n) for n in re.findall(r"(\d{4})[- ](?:token|row) head|head over (\d{4}) tokens", text)
                 for n in n if n}
        assert sizes == {vocab}, (doc, sizes)


def test_agreement_is_defined_as_it_is_computed():
    from lab.bench.fidelity import agreement
    from lab.metrics import definition
    # a variant that runs on past the baseline's answer: two of four positions match
    assert agreement([1, 2], [1, 2, 3, 4])[0] == 0.5
    assert agreement([1, 2, 3, 4], [1, 2])[0] == 0.5
    assert "longer of the two" in definition("agreement").definition
