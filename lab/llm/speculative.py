"""The draft/verify loop of speculative decoding, in the style of gpt-fast's speculative_decode.

One round, for every sequence of the batch at once:
  1. the drafter proposes up to k tokens d_1..d_k after the sequence's newest token c;
  2. the target runs one forward over [c, d_1..d_k] and so scores every prefix in parallel;
  3. draft d_j is accepted while the target agrees (greedy: d_j is the target's argmax; sampling: the
     rejection rule below), and the target contributes one token of its own after the last accepted draft:
     its correction at the first rejection, or a bonus token when all k were accepted;
  4. each sequence rolls its cache back past its own first rejection (holes in a RaggedBatch).
So every round yields between 1 and k+1 tokens for one target forward, and the output is the target's.

Sampling (Leviathan et al. 2023; Chen et al. 2023): with q the target's and p the draft's distribution, d_j is
accepted with probability min(1, q(d_j) / p(d_j)); at the first rejection the next token is drawn from
max(q - p, 0) renormalised. The tokens are then distributed exactly as sampling from q alone. A
deterministic draft (prompt lookup) is a point mass p = 1 at d_j, which makes the rule: accept with q(d_j),
else draw from q with d_j removed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lab.ops.drafting import Proposal
from lab.ops.generation import Generation
from lab.ops.nbytes import cache_nbytes
from lab.ops.ragged import left_padded
from lab.ops.sampling import sample_next, warped_probs


def verify(target_logits: torch.Tensor, proposal: Proposal, settings, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """How many drafts each sequence accepts [B], and the target's own next token [B].

    target_logits [B, w+1, V]: column j scores the token after the sequence's newest token and d_1..d_j.
    """
    drafts, valid = proposal.tokens, proposal.valid.bool()
    batch, width = drafts.shape
    rows = torch.arange(batch, device=drafts.device)
    if settings.greedy:
        target_tokens = target_logits.argmax(dim=-1)  # [B, w+1]
        agree = (drafts == target_tokens[:, :width]) & valid
        n_accepted = agree.long().cumprod(dim=1).sum(dim=1)  # length of the leading run of agreements
        return n_accepted, target_tokens[rows, n_accepted]
    q = warped_probs(target_logits, settings)  # [B, w+1, V]
    if proposal.probs is None:  # a point mass on each draft token
        p = torch.zeros_like(q[:, :width]).scatter(-1, drafts[..., None], 1.0)
    else:
        p = proposal.probs.float()
    p = p * valid[..., None]  # a missing draft puts no mass anywhere, so it is always rejected
    q_d = q[:, :width].gather(-1, drafts[..., None])[..., 0]
    p_d = p.gather(-1, drafts[..., None])[..., 0]
    u = torch.rand(batch, width, generator=generator, device=drafts.device)
    accept = (u * p_d < q_d) & valid  # u < q/p, written without dividing by p
    n_accepted = accept.long().cumprod(dim=1).sum(dim=1)
    q_next = q[rows, n_accepted]
    p_next = torch.cat([p, torch.zeros_like(q[:, :1])], dim=1)[rows, n_accepted]  # p = 0 after the last draft
    residual = (q_next - p_next).clamp(min=0)
    mass = residual.sum(dim=-1, keepdim=True)
    # mass 0 only when p == q to rounding, where rejection has probability 0: fall back to q
    residual = torch.where(mass > 0, residual / mass.clamp(min=1e-30), q_next)
    return n_accepted, torch.multinomial(residual, 1, generator=generator)[:, 0]


@dataclass
class Round:
    """One draft/verify round of one sequence, kept for the page's token colouring and timeline."""
    proposed: list[int]
    accepted: int
    token: int  # the target's own token that ended the round
    draft_s: float
    verify_s: float
    end_s: float
    k: int = 0

    def as_dict(self) -> dict:
        return {"proposed": self.proposed, "accepted": self.accepted, "token": self.token,
                "draft_s": round(self.draft_s, 6), "verify_s": round(self.verify_s, 6), "end_s": round(self.end_s, 6),
                "k": self.k}


@dataclass
class SequenceRun:
    prompt: list[int]
    max_new: int
    tokens: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    rounds: list[Round] = field(default_factory=list)
    stopped_by: str = ""
    prefill_s: float = 0.0
    kv_trace: list = field(default_factory=list)  # (tokens seen, bytes of this sequence's row of the cache)
    draft_kv_bytes: int = 0

    def record_kv(self, target_row_bytes: int, draft_row_bytes: int) -> None:
        """What this sequence's rows of the target's (and the draft's) cache hold now, read from the tensors:
        every row of a ragged batch is as wide as the batch's cache, holes included, so a row is the cache's
        bytes over the rows still in the batch."""
        self.kv_trace.append((len(self.prompt) + len(self.tokens) - 1, target_row_bytes))
        self.draft_kv_bytes = draft_row_bytes

    def generation(self, draft_prefill_s: float) -> Generation:
        rounds = [r.as_dict() for r in self.rounds]
        extra = {"spec_rounds": rounds, "draft_prefill_s": draft_prefill_s, "target_forwards": len(rounds),
                 "drafted": sum(len(r.proposed) for r in self.rounds), "accepted": sum(r.accepted for r in self.rounds),
                 "draft_s": sum(r.draft_s for r in self.rounds) + draft_prefill_s,
                 "verify_s": sum(r.verify_s for r in self.rounds)}
        return Generation(prompt_len=len(self.prompt), token_ids=self.tokens, token_times=self.times,
                          kv_bytes=self.kv_trace[-1][1], stopped_by=self.stopped_by, extra=extra,
                          kv_trace=self.kv_trace, draft_kv_bytes=self.draft_kv_bytes)

    def add(self, token: int, t: float, eos_ids: set[int]) -> bool:
        """Append one token; True when this sequence is finished."""
        self.tokens.append(token)
        self.times.append(t)
        if token in eos_ids:
            self.stopped_by = "eos"
        elif len(self.tokens) >= self.max_new:
            self.stopped_by = "length"
        return bool(self.stopped_by)


