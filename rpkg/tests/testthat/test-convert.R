test_that("SCE -> AnnData -> SCE keeps counts, dimnames and colData exactly", {
  skip_without_core()
  sce <- simulated_sce()
  back <- anndata_to_sce(sce_to_anndata(sce))
  expect_identical(assay_of(back, "counts"),
                   assay_of(sce, "counts"))
  expect_identical(dimnames(back), dimnames(sce))
  expect_identical(as.data.frame(SummarizedExperiment::colData(back)),
                   as.data.frame(SummarizedExperiment::colData(sce)))
})

test_that("the AnnData is cells x genes CSR holding the same values", {
  skip_without_core()
  sce <- simulated_sce()
  adata <- sce_to_anndata(sce)
  expect_equal(unlist(adata$shape), rev(dim(sce)))
  # unconverted: reticulate 1.28 mis-converts CSR
  X <- reticulate::py_get_attr(adata, "X")
  attr_of <- function(name) {
    reticulate::py_to_r(reticulate::py_get_attr(X, name))
  }
  expect_identical(attr_of("format"), "csr")
  m <- assay_of(sce, "counts")
  expect_equal(as.numeric(X$sum()), sum(m))
  expect_equal(as.integer(attr_of("nnz")), length(m@x))
})

test_that("a dense count matrix converts like a sparse one", {
  skip_without_core()
  sce <- simulated_sce()
  dense <- sce
  SummarizedExperiment::assay(dense, "counts") <-
    as.matrix(assay_of(sce, "counts"))
  expect_identical(assay_of(anndata_to_sce(sce_to_anndata(dense)), "counts"),
                   assay_of(sce, "counts"))
})
