"""Block top-k attention (Quest's page selection, MInference's block-sparse pattern, HiP's pruning in one step):
per query block, keep the key blocks with the highest estimated score, plus the sink block and the most recent
ones. The choice is made per call, per layer and head, from the call's own queries and keys, so a needle far back
in the context can still be found, which a fixed window cannot do."""
from __future__ import annotations

from dataclasses import dataclass

from lab.errors import SpecError
from lab.techniques.base import knob
from lab.techniques.sparse_attention.base import SparsePattern


@dataclass
class BlockTopK(SparsePattern):
    name = "block_topk"
    title = "Block top-k attention"
    summary = ("Each query block scores every earlier key block by the product of their mean query and mean key "
               "(the block's average logit) and attends to the top_k best, plus the first block (attention sinks) "
               "and the most recent blocks; chosen again at every call, per layer and head. The KV cache stays "
               "whole; decode steps choose per token.")
    paper = ("Tang et al., Quest: Query-Aware Sparsity for Efficient Long-Context LLM Inference, ICML 2024 "
             "(arXiv:2406.10774); Jiang et al., MInference 1.0, NeurIPS 2024 (arXiv:2407.02490); Lee et al., HiP "
             "Attention (arXiv:2406.09827)")
    idea = ("In a long text each part of the prompt needs only a few other parts. Block top-k cuts queries and keys "
            "into blocks, makes a cheap guess of how much each query block would attend to each key block (from block "
            "averages), and computes attention only for the best few blocks, plus the first block and the recent ones. "
            "Attention work then grows with the blocks kept rather than with the whole length. The guess costs a "
            "little time and can miss a single important token hidden in a block that looks unimportant on average.")
    paper_claim = ("Quest: choosing the KV pages each query needs during decoding gives, at 32k tokens of context, up "
                   "to 7.03x faster self-attention than FlashInfer and, together with 4-bit weights, 2.23x faster "
                   "end-to-end decoding, with negligible accuracy loss on long-dependency tasks (7B long-context LLMs "
                   "on a GPU).")
    picture = "attention_mask"

    top_k: int = knob(8, min=0, max=4096, unit="blocks",
                      help="Key blocks each query block keeps by estimated score, beyond the sink block and the "
                           "most recent blocks (block_size tokens each).")
    window: int = knob(128, min=1, max=1_000_000, unit="tokens",
                       help="Recent tokens always attended: every key block reaching into the window before a query "
                            "block's first query is kept besides the top_k.")
    score: str = knob("mean", choices=("mean", "max", "mass"),
                      help="How a query block scores a key block: mean, the product of their mean query and mean "
                           "key (the block's average logit); max, the largest logit of the mean query with any key "
                           "of the block (a single strong key counts); mass, the attention the mean query gives "
                           "the block (softmax over the keys).")
    coverage: float = knob(0.0, min=0.0, max=1.0,
                           help="With score mass: a head stops taking blocks once the estimated attention mass of "
                                "what it keeps reaches this share (top_k stays the most it takes); 0 = always top_k.")

    def check(self) -> None:
        if self.coverage > 0 and self.score != "mass":
            raise SpecError(f"technique '{self.name}': coverage {self.coverage} needs score = \"mass\" (an "
                            f"attention share to add up), not score = \"{self.score}\"; allowed: coverage 0 with "
                            f"any score, or score \"mass\"")

    def covers_all(self, queries: int, keys: int) -> bool:
        # every query block keeps at least one forced block and top_k more (unless a coverage budget stops it
        # earlier): with so few blocks, all of them
        few_blocks = -(-keys // self.block_size) <= self.top_k + 1 and self.coverage == 0
        return few_blocks or self.window >= keys

    def _select(self, query, key):
        # lazy: torch loads only when a technique runs
        from lab.ops.block_select import select_blocks

        blocks = select_blocks(query, key, self.block_size, self.top_k, self.score, self.window,
                               self.coverage)
        self._count(kept=blocks.kept_pairs())  # chosen per call: kept_share counts what each call kept
        return blocks

    def token_mask(self, layer: int, query, key):
        # lazy: torch loads only when a technique runs
        from lab.ops.block_select import token_mask

        return token_mask(self._select(query, key), query.shape[2], key.shape[2], self.block_size)

    def flex_mask(self, layer: int, query, key):
        # lazy: torch loads only when a technique runs
        from lab.ops.flex import blocks_to_mask, causal_mod

        queries, keys = query.shape[2], key.shape[2]
        blocks = self._select(query, key)
        return blocks_to_mask(blocks.partial, blocks.full, causal_mod(keys - queries), self.block_size, queries,
                              keys)
