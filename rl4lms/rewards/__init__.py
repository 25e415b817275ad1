from rl4lms.rewards.base import BatchedRewardFunction, RewardFunction

__all__ = ["BatchedRewardFunction", "RewardFunction"]
