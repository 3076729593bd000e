"""Data: count checks, gene names, covariates, and mini-batches of cells."""
