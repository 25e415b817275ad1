from rl4lms.data_pools.text_gen_pool import Sample, TextGenPool

__all__ = ["Sample", "TextGenPool"]
