# The denoised assay, the ZIPO reduction and the library size.
test_that("denoise(seurat) adds the assay, the reduction and library sizes", {
  skip_without_core()
  skip_if_not_installed("SeuratObject")
  sce <- simulated_sce()
  counts <- assay_of(sce, "counts")
  meta <- data.frame(group = as.character(sce$group),
                     row.names = colnames(sce))
  so <- SeuratObject::CreateSeuratObject(counts = counts, meta.data = meta)
  out <- do.call(denoise, c(list(so, epochs = 2, seed = 3,
                                 covariates = "group"), fast))
  expect_true("denoised" %in% SeuratObject::Assays(out))
  den <- SeuratObject::GetAssayData(out, slot = "data", assay = "denoised")
  expect_identical(dim(den), dim(counts))
  expect_identical(colnames(den), colnames(counts))
  expect_identical(SeuratObject::GetAssayData(out, slot = "counts",
                                              assay = "denoised"), den)
  emb <- SeuratObject::Embeddings(out, "ZIPO")
  expect_identical(dim(emb), c(ncol(counts), 8L))
  expect_identical(SeuratObject::Key(out[["ZIPO"]]), "ZIPO_")
  expect_true(all(out$zipo_library_size > 0))
  # The same seed from a SingleCellExperiment gives the same values.
  ref <- do.call(denoise, c(list(sce, epochs = 2, seed = 3,
                                 covariates = "group"), fast))
  expect_equal(as.matrix(den), assay_of(ref, "denoised"),
               tolerance = 1e-6, ignore_attr = TRUE)
  # subset.row: the new assay holds those genes only.
  model <- train(so, epochs = 1, verbose = FALSE, encoder_dims = c(16, 8))
  sub <- denoise(so, model = model, subset.row = c("gene3", "gene1"))
  expect_identical(rownames(SeuratObject::GetAssayData(
    sub, slot = "data", assay = "denoised")), c("gene3", "gene1"))
  # An assay name Seurat cannot use as a key gets a valid key, without
  # Seurat's warning; an assay the object lacks is named with the fix.
  named <- expect_no_warning(denoise(so, model = model, name = "zipo_lognorm",
                                     expectation = "lognorm"))
  expect_identical(SeuratObject::Key(named[["zipo_lognorm"]]),
                   "zipolognorm_")
  expect_error(denoise(so, model = model, assay = "SCT"), paste0(
    "^assay 'SCT' is not in the Seurat object \\(assays: RNA\\); name the ",
    "assay holding raw counts with assay = \\.\\.\\.$"))
})

# The default names survive conversions with as.Seurat() /
# as.SingleCellExperiment(), with denoising on either side (Seurat keeps one
# namespace for assays and reductions).
test_that("SCE -> Seurat -> SCE, denoised on both sides", {
  skip_without_core()
  skip_if_not_installed("Seurat")
  sce <- do.call(denoise, c(list(simulated_sce(), epochs = 1), fast))
  # (no logcounts assay)
  so <- suppressWarnings(Seurat::as.Seurat(sce, data = NULL))
  expect_identical(SeuratObject::Reductions(so), "ZIPO")
  expect_identical(SeuratObject::Key(so[["ZIPO"]]), "ZIPO_")
  so <- do.call(denoise, c(list(so, epochs = 1, seed = 2), fast))
  expect_setequal(SeuratObject::Assays(so), c("originalexp", "denoised"))
  expect_identical(SeuratObject::Reductions(so), "ZIPO")
  expect_identical(SeuratObject::DefaultAssay(so[["ZIPO"]]), "originalexp")
  back <- Seurat::as.SingleCellExperiment(so)
  expect_identical(SingleCellExperiment::reducedDimNames(back), "ZIPO")
  expect_equal(reduced_dim(back, "ZIPO"), SeuratObject::Embeddings(so, "ZIPO"))
  expect_identical(SingleCellExperiment::altExpNames(back), "denoised")
  back <- do.call(denoise, c(list(back, epochs = 1), fast))
  expect_true(all(c("counts", "denoised") %in%
                    SummarizedExperiment::assayNames(back)))
  expect_identical(SingleCellExperiment::reducedDimNames(back), "ZIPO")
})

test_that("Seurat -> SCE -> Seurat, denoised on both sides", {
  skip_without_core()
  skip_if_not_installed("Seurat")
  so <- SeuratObject::CreateSeuratObject(
    counts = assay_of(simulated_sce(), "counts"))
  so <- do.call(denoise, c(list(so, epochs = 1), fast))
  sce <- Seurat::as.SingleCellExperiment(so)
  expect_identical(SingleCellExperiment::reducedDimNames(sce), "ZIPO")
  expect_identical(SingleCellExperiment::altExpNames(sce), "denoised")
  sce <- do.call(denoise, c(list(sce, epochs = 1, seed = 2), fast))
  expect_identical(SingleCellExperiment::reducedDimNames(sce), "ZIPO")
  back <- suppressWarnings(Seurat::as.Seurat(sce))
  expect_setequal(SeuratObject::Assays(back), c("RNA", "denoised"))
  expect_identical(SeuratObject::Reductions(back), "ZIPO")
  expect_equal(SeuratObject::Embeddings(back, "ZIPO"), reduced_dim(sce, "ZIPO"),
               ignore_attr = TRUE)
  back <- do.call(denoise, c(list(back, assay = "RNA", epochs = 1), fast))
  expect_setequal(SeuratObject::Assays(back), c("RNA", "denoised"))
  expect_identical(SeuratObject::Reductions(back), "ZIPO")
  expect_identical(SeuratObject::DefaultAssay(back[["ZIPO"]]), "RNA")
})
