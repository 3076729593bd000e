# Genes with no counts in any cell (every 10x matrix has thousands): the model
# trains on the detected genes, and the denoised assay has the object's
# dimensions, 0 for the others.

with_undetected_genes <- function(sce) {
  m <- assay_of(sce, "counts")
  zero <- Matrix::Matrix(0, 3, ncol(m), sparse = TRUE,
                         dimnames = list(paste0("ZERO", 1:3), colnames(m)))
  m <- rbind(m[1:5, ], zero[1:2, ], m[-(1:5), ], zero[3, , drop = FALSE])
  SingleCellExperiment::SingleCellExperiment(
    assays = list(counts = m), colData = SummarizedExperiment::colData(sce))
}

test_that("a SingleCellExperiment with undetected genes is denoised in full", {
  skip_without_core()
  sce <- with_undetected_genes(simulated_sce())
  expect_message(
    out <- do.call(denoise, c(list(sce, epochs = 2, zero_inflation = TRUE),
                              fast)),
    paste0("3 of 43 genes have no counts in any cell ",
           "\\(ZERO1, ZERO2, ZERO3\\): training on the 40 detected genes; ",
           "the others' denoised values are 0"))
  for (name in c("denoised", "zipo_zero_prob")) {
    values <- assay_of(out, name)
    expect_identical(dim(values), dim(sce))
    expect_identical(dimnames(values), dimnames(sce))
    expect_true(all(values[paste0("ZERO", 1:3), ] == 0))
  }
  expect_true(all(assay_of(out, "denoised")[paste0("gene", 1:40), ] > 0))
})

test_that("a model applied to data with undetected genes; rownames(model)", {
  skip_without_core()
  sce <- simulated_sce()
  model <- expect_silent(do.call(train, c(list(sce, epochs = 2), fast)))
  expect_identical(rownames(model), rownames(sce))
  full <- with_undetected_genes(sce)
  expect_message(
    out <- denoise(full, model = model, subset.row = c("ZERO2", "gene7")),
    "1 of the 2 genes denoised are not in the model")
  values <- assay_of(out, "denoised")
  expect_identical(dim(values), c(2L, ncol(sce)))
  expect_true(all(values["ZERO2", ] == 0) && all(values["gene7", ] > 0))
  sub <- suppressMessages(denoise(full, model = model))
  expect_identical(dim(assay_of(sub, "denoised")), dim(full))
})
