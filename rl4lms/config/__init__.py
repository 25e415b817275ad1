from rl4lms.config.loader import load_config
from rl4lms.config.validation import ConfigError, validate_config

__all__ = ["ConfigError", "load_config", "validate_config"]
