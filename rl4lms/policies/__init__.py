from rl4lms.policies.base import LMActorCriticPolicy, PolicyOutput

__all__ = ["LMActorCriticPolicy", "PolicyOutput"]
