"""lqo's own statistics, filter selectivities and join-size estimates (model inputs)."""
