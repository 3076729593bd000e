test_that("denoise(sce) adds the assay, the reducedDim and the library size", {
  skip_without_core()
  sce <- simulated_sce()
  out <- do.call(denoise, c(list(sce, epochs = 3, seed = 1,
                                 zero_inflation = TRUE), fast))
  den <- assay_of(out, "denoised")
  expect_identical(dim(den), dim(sce))
  expect_identical(dimnames(den), dimnames(sce))
  expect_true(all(is.finite(den)) && all(den >= 0))
  z <- assay_of(out, "zipo_zero_prob")
  expect_true(all(z >= 0 & z <= 1))
  latent <- reduced_dim(out, "ZIPO")
  expect_identical(dim(latent), c(ncol(sce), 8L))
  expect_identical(rownames(latent), colnames(sce))
  expect_true(all(out$zipo_library_size > 0))
  expect_identical(assay_of(out, "counts"), assay_of(sce, "counts"))
})

test_that("one seed, identical results; the mixture is below the rate", {
  skip_without_core()
  sce <- simulated_sce()
  a <- do.call(denoise, c(list(sce, epochs = 2, seed = 7), fast))
  b <- do.call(denoise, c(list(sce, epochs = 2, seed = 7), fast))
  c <- do.call(denoise, c(list(sce, epochs = 2, seed = 8), fast))
  expect_identical(assay_of(a, "denoised"), assay_of(b, "denoised"))
  expect_false(identical(assay_of(a, "denoised"), assay_of(c, "denoised")))
  model <- do.call(train, c(list(sce, epochs = 2, seed = 7), fast))
  denoised <- function(...) assay_of(denoise(sce, model = model, ...),
                                     "denoised")
  rate <- denoised(expectation = "rate")
  # the default, the rate given each count (ZINB), moves the rate towards the
  # counts
  default <- denoised()
  expect_identical(default, denoised(expectation = "posterior"))
  expect_gt(max(abs(default - rate)), 0.01)
  mixture <- denoised(expectation = "mixture")
  expect_true(all(mixture <= rate))
  expect_true(any(mixture < rate))
})

test_that("covariates from colData reach the model", {
  skip_without_core()
  sce <- simulated_sce()
  model <- do.call(train, c(list(sce, epochs = 1,
                                 covariates = c("group", "depth")), fast))
  expect_identical(summary(model)$covariates, c("group", "depth"))
  out <- denoise(sce, model = model)
  expect_identical(dim(assay_of(out, "denoised")), dim(sce))
})

# as scuttle::logNormCounts() does
test_that("subset.row denoises only those genes and returns x[subset.row, ]", {
  skip_without_core()
  sce <- simulated_sce()
  model <- do.call(train, c(list(sce, epochs = 2, seed = 5), fast))
  full <- assay_of(denoise(sce, model = model), "denoised")
  for (rows in list(c("gene7", "gene2", "gene30"), c(7L, 2L, 30L),
                    seq_len(nrow(sce)) %in% c(2, 7, 30))) {
    out <- denoise(sce, model = model, subset.row = rows,
                   zero_inflation = TRUE)
    genes <- if (is.logical(rows)) c("gene2", "gene7", "gene30")
             else c("gene7", "gene2", "gene30")
    expect_identical(rownames(out), genes)
    expect_equal(assay_of(out, "denoised"), full[genes, ], tolerance = 1e-6)
    expect_identical(dim(assay_of(out, "zipo_zero_prob")), c(3L, ncol(sce)))
    expect_identical(assay_of(out, "counts"),
                     assay_of(sce, "counts")[genes, ])
  }
  # Training with subset.row still fits all genes.
  out <- do.call(denoise, c(list(sce, epochs = 1, subset.row = "gene1"), fast))
  expect_identical(dim(out), c(1L, ncol(sce)))
})
