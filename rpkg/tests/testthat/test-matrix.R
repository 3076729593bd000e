# A plain matrix, a dgCMatrix or a DelayedMatrix of counts (genes x cells) in,
# the denoised matrix out: the same values as through a SingleCellExperiment.

denoised_sce <- function(sce, ...) {
  assay_of(do.call(denoise, c(list(sce, ...), fast)),
                              "denoised")
}

test_that("matrix and dgCMatrix in give the SingleCellExperiment's values", {
  skip_without_core()
  sce <- simulated_sce()
  expected <- denoised_sce(sce, epochs = 2, seed = 3)
  sparse <- assay_of(sce)
  expect_s4_class(sparse, "dgCMatrix")
  for (m in list(sparse, as.matrix(sparse))) {
    den <- do.call(denoise, c(list(m, epochs = 2, seed = 3), fast))
    expect_true(is.matrix(den) && is.double(den))
    expect_identical(dim(den), dim(m))
    expect_identical(dimnames(den), dimnames(m))
    expect_identical(den, expected)
  }
  # another seed gives other values, so the agreement above is no accident
  other <- do.call(denoise, c(list(sparse, epochs = 2, seed = 4), fast))
  expect_false(identical(other, expected))
})

test_that("a model from a matrix is the model from the SingleCellExperiment", {
  skip_without_core()
  sce <- simulated_sce()
  m <- assay_of(sce)
  from_matrix <- do.call(train, c(list(m, epochs = 2, seed = 5), fast))
  from_sce <- do.call(train, c(list(sce, epochs = 2, seed = 5), fast))
  expect_identical(rownames(from_matrix), rownames(m))
  expect_equal(training_history(from_matrix)$train_loss,
               training_history(from_sce)$train_loss)
  new <- m[, 11:40]
  den <- predict(from_matrix, new, expectation = "rate")
  expect_identical(dimnames(den), dimnames(new))
  expect_identical(den, assay_of(
    predict(from_sce, sce[, 11:40], expectation = "rate"), "denoised"))
  # subset.row as for a SingleCellExperiment: only those rows, in that order
  rows <- predict(from_matrix, new, subset.row = c("gene9", "gene2"))
  expect_identical(dimnames(rows), list(c("gene9", "gene2"), colnames(new)))
  expect_equal(rows, predict(from_matrix, new)[c("gene9", "gene2"), ],
               tolerance = 1e-6)
})

test_that("undetected genes keep their rows, with zeros", {
  skip_without_core()
  m <- assay_of(simulated_sce())
  zero <- Matrix::Matrix(0, 2, ncol(m), sparse = TRUE,
                         dimnames = list(c("ZERO1", "ZERO2"), colnames(m)))
  full <- rbind(m[1:3, ], zero[1, , drop = FALSE], m[-(1:3), ],
                zero[2, , drop = FALSE])
  expect_message(
    den <- do.call(denoise, c(list(full, epochs = 2), fast)),
    "2 of 42 genes have no counts in any cell \\(ZERO1, ZERO2\\)")
  expect_identical(dimnames(den), dimnames(full))
  expect_true(all(den[c("ZERO1", "ZERO2"), ] == 0))
  expect_true(all(den[rownames(m), ] > 0))
})

test_that("a matrix without dimnames gives one without dimnames", {
  skip_without_core()
  m <- unname(as.matrix(assay_of(simulated_sce())))
  den <- do.call(denoise, c(list(m, epochs = 1, seed = 2), fast))
  expect_null(dimnames(den))
  expect_identical(dim(den), dim(m))
  expect_identical(unname(den), unname(denoised_sce(
    SingleCellExperiment::SingleCellExperiment(list(counts = m)),
    epochs = 1, seed = 2)))
})

test_that("a DelayedMatrix in gives an HDF5-backed matrix out, as an assay", {
  skip_without_core()
  skip_if_not_installed("HDF5Array")
  sce <- simulated_sce()
  expected <- denoised_sce(sce, epochs = 2, seed = 3)
  h5 <- HDF5Array::writeHDF5Array(assay_of(sce), with.dimnames = TRUE)
  expect_message(
    den <- do.call(denoise, c(list(h5, epochs = 2, seed = 3), fast)),
    "The counts are a DelayedMatrix, so the denoised counts go to")
  expect_s4_class(den, "DelayedMatrix")
  expect_true(grepl("\\.h5ad$", DelayedArray::path(den)))
  expect_identical(dimnames(den), dimnames(h5))
  expect_equal(as.matrix(den), expected, tolerance = 1e-6)
  # out = FALSE keeps the result in memory; an in-memory DelayedMatrix
  # (no HDF5 seed) reads the same way
  kept <- do.call(denoise, c(list(h5, epochs = 2, seed = 3, out = FALSE),
                             fast))
  expect_true(is.matrix(kept))
  expect_identical(kept, expected)
  delayed <- DelayedArray::DelayedArray(assay_of(sce))
  file <- tempfile(fileext = ".h5ad")
  on.exit(unlink(file))
  den <- do.call(denoise, c(list(delayed, epochs = 2, seed = 3, out = file),
                            fast))
  expect_identical(DelayedArray::path(den), normalizePath(file))
  expect_equal(as.matrix(den), expected, tolerance = 1e-6)
})

test_that("bad matrix input gets an error naming the problem and the fix", {
  skip_without_core()
  sce <- simulated_sce()
  m <- assay_of(sce)
  model <- do.call(train, c(list(sce, epochs = 1), fast))
  expect_error(predict(model, Matrix::t(m)),
               paste0("columns of the count matrix are the model's genes.*",
                      "pass t\\(x\\)"))
  expect_error(denoise(m, covariates = "group"),
               paste0("covariates \\(group\\) are cell annotations.*",
                      "SingleCellExperiment"))
  with_covariate <- do.call(train, c(list(sce, epochs = 1,
                                          covariates = "group"), fast))
  expect_error(predict(with_covariate, m), "covariates \\(group\\)")
  expect_error(denoise(m, model = model, zero_inflation = TRUE),
               "denoise\\(SingleCellExperiment\\(list\\(counts = x\\)\\)")
  expect_error(train(m, assay.type = "counts"),
               "a count matrix is the counts itself: pass train\\(x\\)")
  expect_error(denoise(m / 3, model = model),
               paste0("the count matrix contains non-integer values.*",
                      "pass the matrix of raw counts"))
  expect_error(denoise(-m, model = model),
               paste0("the count matrix contains negative values.*",
                      "pass the matrix of raw counts"))
  empty <- m
  empty[, 5] <- 0
  expect_error(denoise(empty, model = model),
               paste0("1 cells have zero counts in the count matrix ",
                      "\\(cell5\\).*Matrix::colSums\\(x\\) > 0"))
  expect_error(denoise(as.data.frame(as.matrix(m))),
               "not a data.frame; .*pass as.matrix\\(x\\)")
  expect_error(denoise(matrix(letters[1:4], 2), model = model),
               "cannot be read as a numeric matrix")
  expect_error(denoise(SummarizedExperiment::SummarizedExperiment(
    list(counts = m)), model = model), "as\\(x, \"SingleCellExperiment\"\\)")
})
