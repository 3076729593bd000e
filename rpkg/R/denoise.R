#' Denoise single-cell counts with ZiPo
#'
#' Trains a ZiPo model on the raw counts (or uses `model`) and adds the
#' denoised counts, the latent embedding and the library size. The counts are
#' converted to Python once per call, for training and denoising.
#'
#' The denoised assay always has the object's dimensions. Genes with no counts
#' in any cell (a 10x matrix has thousands) are left out of training, a message
#' says how many, and their denoised values (and zero-inflation probabilities)
#' are 0. A `model` applied to other data needs the model's genes
#' (`rownames(model)`); other genes are accepted only without counts, and get
#' 0.
#'
#' For a SingleCellExperiment: assay `name` (default `"denoised"`; genes
#' x cells, dimnames kept), `reducedDim(x, dimred)` (default `"ZIPO"`;
#' latents) and `colData(x)$zipo_library_size`; with
#' `zero_inflation = TRUE` also assay `"zipo_zero_prob"`. With
#' `subset.row`, the model is still trained on all genes, only the chosen
#' genes are denoised, and `x[subset.row, ]` is returned (as
#' `scuttle::logNormCounts()` does).
#'
#' For a Seurat object: an assay `name` (default `"denoised"`) whose
#' counts and data slots both hold the denoised values (one matrix, shared), a
#' DimReduc `dimred` (default `"ZIPO"`, key `"ZIPO_"`) and
#' `zipo_library_size` in the meta.data. With `subset.row` the new assay
#' holds only those genes.
#'
#' For a count matrix, genes x cells as Bioconductor holds counts (a `matrix`,
#' a sparse `Matrix` such as a `dgCMatrix`, or a `DelayedMatrix`):
#' the denoised matrix, with the dimensions and dimnames of `x` (rows
#' `subset.row` only, when given). A sparse matrix reaches Python as index
#' arrays, never dense. A matrix has no cell annotations, so `covariates` (and
#' a `model` trained with covariates) need a SingleCellExperiment, as do
#' `zero_inflation = TRUE`, the latents and the library sizes:
#' `denoise(SingleCellExperiment(list(counts = x)))`. `name` and
#' `dimred` are not used.
#'
#' The default names survive conversions between the two classes with
#' `Seurat::as.Seurat()` and `Seurat::as.SingleCellExperiment()`,
#' denoised on either side: a reducedDim `"ZIPO"` becomes a DimReduc
#' `"ZIPO"` and back (`as.SingleCellExperiment()` upper-cases reduction
#' names, so a lower-case name would not come back), a denoising on the other
#' side replaces it, and no assay shares its name (Seurat refuses an assay named
#' like a DimReduc). The Seurat assay `"denoised"` becomes the altExp
#' `"denoised"` and back; it has a counts slot because `as.Seurat()`
#' needs one in every altExp.
#'
#' Counts larger than memory: counts held as a `DelayedMatrix` (e.g.
#' HDF5-backed, from `HDF5Array::writeHDF5Array()` or
#' `HDF5Array::loadHDF5SummarizedExperiment()`), as an assay or as `x`
#' itself, are read a block of cells at a time
#' (`DelayedArray::setAutoBlockSize()` sets the block size) and reach Python
#' as one sparse matrix; they are never made dense. With
#' `out = "denoised.h5ad"` (not for Seurat) the denoised counts are written to
#' that file a batch of cells at a time, and assay `name` (or, for a count
#' matrix, the result) is an HDF5-backed `DelayedMatrix` reading the file's
#' `X` (cells x genes on disk, genes x cells in R), so they never enter
#' memory; with `zero_inflation = TRUE` so is `"zipo_zero_prob"` (from
#' the file's `layers/zipo_zero_prob`, which the Python core loads once while
#' opening the file). The latents and library sizes come from the file's
#' `obsm` and `obs`. Counts held as a `DelayedMatrix` get on-disk
#' output by default, as DelayedArray realises results to HDF5 files: with
#' `out = NULL` the file is a new `.h5ad` in
#' `HDF5Array::getHDF5DumpDir()` (the session's temporary folder unless set; a
#' message names it), so denoising an HDF5-backed dataset never builds a genes x
#' cells matrix in memory; `out = FALSE` keeps the result in memory anyway.
#' In-memory counts give an in-memory result unless `out` names a file. The
#' file is an AnnData `.h5ad` that `anndata.read_h5ad()` reads; keep it
#' as long as the object is used (an object reads whatever file is at that path,
#' so replacing it with `overwrite = TRUE` changes what earlier objects see).
#' Both need the Bioconductor package HDF5Array.
#'
#' `expectation = "posterior"` (default) gives the rate given each cell's own
#' count: with `likelihood = "zinb"` (default) or `"nb"` each count is
#' shrunk towards `l * mu` as far as the fitted dispersion says (as SAVER
#' denoises); with `"zip"` or `"poisson"` it is the rate. `"rate"`
#' gives `l * mu`, the expected count with technical zeros removed;
#' `"mixture"` gives `(1 - z) * l * mu`, the mean of the whole
#' zero-inflated distribution; `"lognorm"` gives the expectation of
#' `log1p(target_sum * X / l)` with `X` drawn from the fitted
#' distribution: the log-normalised expression (natural log, as Seurat's
#' `NormalizeData()` and scanpy's `normalize_total()` + `log1p()`)
#' that a new measurement would average. A `logcounts` assay as
#' `scuttle::logNormCounts()` makes it is this with `target_sum` = the
#' mean library size, divided by `log(2)`. The log of the rate would overstate
#' it at low expression.
#'
#' @param x A SingleCellExperiment, a Seurat object, or a genes x cells count
#'   matrix: a `matrix`, a sparse `Matrix` (e.g. `dgCMatrix`) or a
#'   `DelayedMatrix` (e.g. HDF5-backed).
#' @param ... Training options when no `model` is given: `verbose` and
#'   any ZiPo option (see [train()]).
#' @return `x` with the results added (for a SingleCellExperiment with
#'   `subset.row`, `x[subset.row, ]`). For a count matrix, the denoised
#'   values as a genes x cells matrix with the dimnames of `x`: a double
#'   `matrix`, or an HDF5-backed `DelayedMatrix` when they go to a file (by
#'   default for a `DelayedMatrix` `x`; see `out`).
#' @seealso [train()] and [predict()][predict.zipo_model()] for a
#'   model used more than once.
#' @examples
#' if (zipo_available()) {
#'   # PBMC 4k, 1,009 genes x 2,170 cells, shipped with ZiPo's Python core
#'   sce <- anndata_to_sce(reticulate::import("zipo.datasets")$pbmc4k_demo())
#'   sce <- sce[, 1:300]
#'   sce <- denoise(sce, epochs = 2, seed = 1, verbose = FALSE)
#'   print(SummarizedExperiment::assay(sce, "denoised")[1:3, 1:3])
#'   print(dim(SingleCellExperiment::reducedDim(sce, "ZIPO")))
#'
#'   # a genes x cells count matrix in, the denoised matrix out
#'   counts <- SummarizedExperiment::assay(sce, "counts")
#'   den <- denoise(counts, epochs = 2, seed = 1, verbose = FALSE)
#'   print(identical(dimnames(den), dimnames(counts)))
#'
#'   # HDF5-backed counts in, HDF5-backed denoised counts out
#'   if (requireNamespace("HDF5Array", quietly = TRUE)) {
#'     h5 <- HDF5Array::writeHDF5Array(counts, with.dimnames = TRUE)
#'     den <- denoise(h5, epochs = 2, seed = 1, verbose = FALSE)
#'     print(class(den))
#'     print(identical(dimnames(den), dimnames(counts)))
#'   }
#' }
#' @export
setGeneric("denoise", function(x, ...) standardGeneric("denoise"))

