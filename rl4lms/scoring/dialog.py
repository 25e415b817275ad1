"""The turn separator of dialogue contexts (DailyDialog's pool writes it, the intent metric reads it)."""

EOU_TOKEN = "<EOU>"
"""Ends each utterance of a dialogue context: RL4LMs' DailyDialog prompts are ``u1<EOU>u2<EOU> ... <EOU>``."""
