"""Model and tokenizer loading, including the embedded tiny models."""
