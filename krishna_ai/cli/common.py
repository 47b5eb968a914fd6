"""Options several commands share."""

from __future__ import annotations

import argparse


def add_sampling(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (default: the persona's)")
    g.add_argument("--temperature", type=float)
    g.add_argument("--top-p", type=float, dest="top_p")
    g.add_argument("--top-k", type=int, dest="top_k")
    g.add_argument("--max-new-tokens", type=int, dest="max_new_tokens")
    g.add_argument("--repetition-penalty", dest="repetition_penalty", type=float, help="1 = none")
    g.add_argument("--dry-multiplier", dest="dry_multiplier", type=float, help="DRY repetition control, 0 = off")
    g.add_argument("--seed", type=int)
