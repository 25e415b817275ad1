"""On-policy RL algorithms for language models."""
