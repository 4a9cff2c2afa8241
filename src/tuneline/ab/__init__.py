"""A/B on live feedback: champion vs challenger statistics, the report, and the decision it leads to."""
