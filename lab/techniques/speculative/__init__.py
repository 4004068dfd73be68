"""Speculative decoding: a cheap drafter proposes tokens, the target verifies them in one forward."""
