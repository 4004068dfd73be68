"""Distil a small draft model from SmolLM2 for speculative decoding: `python -m lab.llm.distill --minutes 30`.

The draft is SmolLM2's token embedding (shared with the target, not shipped) followed by four of its
decoder layers (initialised from its first four), its final norm, and an LM head over the (at most 8192)
tokens most frequent in the training text: 7544 for the shipped draft, whose training text held no more
distinct tokens. On this CPU the LM head over the full 49k vocabulary costs as
much as eight decoder layers, so a draft with the full head could never be cheap enough to pay; a token the
trimmed head cannot propose is simply rejected by the target (the rejection rule stays exact).

Training signal: the target's own next-token distribution (teacher forcing) on two kinds of text: answers
SmolLM2 itself generated to instructions made from TOPICS x TEMPLATES (the chat domain the draft must
predict; the benchmark prompts are not among them), and prose from CPython's pydoc topics. The draft is
trained to agree with the target, which is what acceptance measures. Only the draft's layers,
norm and head are saved (bf16, about 35 MB) to data/models/smollm2-draft/, with a JSON recipe.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter

import torch
from safetensors.torch import save_file

from lab.llm.engine import Engine
from lab.llm.models import load
from lab.llm.workloads import chat_input_ids, perplexity_windows
from lab.ops.distilled_draft import (
    DRAFT_DIR,
    INIT_LAYERS,
    build_draft,
    load_shipped_draft,
    trained_state,
    with_new_head,
)
from lab.ops.sampling import GenerationSettings
from lab.paths import data_dir

DRAFT_VOCAB = 8192


TEMPLATES = ["Explain {} in simple terms.", "Write a short paragraph about {}.", "Give three practical tips about {}.",
             "What are the pros and cons of {}?", "Write a short story that involves {}.", "Describe {} to a beginner."]
TOPICS = ["volcanoes", "the printing press", "learning a new language", "saving money", "bicycles", "chess",
          "the moon landing", "rain forests", "public libraries", "coffee", "electric cars", "honey bees",
          "the Roman empire", "recycling plastic", "a job interview", "time management", "the human heart",
          "black holes", "baking bread", "jazz music", "the internet", "a rainy day", "mountain hiking",
          "vaccines", "solar panels", "a lost dog", "friendship", "sorting algorithms", "SQL databases",
          "unit testing", "the water cycle", "earthquakes", "ancient Egypt", "a city at night", "gardening",
          "sleep", "climate change", "the stock market", "a train journey", "painting with watercolours",
          "the ocean", "robots", "a birthday party", "the French Revolution", "writing a resume",
          "meditation", "the immune system", "hash tables", "recursion", "a small bakery", "penguins",
          "the Olympic games", "running a marathon", "kites", "dinosaurs", "a haunted house", "smartphones",
          "the Great Wall of China", "composting", "public speaking", "the speed of light", "a snowstorm"]


def self_generated_texts(loaded, minutes: float, max_new: int = 160, batch: int = 16, seed: int = 0) -> list[list[int]]:
    """SmolLM2's own answers (prompt + answer token ids) to TOPICS x TEMPLATES, sampled at temperature 0.7,
    generated in batches for up to `minutes`; cached under data/cache so a resumed training reuses them."""


    cache = data_dir() / "cache" / "distill_self_generated.json"
    if cache.exists():
        return json.loads(cache.read_text())
    instructions = [t.format(topic) for topic in TOPICS for t in TEMPLATES]
    random.Random(seed).shuffle(instructions)
    engine = Engine(loaded.model, loaded.tokenizer)
    texts, start = [], time.time()
    for i in range(0, len(instructions), batch):
        prompts = [chat_input_ids(loaded.tokenizer, text) for text in instructions[i:i + batch]]
        with torch.no_grad():
            gens = engine.generate_batch(prompts, GenerationSettings(max_new, temperature=0.7, top_p=0.9, seed=i))
        texts += [p + g.token_ids for p, g in zip(prompts, gens)]
        print(f"generated {len(texts)} answers, {sum(len(t) for t in texts)} tokens, "
              f"{(time.time() - start) / 60:.1f} min", flush=True)
        if time.time() - start > minutes * 60:
            break
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(texts))
    return texts


def stream_windows(texts: list[list[int]], window: int) -> list[list[int]]:
    stream = [t for text in texts for t in text]
    return [stream[i:i + window] for i in range(0, len(stream) - window + 1, window)]


def frequent_tokens(windows: list[list[int]], special: list[int], n: int) -> list[int]:
    counts = Counter(t for w in windows for t in w)
    ids = list(dict.fromkeys(special + [t for t, _ in counts.most_common()]))[:n]
    return sorted(ids)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="training time budget")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue training the shipped draft")
    parser.add_argument("--revocab", action="store_true", help="with --resume: choose the head's vocabulary anew "
                        "from the training text (rows of tokens kept from the old head keep their training)")
    parser.add_argument("--gen-minutes", type=float, default=12.0,
                        help="time for generating SmolLM2's own answers as training text (0: prose only)")
    args = parser.parse_args(argv)



    torch.manual_seed(args.seed)
    loaded = load("smollm2-135m-instruct", device="cpu")
    target, tokenizer = loaded.model, loaded.tokenizer
    windows = perplexity_windows(tokenizer, 200_000, args.window)
    # the first windows are the perplexity workload's; train on the rest, evaluate on a held-out tail
    train, heldout = windows[40:-16], windows[-16:]
    special = sorted({tokenizer.eos_token_id, *tokenizer.all_special_ids})
    if args.gen_minutes > 0:
        own = stream_windows(self_generated_texts(loaded, args.gen_minutes, seed=args.seed), args.window)
        # held-out agreement is measured on the target's own answers too: that is what drafting meets
        train, heldout = train + own[:-8] * 3, heldout[:8] + own[-8:]
    previous = {"steps": 0, "tokens": 0, "history": [], "sessions": []}
    vocab_ids = frequent_tokens(train, special, DRAFT_VOCAB)
    if args.resume:
        draft, vocab, previous = load_shipped_draft(target)
        if args.revocab:
            draft, vocab = with_new_head(draft, vocab, target, vocab_ids)
        vocab_ids = vocab.tolist()
    else:
        draft, vocab = build_draft(target, INIT_LAYERS, vocab_ids)
    params = [p for n, p in draft.named_parameters() if not n.startswith("model.embed_tokens")]
    for p in draft.model.embed_tokens.parameters():
        p.requires_grad_(False)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    coverage = sum(t in set(vocab_ids) for w in heldout for t in w) / sum(len(w) for w in heldout)
    print(f"{len(train)} training windows, vocab coverage on held-out text {coverage:.3f}", flush=True)

    def teacher_targets(batch):
        with torch.no_grad():
            logits = target(input_ids=batch).logits.float()
            return torch.softmax(logits, dim=-1)[..., vocab], logits.argmax(-1)

    def agreement() -> float:
        """Top-1 agreement of draft and target on held-out text: the greedy acceptance rate of one draft."""
        draft.train(False)
        hits = total = 0
        with torch.no_grad():
            for w in heldout:
                ids = torch.tensor([w])
                _, teacher_top = teacher_targets(ids)
                student_top = vocab[draft(input_ids=ids).logits.argmax(-1)]
                hits += int((student_top == teacher_top).sum())
                total += ids.numel()
        return hits / total

    start, step, tokens = time.time(), previous["steps"], previous["tokens"]
    history = previous["history"] + [{"step": step, "tokens": tokens, "agreement": round(agreement(), 4),
                                      "heldout": "prose + SmolLM2's own answers" if args.gen_minutes else "prose"}]
    print(history[-1], flush=True)
    while time.time() - start < args.minutes * 60:
        rows = torch.randint(len(train), (args.batch,))
        batch = torch.tensor([train[int(r)] for r in rows if len(train[int(r)]) == args.window] or [train[0]])
        probs, _ = teacher_targets(batch)
        draft.train(True)
        log_q = torch.log_softmax(draft(input_ids=batch).logits.float(), dim=-1)
        # cross-entropy against the teacher's probabilities on the draft's vocabulary (= KL up to a constant)
        loss = -(probs * log_q).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step, tokens = step + 1, tokens + batch.numel()
        if step % 25 == 0 or time.time() - start >= args.minutes * 60:
            history.append({"step": step, "tokens": tokens, "loss": round(float(loss.detach()), 4),
                            "agreement": round(agreement(), 4), "minutes": round((time.time() - start) / 60, 1)})
            print(history[-1], flush=True)
    DRAFT_DIR.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in trained_state(draft).items()},
              str(DRAFT_DIR / "model.safetensors"))
    sessions = previous.get("sessions") or ([] if not args.resume else [
        {k: previous[k] for k in ("steps", "minutes", "lr", "batch", "seed")}])
    sessions.append({"steps": step - previous["steps"], "minutes": round((time.time() - start) / 60, 1),
                     "lr": args.lr, "batch": args.batch, "seed": args.seed})
    recipe = {"target": "smollm2-135m-instruct", "init_layers": list(INIT_LAYERS), "vocab_ids": vocab_ids,
              "heldout_vocab_coverage": round(coverage, 4), "steps": step, "tokens": tokens, "batch": args.batch,
              "window": args.window, "lr": args.lr, "seed": args.seed,
              "minutes": round(sum(x["minutes"] for x in sessions), 1), "sessions": sessions,
              "final_agreement": round(agreement(), 4), "history": history, "threads": torch.get_num_threads()}
    (DRAFT_DIR / "draft.json").write_text(json.dumps(recipe, indent=1))
    print("saved", DRAFT_DIR, {k: v for k, v in recipe.items() if k not in ("vocab_ids", "history")}, flush=True)


if __name__ == "__main__":
    main()
