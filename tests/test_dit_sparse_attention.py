"""DiT sparse attention (dit_sparse_attention) on a tiny randomly initialised DiT (test data only): full coverage is
the dense run bit for bit, a smaller keep_ratio changes the images and computes a smaller share of pairs (the
share written out by hand), the reused mask is a slow top-k written here, and bad knobs are refused."""
from __future__ import annotations

import itertools
import math
import types

import pytest
import torch

from lab.diffusion.variant import DiffusionVariant
from lab.errors import SpecError
from lab.spec import Spec
from lab.techniques import build

STEPS = 12
TOKENS = 16  # 16x16 images in patches of 4: 4 x 4 tokens


def tiny_dit(seed: int = 0):
    from lab.diffusion.nets import CachedDiT
    torch.manual_seed(seed)
    model = CachedDiT(num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=1, num_layers=3,
                      sample_size=16, patch_size=4, num_embeds_ada_norm=10, norm_num_groups=1)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def dit():
    return tiny_dit()


def make_variant(model, techniques: list[dict], steps: int = STEPS, guidance: float = 3.0):
    spec = Spec(steps=steps, guidance=guidance, sampler="ddim", model_kind="diffusion")
    loaded = types.SimpleNamespace(model=model, name="tiny", pipeline=None)
    variant = DiffusionVariant(spec, loaded, build(techniques, model_kind="diffusion"))
    variant.prepare()
    return variant


def generate(model, techniques: list[dict], steps: int = STEPS):
    """The images and, with the technique, the metrics its measure() reports for the generation."""
    variant = make_variant(model, techniques, steps)
    result, _, _ = variant.generate([0, 3, 7], seed=5, device="cpu")
    return result.images, (variant.techniques[0].measure(result) if variant.techniques else {})


def sparse(**knobs) -> list[dict]:
    return [{"name": "dit_sparse_attention", **knobs}]


def test_full_coverage_and_refresh_at_every_step_equal_the_dense_run_bit_for_bit(dit):
    from diffusers.models.attention_processor import AttnProcessor2_0

    base, _ = generate(dit, [])
    full, metrics = generate(dit, sparse(keep_ratio=1.0, refresh_every=4))
    assert torch.equal(full, base)
    assert metrics == {"dit_attended_share": 100.0, "dense_attention_steps": STEPS}
    # refreshing at every step runs the processor's own dense path, op for op diffusers' AttnProcessor2_0
    every, metrics = generate(dit, sparse(keep_ratio=0.25, refresh_every=1))
    assert torch.equal(every, base) and metrics["dit_attended_share"] == 100.0
    # the processors are put back after the generation: the plain model is the baseline again
    assert all(type(b.attn1.get_processor()) is AttnProcessor2_0 for b in dit.transformer_blocks)
    again, _ = generate(dit, [])
    assert torch.equal(again, base)


def test_a_smaller_keep_ratio_attends_to_fewer_pairs_as_counted_by_hand(dit):
    base, _ = generate(dit, [])
    refresh_every = 4
    dense_steps = len(range(0, STEPS, refresh_every))  # steps 0, 4, 8
    shares = []
    for keep_ratio in (0.75, 0.5, 0.25, 0.1):
        images, metrics = generate(dit, sparse(keep_ratio=keep_ratio, refresh_every=refresh_every))
        k = math.ceil(keep_ratio * TOKENS)  # 12, 8, 4, 2 keys per query
        # every layer, head and row has the same shape, so the pair-weighted share is the per-step one
        by_hand = 100.0 * (dense_steps * TOKENS + (STEPS - dense_steps) * k) / (STEPS * TOKENS)
        assert metrics["dit_attended_share"] == pytest.approx(by_hand, abs=1e-9)
        assert metrics["dense_attention_steps"] == dense_steps
        assert not torch.equal(images, base)
        shares.append(metrics["dit_attended_share"])
    assert all(a > b for a, b in itertools.pairwise(shares))
    # nothing crosses generations: the same generation again gives the same images
    again, _ = generate(dit, sparse(keep_ratio=0.1, refresh_every=refresh_every))
    assert torch.equal(again, images)


