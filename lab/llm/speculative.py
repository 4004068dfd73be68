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
    """How many drafts the next round proposes: k fixed, or (adaptive) the k that maximises the expected tokens
    per second, from the acceptance and the round times measured so far in this generation.

    One round proposing w drafts yields E(w) tokens and costs T(w) seconds:

        E(w) = 1 + S_1 + ... + S_w,   S_j = a_1 a_2 ... a_j
            a_j: the chance that draft j is accepted given that drafts 1..j-1 were, so S_j is the chance that
            the first j are all accepted (the 1 is the target's own token, which every round yields);
            with one a for every position, E(w) = (1 - a^(w+1)) / (1 - a).
        T(w) = t0 + t1 w   (the round's draft + verify seconds, a line in the width)

    and the next round proposes k = argmax over 1 <= k <= k_max of E(k) / T(k).

    Why not transformers' heuristic (+1 after a round with every draft accepted, -1 after any rejection)? It
    shrinks k after every rejection whatever a wider round costs, and grows it back one round at a time. With
    prompt lookup the draft is free and a 135M target on a CPU verifies k+1 tokens for little more than one
    (t1 small against t0), while its copies are long once a match holds: E(k) / T(k) then keeps growing up to
    k_max, and the heuristic cuts the next long copy short (measured on SmolLM2-135M, grounded prompts, 2
    threads: 2.17x against 2.51x for a fixed k = 10). With a draft model t1 holds one draft forward per token,
    so when drafts are often rejected the argmax is small and k shrinks; a target whose verification grows
    with the width (a bigger model, a GPU batch) shows it in the round times and shrinks k too.

    Estimates:
      a_j  per draft position, from the rounds that reached it (draft j proposed, drafts 1..j-1 accepted),
           counts decayed by GAMMA per round so they follow the text (a copied passage, then free writing):
               a_j = (passed_j + M a_{j-1}) / (reached_j + M),  a_0 = (sum passed + 1) / (sum reached + 2)
           so a position seldom reached is taken to be like the one before it. Per position, not one a:
           prompt lookup's drafts are mostly right or wrong from their first token, so a_1 is low and the later
           a_j high; one pooled a would be dragged down by a_1 and undervalue long copies. For a draft model,
           whose a_j are alike, it extrapolates like one a.
      t0, t1  a robust line (Theil-Sen) through the last WINDOW rounds' (w, draft_s + verify_s): t1 the median
           of the slopes between pairs of rounds of different widths, with PRIOR_VOTES votes for the prior that
           drafting grows with the width and verifying does not (slope = sum draft_s / sum w); t0 the median of
           y - t1 w. A median, not least squares: a round another process slowed two-fold would otherwise set
           the slope. The prior rules until widths vary: a draft model held at one k still counts its
           per-token cost. Widths vary as the first round runs the start k and the next the argmax, as prompt
           lookup's matches come and go, and as a draft model's k moves with its acceptance. t1 >= 0: a wider
           round never costs less.

    Replaying the rounds of the first 8 grounded prompts (SmolLM2, greedy, prompt lookup: the drafts each k
    would propose and how many the target keeps) under a cost 1 + c w per round, tokens per unit cost against
    a fixed k = 10: c = 0, this schedule from k = 4: -1.3% (its first round at k = 4), the heuristic -15%;
    c = 3%: -2.4%, heuristic -10%; c = 10%: +1.6%, heuristic -1.3%. With a simulated draft model (a_j all
    alike) it lands within 3% of the best fixed k, where a fixed k_max = 8 loses 4-46%.
    """

    GAMMA = 0.95  # decay of the acceptance counts per round: ~20 rounds of memory
    M = 2.0  # pseudo-rounds pulling a_j toward a_{j-1}
    WINDOW = 24  # rounds the cost line is fitted to
    PRIOR_VOTES = 2  # votes of the prior slope among the pairwise slopes

    def __init__(self, k: int, adaptive: bool, k_max: int):
        self.k, self.adaptive, self.k_max = k, adaptive, k_max
        self.reached = [0.0] * (k_max + 1)  # index j = 1..k_max: decayed counts per draft position
        self.passed = [0.0] * (k_max + 1)
        self.rounds: list[tuple[int, float, float]] = []  # the last WINDOW rounds: (width, draft_s, verify_s)

    def update(self, n_accepted: torch.Tensor, proposed, draft_s: float, verify_s: float) -> None:
        """After a round: drafts accepted per sequence [B], drafts proposed per sequence ([B] or one int for all),
        and the round's draft and verify seconds."""
        if not self.adaptive:
            return
        accepted = [int(n) for n in n_accepted.tolist()]
        if isinstance(proposed, torch.Tensor):
            offered = [int(p) for p in proposed.tolist()]
        else:
            offered = [int(proposed)] * len(accepted)
        self.reached = [r * self.GAMMA for r in self.reached]
        self.passed = [p * self.GAMMA for p in self.passed]
        for n, p in zip(accepted, offered):
            for j in range(1, min(n + 1, p) + 1):  # drafts 1..n accepted, draft n+1 (if proposed) rejected
                self.reached[j] += 1.0
                self.passed[j] += 1.0 if j <= n else 0.0
        self.rounds = self.rounds[1 - self.WINDOW:] + [(max(offered, default=0), draft_s, verify_s)]
        self.k = self._best_k()

    def _cost_line(self) -> tuple[float, float]:
        """(t0, t1): seconds of a round of width w ~ t0 + t1 w, fitted to the last rounds (Theil-Sen)."""
        widths = sum(w for w, _, _ in self.rounds)
        prior = sum(d for _, d, _ in self.rounds) / widths if widths else 0.0
        points = [(w, d + v) for w, d, v in self.rounds]
        slopes = [prior] * self.PRIOR_VOTES
        for i, (wi, yi) in enumerate(points):
            slopes += [(yj - yi) / (wj - wi) for wj, yj in points[i + 1:] if wj != wi]
        t1 = max(_median(slopes), 0.0)
        return _median([y - t1 * w for w, y in points]), t1

    def _best_k(self) -> int:
        t0, t1 = self._cost_line()
        floor = 1e-3 * max(t0, 1e-9)  # T(k) stays positive even if noise puts t0 near 0
        a = (sum(self.passed) + 1.0) / (sum(self.reached) + 2.0)  # a_0: all positions pooled
        best_k, best_rate, survive, expected = 1, -1.0, 1.0, 1.0
        for k in range(1, self.k_max + 1):
            a = (self.passed[k] + self.M * a) / (self.reached[k] + self.M)  # a_k, pulled toward a_{k-1}
            survive *= a  # S_k
            expected += survive  # E(k)
            rate = expected / max(t0 + t1 * k, floor)
            if rate > best_rate:
                best_k, best_rate = k, rate
        return best_k


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


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
            schedule.update(n_accepted, proposal.valid.sum(dim=1), t1 - t0, t2 - t1)
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
