# HDF5-backed counts in (read a block of cells at a time) and denoised counts
# out (denoise(out =)).

skip_without_hdf5array <- function() {
  skip_if_not_installed("HDF5Array")  # says "HDF5Array cannot be loaded"
}

# `sce` with its counts written to an HDF5 file and read back as an
# HDF5-backed DelayedMatrix.
hdf5_sce <- function(sce, counts = assay_of(sce, "counts")) {
  h5 <- HDF5Array::writeHDF5Array(counts, tempfile(fileext = ".h5"), "counts")
  SummarizedExperiment::assay(sce, "counts", withDimnames = FALSE) <- h5
  sce
}

# The value of `what` (an expression in the frame of zipo's internal function
# `fun`) at each call of `fun` while `expr` runs.
calls_of <- function(fun, what, expr) {
  seen <- new.env()
  seen$values <- list()
  ns <- asNamespace("zipo")
  tracer <- bquote(assign(
    "values", c(get("values", envir = .(seen)), list(.(what))),
    envir = .(seen)))
  suppressMessages(trace(fun, tracer = tracer, where = ns, print = FALSE))
  on.exit(suppressMessages(untrace(fun, where = ns)), add = TRUE)
  force(expr)
  seen$values
}

# The number of cells (columns) of each matrix converted to a dgCMatrix while
# `expr` runs.
converted_columns <- function(expr) {
  unlist(calls_of(".as_dgc", quote(ncol(m)), expr))
}

# Sets DelayedArray's block size; returns the old one.
set_block_size <- function(bytes) {
  old <- DelayedArray::getAutoBlockSize()
  suppressMessages(DelayedArray::setAutoBlockSize(bytes))
  old
}

file_bytes <- function(path) readBin(path, "raw", file.size(path))

# ... and give the in-memory results
test_that("HDF5-backed counts are read a block of cells at a time", {
  skip_without_core()
  skip_without_hdf5array()
  sce <- simulated_sce()
  sh <- hdf5_sce(sce)
  expect_s4_class(assay_of(sh, "counts"), "DelayedMatrix")
  # 25 cells per block: 4 blocks of the 90 cells
  old <- set_block_size(8 * nrow(sce) * 25)
  on.exit(set_block_size(old), add = TRUE)
  cols <- converted_columns(expect_message(
    b <- do.call(denoise, c(list(sh, epochs = 2, seed = 3), fast)),
    paste0("The counts are a DelayedMatrix, so the denoised counts go to ",
           ".*out = FALSE")))
  expect_identical(cols, c(25L, 25L, 25L, 15L))  # never all 90 cells at once
  a <- do.call(denoise, c(list(sce, epochs = 2, seed = 3), fast))
  # On-disk counts give on-disk results by default, in HDF5Array's dump folder.
  den <- assay_of(b, "denoised")
  expect_s4_class(DelayedArray::seed(den), "HDF5ArraySeed")
  expect_identical(dirname(HDF5Array::path(den)),
                   normalizePath(HDF5Array::getHDF5DumpDir()))
  expect_equal(as.matrix(den), assay_of(a, "denoised"), tolerance = 1e-6)
  # out = FALSE keeps them in memory, with the same values.
  expect_silent(m <- do.call(denoise, c(list(sh, epochs = 2, seed = 3,
                                             out = FALSE), fast)))
  expect_equal(assay_of(m, "denoised"), assay_of(a, "denoised"),
               tolerance = 1e-6)
  expect_equal(reduced_dim(b, "ZIPO"), reduced_dim(a, "ZIPO"),
               tolerance = 1e-6)
  expect_s4_class(assay_of(b, "counts"), "DelayedMatrix")  # left as it was
  # train() and sce_to_anndata() read it the same way: the same matrix Python
  # gets from memory.
  expect_identical(converted_columns(x <- sce_to_anndata(sh)),
                   c(25L, 25L, 25L, 15L))
  bridge <- reticulate::import("zipo.rbridge")
  expect_identical(bridge$csr_parts(x), bridge$csr_parts(sce_to_anndata(sce)))
  expect_identical(unlist(x$obs_names$to_list()), colnames(sce))
  model <- do.call(train, c(list(sh, epochs = 1), fast))
  expect_identical(summary(model)$genes, nrow(sce))
})

