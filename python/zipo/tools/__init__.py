"""Tools on top of a model: gene programs of the pruned first layer, hyperparameter search."""