#' @rdname denoise
#' @param assay.type For a SingleCellExperiment, the assay with raw counts
#'   (default `"counts"`); for a Seurat object, the same as `assay`; not
#'   used for a count matrix.
#' @param subset.row Genes to denoise (names, indices or a logical vector over
#'   the rows); `NULL` (default) for all genes.
#' @param covariates colData (meta.data) columns used as known covariates.
#' @param likelihood `"zinb"`, `"zip"`, `"poisson"` or `"nb"`;
#'   `NULL` (default) for the configuration's (`"zinb"`, or the
#'   `preset`'s).
#' @param epochs Maximum number of training epochs.
#' @param seed Random seed.
#' @param model A trained `zipo_model` to apply instead of training one.
#' @param expectation `"posterior"` (default), `"rate"`,
#'   `"mixture"` or `"lognorm"` (see Details).
#' @param target_sum Counts per cell that `"lognorm"` normalises to (default
#'   `1e4`, Seurat's `scale.factor`); ignored by the other expectations.
#' @param zero_inflation Also add the zero-inflation probabilities
#'   (SingleCellExperiment).
#' @param name Name of the new assay.
#' @param dimred Name of the new reducedDim (SingleCellExperiment) or DimReduc
#'   (Seurat).
#' @param allow_non_integer Accept non-integer counts.
#' @param out For a SingleCellExperiment or a count matrix, an `.h5ad` file
#'   to write the denoised counts to, which then back assay `name` (or the
#'   returned matrix; see Details); `FALSE` keeps them in memory; `NULL`
#'   (default) writes a new file in `HDF5Array::getHDF5DumpDir()` when the
#'   counts are a `DelayedMatrix` and keeps them in memory otherwise. Checked
#'   before training.
#' @param overwrite Replace an existing `out` file (it is replaced only once
#'   the new one is complete).
#' @param assay For a Seurat object, the Seurat assay whose counts slot is used
#'   (default: the default assay). For a SingleCellExperiment, the deprecated
#'   old name of `assay.type` (a warning says so).
#' @export
setMethod("denoise", "SingleCellExperiment", function(
    x, assay.type = "counts", subset.row = NULL, covariates = NULL,
    likelihood = NULL, epochs = NULL, seed = 0L, model = NULL,
    expectation = "posterior", target_sum = 1e4, zero_inflation = FALSE,
    name = "denoised", dimred = "ZIPO", allow_non_integer = FALSE, out = NULL,
    overwrite = FALSE, ..., assay = NULL) {
  assay.type <- .counts_assay(x, if (!missing(assay.type)) assay.type, assay,
                              "denoise")
  # .get_assay() first: a missing assay gets its error naming the fix, not
  # SummarizedExperiment's
  out <- .resolve_out(out, .get_assay(x, assay.type, withDimnames = FALSE))
  rows <- .subset_rows(rownames(x), nrow(x), subset.row)
  training <- list(likelihood = likelihood, epochs = epochs, seed = seed, ...)
  adata <- .denoise_anndata(x, assay.type, covariates, model, names(rows),
                            expectation, target_sum, zero_inflation,
                            allow_non_integer, training, out, overwrite)
  if (!is.null(rows)) x <- x[unname(rows), ]
  dn <- dimnames(x)
  SummarizedExperiment::assay(x, name, withDimnames = FALSE) <-
    .result_matrix(adata, "denoised", dn)
  if (zero_inflation) {
    SummarizedExperiment::assay(x, "zipo_zero_prob", withDimnames = FALSE) <-
      .result_matrix(adata, "zero_prob", dn)
  }
  cells <- .result_cells(adata)
  SingleCellExperiment::reducedDim(x, dimred) <-
    .latent(cells$latent, colnames(x), dimred)
  SummarizedExperiment::colData(x)$zipo_library_size <-
    as.numeric(cells$library_size)
  x
})

