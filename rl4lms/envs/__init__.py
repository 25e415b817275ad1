from rl4lms.envs.observation import Observation
from rl4lms.envs.text_gen_env import TextGenEnv

__all__ = ["Observation", "TextGenEnv"]
