"""Experience -> model: training samples, recipes and the trainer (the store is :mod:`lqo.store`)."""
