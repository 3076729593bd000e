# Moving counts and cell annotations between R (genes x cells) and AnnData
# (cells x genes). A genes x cells dgCMatrix and a cells x genes CSR matrix
# share the same three arrays, so the transpose is free and nothing is
# densified.

.as_dgc <- function(m, what) {
  if (inherits(m, "dgCMatrix")) return(m)
  out <- tryCatch({
    m <- methods::as(m, "CsparseMatrix")
    m <- methods::as(m, "generalMatrix")
    methods::as(m, "dMatrix")
  }, error = function(e) NULL)
  if (is.null(out) || !inherits(out, "dgCMatrix")) {
    stop(what, " is a ", class(m)[1], ", which cannot be read as a numeric ",
         "matrix; pass a matrix or dgCMatrix of raw counts", call. = FALSE)
  }
  out
}

# Count matrices accepted as they are, genes x cells as Bioconductor holds
# them: a base matrix, a Matrix (e.g. dgCMatrix) or a DelayedMatrix (e.g.
# HDF5-backed).
.is_count_matrix <- function(x) {
  is.matrix(x) || methods::is(x, "Matrix") || methods::is(x, "DelayedMatrix")
}

# Refuses an `x` that denoise() or train() (`fun`) cannot read, naming what
# to pass instead.
.check_input <- function(x, fun) {
  if (.is_count_matrix(x) || inherits(x, "Seurat") ||
      methods::is(x, "SummarizedExperiment")) {
    return(invisible(x))
  }
  fix <- if (is.data.frame(x)) {
    "; for a data.frame of counts (genes as rows), pass as.matrix(x)"
  } else {
    ""
  }
  stop(fun, "() needs a SingleCellExperiment, a Seurat object or a genes x ",
       "cells count matrix (matrix, dgCMatrix or DelayedMatrix), not a ",
       class(x)[1], fix, call. = FALSE)
}

.examples <- function(x, k = 5) {
  x <- as.character(x)
  paste0(paste(utils::head(x, k), collapse = ", "),
         if (length(x) > k) paste0(", ... (", length(x), " in all)") else "")
}

# Refuses what the likelihoods cannot model, naming the problem and the fix;
# `arg` is the argument that names the counts assay (assay.type for a
# SingleCellExperiment, assay for Seurat), NULL for a count matrix.
.check_counts <- function(m, what, allow_non_integer = FALSE,
                          arg = "assay.type") {
  .check_dims(m, what)
  .check_values(m@x, what, allow_non_integer, arg)
  .refuse_empty_cells(colnames(m), .empty_cells(m), what, arg)
  invisible(m)
}

# The checks of .check_counts() in pieces, for counts checked a block of cells
# at a time.
.check_dims <- function(m, what) {
  if (nrow(m) == 0 || ncol(m) == 0) {
    stop(what, " is empty (", nrow(m), " genes x ", ncol(m), " cells)",
         call. = FALSE)
  }
}

.check_values <- function(v, what, allow_non_integer = FALSE,
                          arg = "assay.type") {
  if (anyNA(v)) {
    stop(what, " contains NA/NaN values; ZiPo needs raw counts: remove or ",
         "fix those cells", call. = FALSE)
  }
  if (any(is.infinite(v))) {
    stop(what, " contains infinite values; ZiPo needs raw counts",
         call. = FALSE)
  }
  if (any(v < 0)) {
    stop(what, " contains negative values; ZiPo needs raw counts ",
         "(non-negative integers), not centred or scaled data: ",
         if (is.null(arg)) "pass the matrix of raw counts"
         else paste0("name the raw counts assay with ", arg, " = ..."),
         call. = FALSE)
  }
  if (!allow_non_integer && any(v != round(v))) {
    stop(what, " contains non-integer values, which usually means normalised ",
         "or log-transformed data; ",
         if (is.null(arg)) "pass the matrix of raw counts"
         else paste0("use the raw counts assay (", arg, " = \"counts\")"),
         ", or set allow_non_integer = TRUE if the values are counts on ",
         "purpose", call. = FALSE)
  }
}

