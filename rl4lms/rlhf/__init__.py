"""RLHF building blocks in the style of TRL: SFT with packing, pairwise reward models, and PPO on
(query, response, score) triplets that runs the same PPO update as the config trainer."""