#' @rdname denoise
#' @export
setMethod("denoise", "ANY", function(
    x, assay = NULL, subset.row = NULL, covariates = NULL, likelihood = NULL,
    epochs = NULL, seed = 0L, model = NULL, expectation = "posterior",
    target_sum = 1e4, zero_inflation = FALSE, name = "denoised",
    dimred = "ZIPO", allow_non_integer = FALSE, out = NULL, overwrite = FALSE,
    ..., assay.type = NULL) {
  .check_input(x, "denoise")
  training <- list(likelihood = likelihood, epochs = epochs, seed = seed, ...)
  if (.is_count_matrix(x)) {
    .counts_assay(x, assay.type, assay, "denoise")  # refuses assay names
    return(.denoise_matrix(x, subset.row, covariates, model, expectation,
                           target_sum, zero_inflation, allow_non_integer,
                           training, out, overwrite))
  }
  if (!inherits(x, "Seurat")) {
    stop("denoise() adds a reducedDim, which a ", class(x)[1], " cannot ",
         "hold; convert it first with as(x, \"SingleCellExperiment\")",
         call. = FALSE)
  }
  .refuse_seurat_out(out)
  assay <- .counts_assay(x, assay.type, assay, "denoise")
  features <- rownames(
    SeuratObject::GetAssayData(x, slot = "counts", assay = assay))
  rows <- .subset_rows(features, length(features), subset.row)
  adata <- .denoise_anndata(x, assay, covariates, model, names(rows),
                            expectation, target_sum, zero_inflation,
                            allow_non_integer, training)
  if (!is.null(rows)) features <- names(rows)
  den <- .result_matrix(adata, "denoised", list(features, colnames(x)))
  denoised <- SeuratObject::CreateAssayObject(data = den)
  SeuratObject::Key(denoised) <- .seurat_key(name)
  # The same matrix in counts (shared, not copied): as.Seurat() needs counts
  # in every altExp, so the assay survives Seurat -> SingleCellExperiment ->
  # Seurat.
  methods::slot(denoised, "counts") <- den
  x[[name]] <- denoised
  cells <- .result_cells(adata)
  key <- .seurat_key(dimred)
  x[[dimred]] <- SeuratObject::CreateDimReducObject(
    embeddings = .latent(cells$latent, colnames(x), dimred), key = key,
    assay = assay)
  x$zipo_library_size <- as.numeric(cells$library_size)
  x
})