# Columns (cells) of a dgCMatrix with zero counts.
.empty_cells <- function(m) {
  empty <- which(diff(m@p) == 0L)  # columns (cells) with no stored values
  if (length(empty)) {
    empty <- empty[Matrix::colSums(m[, empty, drop = FALSE]) == 0]
  }
  empty
}

# `arg` as for .check_counts(): NULL for a count matrix.
.refuse_empty_cells <- function(cells, empty, what, arg = "assay.type") {
  if (length(empty)) {
    stop(length(empty), " cells have zero counts in ", what, " (",
         .examples(cells[empty]), "); remove them first, e.g. ",
         if (is.null(arg)) "x <- x[, Matrix::colSums(x) > 0]"
         else "sce <- scuttle::addPerCellQC(sce); sce <- sce[, sce$sum > 0]",
         call. = FALSE)
  }
}

# Cell annotations for Python: the requested columns of colData / meta.data,
# checked.
.cell_frame <- function(cd, columns, where) {
  columns <- as.character(columns)
  missing <- setdiff(columns, colnames(cd))
  if (length(missing)) {
    stop("covariate ", paste0("'", missing, "'", collapse = ", "),
         " is not a column of ", where, " (columns: ",
         if (ncol(cd)) .examples(colnames(cd)) else "none", ")", call. = FALSE)
  }
  df <- as.data.frame(cd)[, columns, drop = FALSE]
  for (col in columns) {
    v <- df[[col]]
    if (!is.atomic(v) || !is.null(dim(v))) {
      stop("column '", col, "' of ", where, " is a ", class(v)[1],
           "; covariates must be numbers, factors, characters or logicals",
           call. = FALSE)
    }
    if (anyNA(v)) {
      stop("covariate '", col, "' has ", sum(is.na(v)), " NA values in ",
           where, "; fill them (e.g. with an 'unknown' level) or drop those ",
           "cells", call. = FALSE)
    }
  }
  df
}

# AnnData (a Python object) from a genes x cells count matrix and a cell
# data.frame. A DelayedMatrix (e.g. HDF5-backed) is read a block of cells at a
# time (.delayed_to_anndata()). `arg` as for .check_counts().
.counts_to_anndata <- function(counts, cells, what, allow_non_integer = FALSE,
                               arg = "assay.type") {
  obs <- if (is.null(cells) || ncol(cells) == 0) NULL else cells
  if (methods::is(counts, "DelayedMatrix")) {
    return(.delayed_to_anndata(counts, obs, what, allow_non_integer, arg))
  }
  m <- .check_counts(.as_dgc(counts, what), what, allow_non_integer, arg)
  .bridge()$anndata_from_csc_parts(
    reticulate::np_array(m@x), reticulate::np_array(m@i),
    reticulate::np_array(m@p), nrow(m), ncol(m), rownames(m), colnames(m), obs
  )
}

#' Convert a SingleCellExperiment to an AnnData object
#'
#' Builds a Python AnnData (cells x genes, sparse CSR) from an assay of `sce`
#' (genes x cells) and its colData, moving the sparse matrix as index arrays so
#' nothing is densified. An assay held as a `DelayedMatrix` (e.g. HDF5-backed)
#' is read a block of cells at a time.
#'
#' @param sce A SingleCellExperiment (or SummarizedExperiment).
#' @param assay.type Name of the assay holding raw counts.
#' @param columns colData columns to carry into `obs` (default: all atomic
#'   ones).
#' @param allow_non_integer Accept non-integer values.
#' @param assay Deprecated: the old name of `assay.type`.
#' @return A Python `anndata.AnnData` (a reticulate object), cells x genes,
#'   with the `columns` of colData as `obs`.
#' @seealso [anndata_to_sce()] for the way back.
#' @examples
#' if (zipo_available()) {
#'   # PBMC 4k, 1,009 genes x 2,170 cells, shipped with ZiPo's Python core
#'   sce <- anndata_to_sce(reticulate::import("zipo.datasets")$pbmc4k_demo())
#'   adata <- sce_to_anndata(sce[, 1:100], columns = "cell_type")
#'   adata$shape
#' }
#' @export
sce_to_anndata <- function(sce, assay.type = "counts", columns = NULL,
                           allow_non_integer = FALSE, assay = NULL) {
  assay.type <- .renamed(assay, "assay",
                         if (!missing(assay.type)) assay.type, "assay.type",
                         "sce_to_anndata") %||% assay.type
  counts <- .get_assay(sce, assay.type)
  cd <- SummarizedExperiment::colData(sce)
  if (is.null(columns)) {
    columns <- colnames(cd)[vapply(colnames(cd), function(n) {
      v <- cd[[n]]
      is.atomic(v) && is.null(dim(v))
    }, logical(1))]
  }
  .counts_to_anndata(counts, .cell_frame(cd, columns, "colData(sce)"),
                     paste0("assay '", assay.type, "'"), allow_non_integer)
}

