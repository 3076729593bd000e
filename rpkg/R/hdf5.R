# Counts and results larger than memory: a DelayedMatrix (e.g. an HDF5-backed
# counts assay) goes to Python a block of cells at a time, and
# denoise(out = "x.h5ad") leaves the denoised counts in that file, which the
# SingleCellExperiment then holds as an HDF5-backed assay.

# AnnData from counts held as a DelayedMatrix, read a block of cells (columns)
# at a time with DelayedArray's block machinery: each block becomes a dgCMatrix
# whose slots go to Python, which assembles one CSR matrix
# (rbridge.CsrAssembler). The counts are never realised whole in R, dense or
# sparse. DelayedArray::setAutoBlockSize() sets the size of a block (default
# 100 MB as a dense double block); a sparse seed is read as sparse blocks.
# `arg` as for .check_counts().
.delayed_to_anndata <- function(counts, obs, what, allow_non_integer = FALSE,
                                arg = "assay.type") {
  .check_dims(counts, what)
  grid <- DelayedArray::colAutoGrid(counts)
  assembler <- .bridge()$CsrAssembler(nrow(counts))
  empty <- integer()
  done <- 0L
  for (b in seq_along(grid)) {
    block <- DelayedArray::read_block(counts, grid[[b]], as.sparse = NA)
    block <- .as_dgc(block, what)
    .check_values(block@x, what, allow_non_integer, arg)
    empty <- c(empty, done + .empty_cells(block))
    assembler$add(reticulate::np_array(block@x), reticulate::np_array(block@i),
                  reticulate::np_array(block@p))
    done <- done + ncol(block)
    rm(block)
  }
  .refuse_empty_cells(colnames(counts), empty, what, arg)
  # Collect the blocks now, so that the assembler can hand their memory back
  # to the system before training (rbridge.release_free_heap).
  invisible(gc(verbose = FALSE))
  assembler$anndata(rownames(counts), colnames(counts), obs)
}

.need_hdf5array <- function(what) {
  if (!requireNamespace("HDF5Array", quietly = TRUE)) {
    stop(what, " needs the Bioconductor package HDF5Array: install it with ",
         "BiocManager::install(\"HDF5Array\") (on Debian/Ubuntu: apt-get ",
         "install r-bioc-hdf5array)", call. = FALSE)
  }
}

# `out` and `overwrite` checked as the Python core checks them when it opens
# the file, but before training, so that a long training run does not end in
# "already exists". Returns `out`.
.check_out <- function(out, overwrite) {
  if (!is.character(out) || length(out) != 1 || is.na(out) || !nzchar(out)) {
    stop("out must be one file name ending in .h5ad, e.g. ",
         "out = \"denoised.h5ad\"", call. = FALSE)
  }
  if (!is.logical(overwrite) || length(overwrite) != 1 || is.na(overwrite)) {
    stop("overwrite must be TRUE or FALSE", call. = FALSE)
  }
  .need_hdf5array("denoise(out = ...)")
  out <- path.expand(out)
  problem <- .r(.bridge()$output_problem(out, overwrite))
  if (!is.null(problem)) stop(problem, call. = FALSE)
  out
}

# A result of denoise(out = ...) ("denoised" or "zero_prob") as an HDF5-backed
# matrix with dimnames `dn`, nothing read into memory: the .h5ad holds it
# cells x genes in C order (rbridge.result_file), which HDF5Array reads as
# genes x cells, the SingleCellExperiment layout.
.result_hdf5 <- function(adata, what, dn) {
  where <- .r(.bridge()$result_file(adata, what))
  m <- HDF5Array::HDF5Array(where$path, where$dataset)
  dimnames(m) <- dn
  m
}

# Where denoise() puts the denoised counts: NULL (in memory) or an .h5ad file.
# On-disk counts (a DelayedMatrix) get on-disk output unless out = FALSE, in
# HDF5Array's dump folder as DelayedArray's own realisation does, so that an
# HDF5-backed dataset is never denoised into a genes x cells double matrix by
# default.
.resolve_out <- function(out, counts) {
  if (isFALSE(out)) return(NULL)
  if (!is.null(out) || !methods::is(counts, "DelayedMatrix") ||
      !requireNamespace("HDF5Array", quietly = TRUE)) {
    return(out)
  }
  out <- file.path(HDF5Array::getHDF5DumpDir(),
                   paste0(basename(tempfile("zipo_")), ".h5ad"))
  message("The counts are a DelayedMatrix, so the denoised counts go to ",
          out, " and stay on disk; pass out = \"file.h5ad\" to choose the ",
          "file, or out = FALSE to keep them in memory")
  out
}

# Seurat assays hold in-memory matrices only.
.refuse_seurat_out <- function(out) {
  if (isFALSE(out)) return(invisible())
  if (!is.null(out)) {
    stop("out = writes the denoised counts to an .h5ad file and keeps them as ",
         "an HDF5-backed assay, which a Seurat assay cannot hold; denoise ",
         "without out = (in memory), or convert first with ",
         "Seurat::as.SingleCellExperiment(x) and denoise that", call. = FALSE)
  }
}
