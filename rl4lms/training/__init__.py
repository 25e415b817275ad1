"""The config-driven trainer and what it writes to disk."""
