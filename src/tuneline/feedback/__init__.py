"""Feedback: the store of served exchanges and ratings, and its export into raw training data."""
