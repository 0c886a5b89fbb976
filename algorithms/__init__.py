"""Algorithms built on dpsgd: DPSVI (LDA), HSA2C (actor-critic) and the A3C baseline."""
