"""Experience -> model: the experience store, training samples, recipes and the trainer."""