# denoise() of a genes x cells count matrix: the denoised matrix with the
# dimnames of `x` (rows `subset.row` only, when given). A DelayedMatrix gets an
# HDF5-backed result by default, as an HDF5-backed counts assay does
# (.resolve_out()).
.denoise_matrix <- function(x, subset.row, covariates, model, expectation,
                            target_sum, zero_inflation, allow_non_integer,
                            training, out, overwrite) {
  if (!isFALSE(zero_inflation)) {
    stop("zero_inflation = TRUE gives a second matrix, which denoise() of a ",
         "count matrix (one matrix back) cannot return; denoise a ",
         "SingleCellExperiment instead: ",
         "denoise(SingleCellExperiment(list(counts = x)), ",
         "zero_inflation = TRUE)", call. = FALSE)
  }
  .refuse_cells_by_genes(x, model)
  out <- .resolve_out(out, x)
  rows <- .subset_rows(rownames(x), nrow(x), subset.row)
  adata <- .denoise_anndata(x, NULL, covariates, model, names(rows),
                            expectation, target_sum, FALSE, allow_non_integer,
                            training, out, overwrite)
  genes <- if (is.null(rows)) rownames(x) else rownames(x)[unname(rows)]
  dn <- list(genes, colnames(x))
  if (is.null(genes) && is.null(colnames(x))) dn <- NULL  # as dimnames(x)
  den <- .result_matrix(adata, "denoised", dn)
  .result_cells(adata)  # frees the Python copies of the results
  den
}

# A cells x genes matrix (as AnnData holds counts) given with a model: its
# columns, not its rows, are the model's genes.
.refuse_cells_by_genes <- function(x, model) {
  if (!inherits(model, "zipo_model") || is.null(colnames(x))) {
    return(invisible())
  }
  genes <- rownames(model)
  if (!all(genes %in% rownames(x)) && all(genes %in% colnames(x))) {
    stop("the columns of the count matrix are the model's genes, so it is ",
         "cells x genes; ZiPo takes genes x cells, as Bioconductor holds ",
         "counts: pass t(x)", call. = FALSE)
  }
}

# Latents with cell names and columns named like a Seurat key ("ZIPO_1",
# ...), which as.Seurat() turns back into the same key.
.latent <- function(latent, cells, dimred) {
  dimnames(latent) <- list(
    cells, paste0(.seurat_key(dimred), seq_len(ncol(latent))))
  latent
}

# A Seurat key for an assay or reduction name: letters and digits, then "_"
# (Seurat would warn and make the same from "zipo_lognorm").
.seurat_key <- function(name) {
  key <- gsub("[^[:alnum:]]", "", name)
  if (!nzchar(key) || !grepl("^[[:alpha:]]", key)) key <- paste0("ZIPO", key)
  paste0(key, "_")
}

# The rows `subset.row` chooses (names, indices or logicals) as positions
# named by gene; NULL for all genes. Rows without names are named as the
# AnnData names them ("gene1", ...).
.subset_rows <- function(genes, n, subset.row) {
  if (is.null(subset.row)) return(NULL)
  if (is.null(genes)) genes <- paste0("gene", seq_len(n))
  pos <- seq_len(n)
  names(pos) <- genes
  if (is.character(subset.row)) {
    unknown <- setdiff(subset.row, genes)
    if (length(unknown)) {
      stop("subset.row names genes that are not rows of the object (",
           .examples(unknown), "); choose from rownames(x)", call. = FALSE)
    }
    rows <- pos[match(subset.row, genes)]
  } else if (is.logical(subset.row)) {
    if (length(subset.row) != n || anyNA(subset.row)) {
      stop("subset.row is a logical vector of length ", length(subset.row),
           " for ", n, " genes; give one TRUE/FALSE per row", call. = FALSE)
    }
    rows <- pos[subset.row]
  } else if (is.numeric(subset.row)) {
    if (anyNA(subset.row) || any(subset.row < 1 | subset.row > n |
                                 subset.row != round(subset.row))) {
      stop("subset.row has row numbers outside 1..", n, "; use row numbers, ",
           "rownames or a logical vector", call. = FALSE)
    }
    rows <- pos[subset.row]
  } else {
    stop("subset.row is a ", class(subset.row)[1], "; use rownames, row ",
         "numbers or a logical vector", call. = FALSE)
  }
  if (!length(rows)) {
    stop("subset.row selects no genes; choose at least one", call. = FALSE)
  }
  if (anyDuplicated(rows)) {
    stop("subset.row lists ", .examples(unique(names(rows)[duplicated(rows)])),
         " more than once; give each gene once", call. = FALSE)
  }
  rows
}

.model_covariates <- function(model) {
  unlist(.r(model$py$covariate_encoder$names))
}

.need_seurat <- function() {
  if (!requireNamespace("SeuratObject", quietly = TRUE)) {
    stop("the SeuratObject package is needed for Seurat objects; install it ",
         "first", call. = FALSE)
  }
}
