"""Generation engines for rollouts and evaluation: Hugging Face ``generate`` (default) or vLLM."""
