"""Train the shipped diffusion models on sklearn's digits: `python -m lab.diffusion.train dit --steps 6000`.

dit / unet: epsilon-prediction DDPM training (1000 linear-beta steps, as DDIM and DPM-Solver++ sample them),
AdamW with warm-up and cosine decay, an EMA of the weights (the EMA is what ships), and the class label
replaced by the null class for 10% of samples so one network learns both halves of classifier-free guidance.
classifier: a small CNN on the real digits (80/20 seeded split), scored on the held-out 20%.

Each writes data/models/digits-<what>/ with the weights (fp16 safetensors) and recipe.json (arguments, seed,
wall time, final loss, scores); data/models/README.md reports them.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from safetensors.torch import save_file

from lab.diffusion.data import augment, load_digits_16
from lab.diffusion.nets import NULL_CLASS, DigitClassifier, build_dit, build_unet
from lab.paths import SHIPPED_DATA

MODELS_DIR = SHIPPED_DATA / "models"
LABEL_DROP = 0.1


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def train_denoiser(kind: str, steps: int, batch: int, lr: float, seed: int, out: Path, resume: bool = False) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_dit() if kind == "dit" else build_unet()
    if resume:  # continue from the shipped (EMA) weights, e.g. a second session with a lower learning rate
        model.load_state_dict({k: v.float() for k, v in type(model).from_pretrained(out).state_dict().items()})
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    noise_schedule = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    x_all, y_all = load_digits_16("all")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    ema_decay, started, losses = 0.999, time.time(), []
    for step in range(steps):
        idx = torch.randint(0, len(y_all), (batch,), generator=gen)
        x0 = augment(x_all[idx], gen)
        labels = y_all[idx].clone()
        labels[torch.rand(batch, generator=gen) < LABEL_DROP] = NULL_CLASS
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, 1000, (batch,), generator=gen)
        noisy = noise_schedule.add_noise(x0, noise, t)
        if kind == "dit":
            pred = model(hidden_states=noisy, timestep=t, class_labels=labels).sample
        else:
            pred = model(noisy, t, class_labels=labels).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup=min(500, steps // 10))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # Early on the EMA follows quickly (decay ramps to 0.999) so short runs still ship trained weights.
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
        losses.append(loss.item())
        if step % 200 == 0 or step == steps - 1:
            recent = sum(losses[-200:]) / len(losses[-200:])
            print(f"{kind} step {step}/{steps} loss {recent:.4f} {time.time() - started:.0f}s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    ema.to(torch.float16).save_pretrained(out, safe_serialization=True)
    return {"final_loss_last200": round(sum(losses[-200:]) / len(losses[-200:]), 5),
            "train_seconds": round(time.time() - started)}


CLASSIFIER_LR, CLASSIFIER_BATCH = 2e-3, 64


def train_classifier(epochs: int, seed: int, out: Path) -> dict:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = load_digits_16("train")
    x_test, y_test = load_digits_16("test")
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=CLASSIFIER_LR, weight_decay=1e-4)
    started = time.time()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=gen)
        for start in range(0, len(order), CLASSIFIER_BATCH):
            idx = order[start:start + CLASSIFIER_BATCH]
            # Shifts and light noise: generated digits are a little off the real ones' grid and texture.
            x = augment(x_train[idx], gen) + 0.1 * torch.randn(len(idx), 1, 16, 16, generator=gen)
            loss = torch.nn.functional.cross_entropy(model(x.clamp(-1, 1)), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(x_test).argmax(-1) == y_test).float().mean().item()
        print(f"classifier epoch {epoch} loss {loss.item():.4f} held-out acc {acc:.4f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16) for k, v in model.state_dict().items()}, str(out / "classifier.safetensors"))
    return {"heldout_accuracy": round(acc, 4), "heldout_images": len(y_test), "train_seconds": round(time.time() - started)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("dit", "unet", "classifier"))
    parser.add_argument("--steps", type=int, default=6000, help="optimizer steps (dit, unet)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs (classifier)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="start from the weights already in --out (dit, unet)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or MODELS_DIR / f"digits-{args.what}"
    if args.what == "classifier":
        scores = train_classifier(args.epochs, args.seed, out)
        used = {"epochs": args.epochs, "batch": CLASSIFIER_BATCH, "lr": CLASSIFIER_LR,
                "augment": "shift <= 1 px, gaussian noise 0.1", "split": "80/20 seeded"}
    else:
        previous = json.loads((out / "recipe.json").read_text()) if args.resume else None
        scores = train_denoiser(args.what, args.steps, args.batch, args.lr, args.seed, out, args.resume)
        used = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "warmup": min(500, args.steps // 10),
                "schedule": "cosine", "ema": 0.999, "label_drop": LABEL_DROP, "augment": "shift <= 1 px",
                "noise": "DDPM linear betas 1e-4..0.02, 1000 steps, epsilon prediction"}
    recipe = {"what": args.what, "seed": args.seed, "threads": args.threads, **used, "torch": torch.__version__,
              "command": f"python -m lab.diffusion.train {args.what} " + " ".join(
                  f"--{k} {v}" for k, v in vars(args).items()
                  if k in (("epochs", "seed", "threads") if args.what == "classifier"
                           else ("steps", "batch", "lr", "seed", "threads"))), **scores}
    if args.what != "classifier" and args.resume:
        recipe["command"] += " --resume"
        recipe["resumed_from"] = previous
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(json.dumps(recipe, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
