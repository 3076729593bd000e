test_that("bad input gets an error naming the problem", {
  skip_without_core()
  sce <- simulated_sce()
  set_counts <- function(f) {
    s <- sce
    m <- as.matrix(SummarizedExperiment::assay(s, "counts"))
    SummarizedExperiment::assay(s, "counts") <- f(m)
    s
  }
  expect_error(denoise(sce, assay = "raw"), "assay 'raw' is not in the object \\(assays: counts\\)")
  expect_error(denoise(set_counts(function(m) { m[2, 3] <- -1; m })), "negative values")
  expect_error(denoise(set_counts(function(m) m / 3)), "non-integer values")
  expect_error(denoise(set_counts(function(m) { m[2, 3] <- NA; m })), "NA/NaN values")
  expect_error(denoise(set_counts(function(m) { m[, 5] <- 0; m })), "1 cells have zero counts .*cell5")
  expect_error(denoise(sce, covariates = "batch"), "covariate 'batch' is not a column of colData")
  withna <- sce
  withna$group[3] <- NA
  expect_error(denoise(withna, covariates = "group"), "covariate 'group' has 1 NA values")
  expect_error(denoise(matrix(1:4, 2)), "needs a SingleCellExperiment or a Seurat object")
  expect_error(train(sce, epochs = 1, batch_size = 1), "batch_size must be >= 2")
})

test_that("allow_non_integer lets non-integer counts through", {
  skip_without_core()
  sce <- simulated_sce()
  SummarizedExperiment::assay(sce, "counts") <- SummarizedExperiment::assay(sce, "counts") * 1.5
  out <- do.call(denoise, c(list(sce, epochs = 1, allow_non_integer = TRUE), fast))
  expect_true("denoised" %in% SummarizedExperiment::assayNames(out))
})
