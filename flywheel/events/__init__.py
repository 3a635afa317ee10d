"""Interaction events: the contract, the one producer, and the two sources (Open Bandit replay, simulator)."""