#' Convert an AnnData object to a SingleCellExperiment
#'
#' The inverse of [sce_to_anndata()]: `X` becomes
#' the assay `name` as a genes x cells dgCMatrix, `obs` becomes colData,
#' `obsm` entries become reducedDims.
#'
#' @param adata A Python `anndata.AnnData` (reticulate object).
#' @param name Name of the assay to hold `X`.
#' @param assay Deprecated: the old name of `name`.
#' @return A SingleCellExperiment with the assay `name` (a dgCMatrix, genes x
#'   cells), `obs` as colData and each `obsm` entry as a reducedDim
#'   (without its `X_` prefix).
#' @examples
#' if (zipo_available()) {
#'   # PBMC 4k, 1,009 genes x 2,170 cells, shipped with ZiPo's Python core
#'   adata <- reticulate::import("zipo.datasets")$pbmc4k_demo()
#'   sce <- anndata_to_sce(adata)
#'   print(sce)
#'   table(sce$cell_type)
#' }
#' @export
anndata_to_sce <- function(adata, name = "counts", assay = NULL) {
  name <- .renamed(assay, "assay", if (!missing(name)) name, "name",
                   "anndata_to_sce") %||% name
  parts <- .bridge()$csr_parts(adata)
  genes <- as.character(.r(adata$var_names$to_list()))
  cells <- as.character(.r(adata$obs_names$to_list()))
  m <- methods::new("dgCMatrix", i = as.integer(parts$i),
                    p = as.integer(parts$p), x = as.numeric(parts$x),
                    Dim = c(length(genes), length(cells)),
                    Dimnames = list(genes, cells))
  obs <- .r(adata$obs)
  attr(obs, "pandas.index") <- NULL
  rownames(obs) <- cells
  sce <- SingleCellExperiment::SingleCellExperiment(
    assays = stats::setNames(list(m), name),
    colData = S4Vectors::DataFrame(obs, check.names = FALSE)
  )
  keys <- reticulate::import_builtins()$list(adata$obsm$keys())
  for (key in .r(keys)) {
    emb <- as.matrix(.r(reticulate::py_get_item(adata$obsm, key)))
    rownames(emb) <- cells
    SingleCellExperiment::reducedDim(sce, sub("^X_", "", key)) <- emb
  }
  sce
}

# An argument renamed to follow scater/scuttle: the old name still works for
# one release, with a deprecation warning naming the new one. Returns the value
# to use (NULL when neither was given).
.renamed <- function(old_value, old, new_value, new, fun) {
  if (is.null(old_value)) return(new_value)
  if (!is.null(new_value)) {
    stop(fun, "() got both ", new, " and ", old, ", its old name; pass only ",
         new, " = ...", call. = FALSE)
  }
  .Deprecated(msg = paste0(
    "the '", old, "' argument of ", fun, "() is deprecated; use ", new, " = ",
    deparse(old_value), " instead (as scater and scuttle name it)"))
  old_value
}

.get_assay <- function(sce, assay, withDimnames = TRUE) {
  if (!methods::is(sce, "SummarizedExperiment")) {
    stop("expected a SingleCellExperiment, got a ", class(sce)[1],
         call. = FALSE)
  }
  available <- SummarizedExperiment::assayNames(sce)
  if (!assay %in% available) {
    stop("assay '", assay, "' is not in the object (assays: ",
         if (length(available)) .examples(available) else "none",
         "); name the assay holding raw counts with assay.type = ...",
         call. = FALSE)
  }
  SummarizedExperiment::assay(sce, assay, withDimnames = withDimnames)
}