def _heads(attn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a self-attention layer, [batch, heads, tokens, head_dim]."""
    b, n, _ = x.shape
    return tuple(proj(x).view(b, n, attn.heads, -1).transpose(1, 2) for proj in (attn.to_q, attn.to_k, attn.to_v))


def test_the_mask_between_refreshes_is_the_top_k_of_the_refresh_steps_probabilities(dit):
    # 5 steps, refresh every 3: dense at steps 0 and 3; step 4 attends with the keys chosen at step 3
    keep_ratio, k = 0.25, 4
    variant = make_variant(dit, sparse(keep_ratio=keep_ratio, refresh_every=3), steps=5)
    layers = [b.attn1 for b in dit.transformer_blocks]
    seen = {}  # (layer, step) -> (input, output) of the attention layer

    def hook(index):
        def record(_module, args, kwargs, output):
            x = args[0] if args else kwargs["hidden_states"]
            seen[index, variant.call.step_index] = (x.clone(), output.clone())
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        variant.generate([0, 3, 7], seed=5, device="cpu")
    finally:
        for h in handles:
            h.remove()
    processors = variant.techniques[0]._processors
    for i, attn in enumerate(layers):
        mask = processors[i].mask  # chosen at step 3, used at step 4 (step 4 refreshes nothing)
        x3, _ = seen[i, 3]
        q, key, _ = _heads(attn, x3)
        rows, heads, queries, keys = mask.shape
        assert (rows, heads, queries, keys) == (6, 2, TOKENS, TOKENS)  # [uncond; cond] x 3 images
        for b in range(rows):
            for h in range(heads):
                for j in range(queries):
                    # the slow definition: this query's probabilities over every key, the k largest kept
                    probs = torch.softmax(torch.stack([q[b, h, j] @ key[b, h, t] for t in range(keys)])
                                          / math.sqrt(q.shape[-1]), dim=0)
                    top_mass = probs.sort(descending=True).values[:k].sum()
                    kept = mask[b, h, j]
                    assert int(kept.sum()) == k
                    # up to ties: the kept keys hold the top-k probability mass
                    assert float(probs[kept].sum()) == pytest.approx(float(top_mass), abs=1e-6)

        # step 4 attends to exactly those keys: softmax over the kept keys only, then the output projection
        x4, out4 = seen[i, 4]
        q, key, v = _heads(attn, x4)
        expected = torch.empty_like(q)
        for b in range(rows):
            for h in range(heads):
                for j in range(queries):
                    kept = mask[b, h, j]
                    weights = torch.softmax(key[b, h][kept] @ q[b, h, j] / math.sqrt(q.shape[-1]), dim=0)
                    expected[b, h, j] = weights @ v[b, h][kept]
        expected = attn.to_out[0](expected.transpose(1, 2).reshape(rows, queries, -1))
        assert torch.allclose(out4, expected, atol=1e-5)


@pytest.mark.parametrize("knobs,allowed", [({"keep_ratio": 0}, "allowed: 0.01 to 1.0"),
                                           ({"keep_ratio": 1.5}, "allowed: 0.01 to 1.0"),
                                           ({"keep_ratio": -0.2}, "allowed: 0.01 to 1.0"),
                                           ({"refresh_every": 0}, "allowed: 1 to 1000")])
def test_bad_knobs_are_refused_naming_the_allowed_values(knobs, allowed):
    (knob,) = knobs
    with pytest.raises(SpecError, match=f"knob '{knob}'.*{allowed}"):
        build(sparse(**knobs), model_kind="diffusion")


def test_denoisers_it_cannot_attach_to_are_refused_with_the_reason():
    from lab.bench.validate import validate

    with pytest.raises(SpecError, match="works on dit denoisers"):
        validate({"model": "digits-unet", "variants": [{"techniques": sparse()}]}, check_model_exists=False)
    from diffusers import UNet2DModel
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(8, 16, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), num_class_embeds=11)
    with pytest.raises(SpecError, match="group-normed feature maps"):  # never silently dense
        make_variant(unet.eval(), sparse())


def test_on_a_pixart_pipeline_the_same_pattern_applies_to_its_self_attention(tmp_path):
    # a tiny random PixArt-Sigma folder (tests/tiny_pipelines.py): 32 px images are 64 latent tokens; its
    # cross-attention to the prompt stays dense and is not counted
    from tiny_pipelines import save_tiny_pipeline

    from lab.bench.validate import validate
    from lab.diffusion.pipelines import load_pipeline
    from lab.diffusion.variant import image_batches

    folder = str(save_tiny_pipeline("pixart", tmp_path / "pixart"))
    pipeline = load_pipeline(folder, "cpu")

    def run(techniques):
        spec = validate({"model": folder, "steps": 6, "guidance": 4.0, "image_size": 32, "prompts": 2,
                         "batch_size": 2, "variants": [{"techniques": techniques}]})
        variant = DiffusionVariant(spec, pipeline, build(techniques, model_kind="diffusion"))
        variant.prepare()
        result, _, _ = variant.generate(image_batches(spec)[0], seed=5, device="cpu")
        return result.images, (variant.techniques[0].measure(result) if variant.techniques else {})

    base, _ = run([])
    full, metrics = run(sparse(keep_ratio=1.0))
    assert torch.equal(full, base) and metrics["dit_attended_share"] == 100.0
    images, metrics = run(sparse(keep_ratio=0.25, refresh_every=3))
    assert not torch.equal(images, base)
    tokens, k = 64, 16
    assert metrics == {"dit_attended_share": pytest.approx(100.0 * (2 * tokens + 4 * k) / (6 * tokens)),
                       "dense_attention_steps": 2}  # steps 0 and 3 of 6


@pytest.mark.parametrize("builder", ["build_flux", "build_sd3"])
def test_joint_attention_is_refused_as_declared(builder):
    import tiny_pipelines

    from lab.techniques.sparse_attention.dit_sparse import DiTSparseAttention

    transformer = getattr(tiny_pipelines, builder)().transformer
    assert type(transformer).__name__ in DiTSparseAttention.unsupported_denoisers  # validation refuses it first
    with pytest.raises(SpecError, match="attention the sparse processor does not compute.*allowed: denoisers whose"):
        DiTSparseAttention().prepare_denoiser(types.SimpleNamespace(model=transformer))
