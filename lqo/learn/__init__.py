"""Plan -> score: plan features, tree-conv / graph-conv models, losses, checkpoints."""
