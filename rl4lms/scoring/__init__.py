"""Scoring helpers shared by the data pools, the rewards and the metrics (which all import this
package, and which it never imports): word tokenization, final-answer reading, the synthetic tasks'
scores and the dialogue turn separator."""