class AdaptiveK:
    """k fixed, or adaptive as in transformers' assisted generation: +1 after a round where every sequence
    accepted every draft, -1 after a round with any rejection, within [1, k_max]."""

    def __init__(self, k: int, adaptive: bool, k_max: int):
        self.k, self.adaptive, self.k_max = k, adaptive, k_max

    def update(self, n_accepted: torch.Tensor, width: int) -> None:
        if not self.adaptive or width == 0:
            return
        if bool((n_accepted == width).all()):
            self.k = min(self.k + 1, self.k_max)
        else:
            self.k = max(self.k - 1, 1)


def speculative_generate(engine, drafter, prompts: list[list[int]], settings, schedule: AdaptiveK) -> list:
    """Generate after each prompt with draft/verify rounds; returns one Generation per prompt."""
    device = engine.device
    generator = None if settings.greedy else torch.Generator(device=device).manual_seed(settings.seed)
    seqs = [SequenceRun(list(p), settings.max_new_tokens) for p in prompts]
    target = engine.target_batch(prompts, settings, schedule.k_max + 1)
    with engine._prepared():
        start = time.perf_counter()
        tokens, valid = left_padded(prompts, device)
        first = sample_next(target.feed(tokens, valid)[:, -1], settings, generator)  # prefill: the target's own token
        now = time.perf_counter() - start
        for s, t in zip(seqs, first.tolist()):
            s.prefill_s = now
            s.add(t, now, engine.eos_ids)
        t0 = time.perf_counter()
        drafter.start(prompts, first)
        draft_prefill = time.perf_counter() - t0
        _record_kv(seqs, range(len(seqs)), target, drafter)
        active = [i for i, s in enumerate(seqs) if not s.stopped_by]
        newest = first
        if len(active) < len(seqs):
            newest = _select(active, target, drafter, newest)
        while active:
            t0 = time.perf_counter()
            histories = [seqs[i].prompt + seqs[i].tokens for i in active]
            proposal = drafter.propose(histories, schedule.k, settings, generator)
            width = int(proposal.valid.sum(dim=1).max()) if proposal.tokens.numel() else 0
            proposal = Proposal(proposal.tokens[:, :width], proposal.valid[:, :width],
                                None if proposal.probs is None else proposal.probs[:, :width])
            t1 = time.perf_counter()
            block = torch.cat([newest[:, None], proposal.tokens], dim=1)
            logits = target.feed(block, logits_to_keep=width + 1)
            n_accepted, own = verify(logits, proposal, settings, generator)
            target.keep(n_accepted + 1, width + 1)  # keep the newest token and the accepted drafts
            drafter.accept(n_accepted, own, width)
            t2 = time.perf_counter()
            now = t2 - start
            drafts, counts, owns = proposal.tokens.tolist(), n_accepted.tolist(), own.tolist()
            for row, i in enumerate(active):
                s = seqs[i]
                proposed = drafts[row][:int(proposal.valid[row].sum())]
                s.rounds.append(Round(proposed, counts[row], owns[row], t1 - t0, t2 - t1, now, schedule.k))
                for token in proposed[:counts[row]] + [owns[row]]:
                    if s.add(token, now, engine.eos_ids):
                        break
            schedule.update(n_accepted, width)
            _record_kv(seqs, active, target, drafter)  # before finished rows leave the batch
            still = [row for row, i in enumerate(active) if not seqs[i].stopped_by]
            newest = own
            if len(still) < len(active):
                newest = _select(still, target, drafter, own)
            active = [active[row] for row in still]
    return [s.generation(draft_prefill) for s in seqs]


def _record_kv(seqs, active, target, drafter) -> None:
    rows = len(active)
    target_row = cache_nbytes(target.cache) // rows
    draft_row = drafter.cache_bytes() // rows
    for i in active:
        seqs[i].record_kv(target_row, draft_row)


def _select(rows: list[int], target, drafter, newest) -> torch.Tensor:
    """Drop finished sequences from the batch: they would otherwise cost a forward row every round."""
    index = torch.tensor(rows, dtype=torch.long, device=newest.device)
    if rows:
        target.select(index)
        drafter.select(index)
    return newest[index]
