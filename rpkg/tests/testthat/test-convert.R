test_that("SCE -> AnnData -> SCE keeps counts, dimnames and colData exactly", {
  skip_without_core()
  sce <- simulated_sce()
  back <- anndata_to_sce(sce_to_anndata(sce))
  expect_identical(SummarizedExperiment::assay(back, "counts"),
                   SummarizedExperiment::assay(sce, "counts"))
  expect_identical(dimnames(back), dimnames(sce))
  expect_identical(as.data.frame(SummarizedExperiment::colData(back)),
                   as.data.frame(SummarizedExperiment::colData(sce)))
})

test_that("the AnnData is cells x genes CSR holding the same values", {
  skip_without_core()
  sce <- simulated_sce()
  adata <- sce_to_anndata(sce)
  expect_equal(unlist(adata$shape), rev(dim(sce)))
  X <- reticulate::py_get_attr(adata, "X")  # unconverted: reticulate 1.28 mis-converts CSR
  expect_identical(reticulate::py_to_r(reticulate::py_get_attr(X, "format")), "csr")
  m <- SummarizedExperiment::assay(sce, "counts")
  expect_equal(as.numeric(X$sum()), sum(m))
  expect_equal(as.integer(reticulate::py_to_r(reticulate::py_get_attr(X, "nnz"))), length(m@x))
})

test_that("a dense count matrix converts like a sparse one", {
  skip_without_core()
  sce <- simulated_sce()
  dense <- sce
  SummarizedExperiment::assay(dense, "counts") <- as.matrix(SummarizedExperiment::assay(sce, "counts"))
  expect_identical(SummarizedExperiment::assay(anndata_to_sce(sce_to_anndata(dense)), "counts"),
                   SummarizedExperiment::assay(sce, "counts"))
})