test_that("HDF5-backed counts are checked block by block", {
  # (naming cells in later blocks)
  skip_without_core()
  skip_without_hdf5array()
  sce <- simulated_sce()
  old <- set_block_size(8 * nrow(sce) * 25)
  on.exit(set_block_size(old), add = TRUE)
  m <- as.matrix(assay_of(sce, "counts"))
  m[, c(3, 60)] <- 0
  expect_error(denoise(hdf5_sce(sce, m)), paste0(
    "2 cells have zero counts in assay 'counts' \\(cell3, cell60\\)"))
  m <- as.matrix(assay_of(sce, "counts"))
  m[2, 80] <- 0.5
  expect_error(denoise(hdf5_sce(sce, m)), "non-integer values")
})

# ... and the cell results
test_that("out= gives HDF5-backed assays equal to the in-memory results", {
  skip_without_core()
  skip_without_hdf5array()
  sce <- simulated_sce()
  model <- do.call(train, c(list(sce, epochs = 2, seed = 5), fast))
  mem <- denoise(sce, model = model, zero_inflation = TRUE)
  out <- tempfile(fileext = ".h5ad")
  disk <- denoise(hdf5_sce(sce), model = model, zero_inflation = TRUE,
                  out = out)
  den <- assay_of(disk, "denoised")
  expect_s4_class(den, "DelayedMatrix")
  expect_s4_class(DelayedArray::seed(den), "HDF5ArraySeed")
  expect_identical(HDF5Array::path(den), normalizePath(out))
  expect_identical(dimnames(den), dimnames(sce))
  expect_equal(as.matrix(den), assay_of(mem, "denoised"), tolerance = 1e-6)
  z <- assay_of(disk, "zipo_zero_prob")
  expect_s4_class(DelayedArray::seed(z), "HDF5ArraySeed")
  expect_equal(as.matrix(z), assay_of(mem, "zipo_zero_prob"), tolerance = 1e-6)
  expect_equal(reduced_dim(disk, "ZIPO"),
               reduced_dim(mem, "ZIPO"), tolerance = 1e-6)
  expect_equal(disk$zipo_library_size, mem$zipo_library_size, tolerance = 1e-6)
  # The file is an AnnData: cells x genes, as Python reads it.
  adata <- reticulate::import("anndata")$read_h5ad(out, backed = "r")
  expect_identical(unlist(adata$shape), c(ncol(sce), nrow(sce)))
  adata$file$close()
  # With subset.row the file holds those genes, as x[subset.row, ] does.
  sub <- denoise(sce, model = model, subset.row = c("gene7", "gene2"),
                 name = "den", dimred = "Z",
                 out = tempfile(fileext = ".h5ad"))
  expect_identical(dimnames(assay_of(sub, "den")),
                   dimnames(sce[c("gene7", "gene2"), ]))
  expect_equal(as.matrix(assay_of(sub, "den")),
               assay_of(mem, "denoised")[c("gene7", "gene2"), ],
               tolerance = 1e-6)
  expect_identical(SingleCellExperiment::reducedDimNames(sub), "Z")
})

# ... and left untouched; overwrite = TRUE replaces it
test_that("an existing out is refused before training", {
  skip_without_core()
  skip_without_hdf5array()
  sce <- simulated_sce()
  out <- tempfile(fileext = ".h5ad")
  writeLines("not yet an h5ad", out)
  before <- file_bytes(out)
  trainings <- calls_of(".train_anndata", 1L, expect_error(
    do.call(denoise, c(list(sce, epochs = 1, out = out), fast)),
    "already exists; choose another path or pass overwrite = TRUE"))
  expect_length(trainings, 0)
  expect_identical(file_bytes(out), before)
  expect_error(denoise(sce, out = sub("h5ad$", "h5", out)),
               "the output file name must end in .h5ad")
  expect_error(denoise(sce, out = file.path(tempfile(), "x.h5ad")),
               "the folder .* does not exist")
  expect_error(denoise(sce, out = c("a.h5ad", "b.h5ad")),
               "out must be one file name ending in .h5ad")
  res <- do.call(denoise, c(list(sce, epochs = 1, out = out,
                                 overwrite = TRUE), fast))
  expect_false(identical(file_bytes(out), before))
  expect_identical(dim(assay_of(res, "denoised")), dim(sce))
})

test_that("a Seurat object refuses out= and says what to do", {
  skip_without_core()
  skip_if_not_installed("SeuratObject")
  sce <- simulated_sce()
  so <- SeuratObject::CreateSeuratObject(counts = assay_of(sce, "counts"))
  expect_error(denoise(so, out = tempfile(fileext = ".h5ad")), paste0(
    "a Seurat assay cannot hold.*",
    "Seurat::as.SingleCellExperiment\\(x\\)"))
})
