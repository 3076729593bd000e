# Training a model from R and the zipo_model object around the Python ZiPo
# instance.

`%||%` <- function(a, b) if (is.null(a)) b else a

# R values -> the types the Python options expect: whole numbers as integers,
# layer widths and covariates as lists (reticulate would turn a length-1 vector
# into a scalar).
.py_options <- function(opts) {
  opts <- opts[!vapply(opts, is.null, logical(1))]
  as_list <- c("encoder_dims", "decoder_dims", "library_dims", "covariates")
  for (n in names(opts)) {
    v <- opts[[n]]
    if (is.numeric(v) && !is.integer(v) && all(is.finite(v)) &&
        all(v == round(v)) && all(abs(v) < .Machine$integer.max)) {
      v <- as.integer(v)
    }
    if (n %in% as_list) v <- as.list(v)
    opts[[n]] <- v
  }
  opts
}

# The assay holding the counts: for a SingleCellExperiment `assay.type`
# (default "counts"; `assay` is its deprecated old name), for a Seurat object
# `assay` (Seurat's own name for it; default the default assay), with
# `assay.type` accepted there too; NULL for a count matrix, which is the counts
# itself.
.counts_assay <- function(x, assay.type, assay, fun) {
  .check_input(x, fun)
  if (inherits(x, "Seurat")) {
    .need_seurat()
    assay <- assay %||% assay.type %||% SeuratObject::DefaultAssay(x)
    if (!assay %in% SeuratObject::Assays(x)) {
      stop("assay '", assay, "' is not in the Seurat object (assays: ",
           .examples(SeuratObject::Assays(x)), "); name the assay holding raw ",
           "counts with assay = ...", call. = FALSE)
    }
    return(assay)
  }
  if (.is_count_matrix(x)) {
    if (!is.null(assay.type) || !is.null(assay)) {
      stop("assay.type and assay name an assay of a SingleCellExperiment or ",
           "a Seurat object; a count matrix is the counts itself: pass ",
           fun, "(x) without them", call. = FALSE)
    }
    return(NULL)
  }
  .renamed(assay, "assay", assay.type, "assay.type", fun) %||% "counts"
}

# AnnData of the counts and covariates of a SingleCellExperiment, a Seurat
# object or a count matrix, `assay` resolved by .counts_assay().
.as_anndata <- function(x, assay, covariates, allow_non_integer) {
  if (.is_count_matrix(x)) {
    if (length(covariates)) {
      stop("the covariates (", .examples(covariates), ") are cell ",
           "annotations, which a count matrix does not have; put the counts ",
           "in a SingleCellExperiment with those colData columns, e.g. ",
           "SingleCellExperiment(list(counts = x), colData = cells)",
           call. = FALSE)
    }
    return(.counts_to_anndata(x, NULL, "the count matrix", allow_non_integer,
                              arg = NULL))
  }
  if (inherits(x, "Seurat")) {
    counts <- SeuratObject::GetAssayData(x, slot = "counts", assay = assay)
    cells <- .cell_frame(x[[]], covariates, "the Seurat object's meta.data")
    return(.counts_to_anndata(
      counts, cells, paste0("the counts of Seurat assay '", assay, "'"),
      allow_non_integer, arg = "assay"))
  }
  counts <- .get_assay(x, assay)
  cells <- .cell_frame(SummarizedExperiment::colData(x), covariates,
                       "colData(sce)")
  .counts_to_anndata(counts, cells, paste0("assay '", assay, "'"),
                     allow_non_integer)
}

#' Train a ZiPo model
#'
#' Fits ZiPo's deep zero-inflated count autoencoder to the raw counts of a
#' SingleCellExperiment, a Seurat object or a count matrix. Training runs in the
#' Python core and shows a progress bar per epoch. Genes with no counts in any
#' cell are left out of the model (a message says how many): `rownames(model)`
#' are the genes it was trained on, and [denoise()] gives the
#' others 0. Counts held as a `DelayedMatrix` (e.g. HDF5-backed) are read a
#' block of cells at a time and never made dense (see
#' [denoise()]).
#'
#' @param x A SingleCellExperiment, a Seurat object, or a genes x cells count
#'   matrix: a `matrix`, a sparse `Matrix` (e.g. `dgCMatrix`) or a
#'   `DelayedMatrix` (e.g. HDF5-backed).
#' @param assay.type For a SingleCellExperiment, the assay with raw counts
#'   (default `"counts"`); for a Seurat object, the same as `assay`; not
#'   used for a matrix.
#' @param covariates colData (or meta.data) columns used as known covariates
#'   (not for a matrix, which has no cell annotations).
#' @param likelihood `"zinb"`, `"zip"` (the paper's), `"poisson"`
#'   or `"nb"`; `NULL` (default) for the configuration's (`"zinb"`,
#'   or the `preset`'s).
#' @param epochs Maximum number of epochs (early stopping may end sooner).
#' @param seed Random seed; a seed makes a CPU run reproducible.
#' @param verbose Show the progress bar.
#' @param allow_non_integer Accept non-integer counts.
#' @param ... Any other ZiPo option, e.g. `encoder_dims = c(512, 128)`,
#'   `batch_size = 128`, `alpha_z = 0.1`, `preset = "dca"`,
#'   `device = "cuda"`.
#' @param assay For a Seurat object, the Seurat assay whose counts slot is used
#'   (default: the default assay). For a SingleCellExperiment, the deprecated
#'   old name of `assay.type` (a warning says so).
#' @return A `zipo_model`: the trained Python model (element `py`), which
#'   [denoise()] (`model =`),
#'   [predict()][predict.zipo_model()], [summary()][summary.zipo_model()],
#'   [training_history()] and
#'   [save_model()] take.
#' @seealso [denoise()], [save_model()],
#'   [load_model()]
#' @examples
#' if (zipo_available()) {
#'   # PBMC 4k, 1,009 genes x 2,170 cells, shipped with ZiPo's Python core
#'   sce <- anndata_to_sce(reticulate::import("zipo.datasets")$pbmc4k_demo())
#'   model <- train(sce[, 1:300], epochs = 2, seed = 1, verbose = FALSE)
#'   print(model)
#'   # a plain genes x cells count matrix works too
#'   counts <- SummarizedExperiment::assay(sce, "counts")[, 1:300]
#'   model <- train(counts, epochs = 2, seed = 1, verbose = FALSE)
#'   print(identical(rownames(model), rownames(counts)))
#' }
#' @export
train <- function(x, assay.type = NULL, covariates = NULL, likelihood = NULL,
                  epochs = NULL, seed = 0L, verbose = TRUE,
                  allow_non_integer = FALSE, ..., assay = NULL) {
  assay <- .counts_assay(x, assay.type, assay, "train")
  adata <- .as_anndata(x, assay, covariates, allow_non_integer)
  .train_anndata(adata, covariates = covariates, likelihood = likelihood,
                 epochs = epochs, seed = seed, verbose = verbose,
                 allow_non_integer = allow_non_integer, ...)
}

# A model trained on an AnnData already built from the counts.
.train_anndata <- function(adata, covariates = NULL, likelihood = NULL,
                           epochs = NULL, seed = 0L, verbose = TRUE,
                           allow_non_integer = FALSE, ...) {
  opts <- .py_options(list(covariates = covariates, likelihood = likelihood,
                           max_epochs = epochs, seed = seed, verbose = verbose,
                           allow_non_integer = allow_non_integer, ...))
  py <- do.call(.py_call, c(list(.zipo_py()$ZiPo, adata), opts))
  .py_call(py$train)
  .new_model(py)
}

.new_model <- function(py) structure(list(py = py), class = "zipo_model")

# What denoise() does for every class: converts the counts to AnnData once,
# trains on that AnnData when no model is given, and denoises the same
# AnnData. Returns the AnnData holding the results: that one (results stay in
# it, in Python, until .result_matrix() and .result_cells() copy them into R),
# or with `out` the .h5ad file written, opened backed.
.denoise_anndata <- function(x, assay, covariates, model, genes, expectation,
                             target_sum, zero_inflation, allow_non_integer,
                             training, out = NULL, overwrite = FALSE) {
  if (!is.null(model)) {
    if (!inherits(model, "zipo_model")) {
      stop("model must be a zipo_model (from train() or load_model())",
           call. = FALSE)
    }
    covariates <- .model_covariates(model)
  }
  if (!is.null(out)) out <- .check_out(out, overwrite)
  # Before converting and training: a bad output choice fails in seconds
  .py_call(.bridge()$check_output_options, expectation,
           target_sum = as.numeric(target_sum))
  adata <- .as_anndata(x, assay, covariates, allow_non_integer)
  if (is.null(model)) {
    model <- do.call(.train_anndata, c(
      list(adata, covariates = covariates,
           allow_non_integer = allow_non_integer), training))
  }
  written <- .py_call(model$py$denoise, adata, expectation = expectation,
                      target_sum = as.numeric(target_sum),
                      zero_inflation = zero_inflation,
                      genes = if (is.null(genes)) NULL else as.list(genes),
                      out = out, overwrite = overwrite)
  if (is.null(out)) adata else written
}

# One genes x cells result ("denoised" or "zero_prob") as an R double matrix
# with dimnames `dn`. R allocates it once and fills it a block of cells at a
# time, in place (nothing else refers to `m`); Python casts each block into one
# reused buffer (rbridge.ResultReader). From the .h5ad of denoise(out = ...),
# an HDF5-backed matrix instead (.result_hdf5()).
.result_matrix <- function(adata, what, dn) {
  if (isTRUE(.r(adata$isbacked))) return(.result_hdf5(adata, what, dn))
  reader <- .bridge()$ResultReader(adata, what)
  n_cells <- as.integer(.r(reader$n_cells))
  step <- as.integer(.r(reader$block_cells))
  m <- matrix(0, as.integer(.r(reader$n_genes)), n_cells)
  for (start in seq(1L, n_cells, by = step)) {
    end <- min(n_cells, start + step - 1L)
    m[, start:end] <- reader$block(start - 1L, end)$block
  }
  dimnames(m) <- dn
  m
}

# Latents and library sizes; frees the Python copies of the cells x genes
# results (closes the .h5ad of denoise(out = ...)).
.result_cells <- function(adata) {
  bridge <- .bridge()
  out <- .r(bridge$result_cells(adata))
  bridge$drop_results(adata)
  out
}

#' @export
print.zipo_model <- function(x, ...) {
  cat("<zipo_model>", reticulate::py_str(x$py), "\n")
  invisible(x)
}

#' Summarise a ZiPo model
#'
#' @param object A `zipo_model`.
#' @param ... Unused.
#' @return A list of class `summary.zipo_model`: likelihood, genes, latent size,
#'   encoder and decoder widths (`decoder` empty: the paper's linear decoder),
#'   covariates, the number of fits whose outputs [denoise()] averages
#'   (`fits`, the `n_fits` option: 4 on data under 500 cells by default),
#'   epochs trained, the kept epoch (the best of the figure training
#'   followed: `validation_heldout_nll` by default, see
#'   [training_history()]), that figure's name
#'   (`monitored`) and value (`best`, per matrix entry) and the training
#'   history as a data.frame. Printing it shows all but the history.
#' @examples
#' if (zipo_available()) {
#'   sce <- anndata_to_sce(reticulate::import("zipo.datasets")$pbmc4k_demo())
#'   model <- train(sce[, 1:300], epochs = 2, verbose = FALSE)
#'   s <- summary(model)
#'   print(s)
#'   s$kept_epoch
#' }
#' @export
summary.zipo_model <- function(object, ...) {
  py <- object$py
  cfg <- .r(py$config$to_dict())
  history <- training_history(object)
  kept <- .r(.bridge()$kept_epoch(py))
  structure(list(
    likelihood = cfg$model$likelihood,
    genes = length(.r(py$var_names$to_list())),
    latent = utils::tail(unlist(cfg$model$encoder_dims), 1),
    encoder = unlist(cfg$model$encoder_dims),
    decoder = as.integer(unlist(cfg$model$decoder_dims)),
    covariates = unlist(cfg$data$covariates),
    fits = 1L + length(py$further_fits),
    epochs = nrow(history),
    kept_epoch = as.integer(kept$epoch),
    monitored = kept$column,
    best = kept$value,
    history = history
  ), class = "summary.zipo_model")
}

#' @export
print.summary.zipo_model <- function(x, ...) {
  listed <- function(v, none) if (length(v)) v else none
  cat("ZiPo model\n")
  cat("  likelihood:          ", x$likelihood, "\n")
  cat("  genes:               ", x$genes, "\n")
  cat("  encoder:             ", paste(x$encoder, collapse = "-"), "\n")
  cat("  decoder:             ",
      paste(listed(x$decoder, "linear"), collapse = "-"), "\n")
  cat("  covariates:          ",
      paste(listed(x$covariates, "none"), collapse = ", "), "\n")
  cat("  fits averaged:       ", x$fits, "\n")
  cat("  epochs trained:      ", x$epochs, "(the first fit)\n")
  cat("  kept epoch:          ", x$kept_epoch, "\n")
  cat("  best ", x$monitored, ": ", format(x$best, digits = 5),
      " (per matrix entry)\n", sep = "")
  invisible(x)
}

#' Training history of a ZiPo model
#'
#' @param model A `zipo_model`.
#' @return A data.frame with one row per epoch: train/validation loss and NLL,
#'   learning rate and seconds.
#' @examples
#' if (zipo_available()) {
#'   sce <- anndata_to_sce(reticulate::import("zipo.datasets")$pbmc4k_demo())
#'   model <- train(sce[, 1:300], epochs = 3, verbose = FALSE)
#'   history <- training_history(model)
#'   history[, c("epoch", "train_loss", "validation_heldout_nll")]
#' }
#' @export
training_history <- function(model) {
  h <- .r(model$py$history)
  attr(h, "pandas.index") <- NULL
  rownames(h) <- NULL
  h
}

#' Genes of a ZiPo model
#'
#' `rownames(model)` are the genes the model was trained on: the genes of its
#' training data that have counts (genes without counts in any cell are left out
#' of training, and [denoise()] gives them 0). New data needs
#' these genes; [denoise()] accepts other genes only if they
#' have no counts. Subset new data to the model's genes with
#' `x[rownames(model), ]`.
#'
#' @param x A `zipo_model`.
#' @return A list of the model's genes and `NULL`, so that `rownames(model)`
#'   gives the genes.
#' @examples
#' if (zipo_available()) {
#'   sce <- anndata_to_sce(reticulate::import("zipo.datasets")$pbmc4k_demo())
#'   model <- train(sce[, 1:300], epochs = 2, verbose = FALSE)
#'   print(length(rownames(model)))
#'   # other data subset to the model's genes, in its order
#'   other <- sce[rev(rownames(model)), 301:400]
#'   other <- other[rownames(model), ]
#'   identical(rownames(other), rownames(model))
#' }
#' @export
dimnames.zipo_model <- function(x) {
  list(as.character(.r(x$py$var_names$to_list())), NULL)
}

#' Denoise new data with a trained model
#'
#' `predict(model, newdata)` is `denoise(newdata, model = model)`.
#'
#' @param object A `zipo_model`.
#' @param newdata A SingleCellExperiment, a Seurat object or a genes x cells
#'   count matrix (`matrix`, `dgCMatrix` or `DelayedMatrix`) with the
#'   model's genes (`rownames(object)`).
#' @param ... Passed to [denoise()].
#' @return `newdata` with the denoised values added, or for a count matrix the
#'   denoised matrix (see [denoise()]).
#' @examples
#' if (zipo_available()) {
#'   sce <- anndata_to_sce(reticulate::import("zipo.datasets")$pbmc4k_demo())
#'   model <- train(sce[, 1:300], epochs = 2, verbose = FALSE)
#'   new <- predict(model, sce[, 301:400])
#'   print(SummarizedExperiment::assay(new, "denoised")[1:3, 1:3])
#'   # a count matrix in, the denoised matrix out
#'   counts <- SummarizedExperiment::assay(sce, "counts")
#'   den <- predict(model, counts[, 301:400])
#'   dim(den)
#' }
#' @export
predict.zipo_model <- function(object, newdata, ...) {
  denoise(newdata, model = object, ...)
}

#' Save and load ZiPo models
#'
#' A model is a directory of tensors and JSON written atomically; loading never
#' runs code from the file. The same directory loads in Python with
#' `zipo.ZiPo.load(path)`.
#'
#' @param model A `zipo_model`.
#' @param path Directory to write or read.
#' @param overwrite Replace an existing directory.
#' @return `save_model()`: `path`, invisibly. `load_model()`: a
#'   `zipo_model`.
#' @examples
#' if (zipo_available()) {
#'   sce <- anndata_to_sce(reticulate::import("zipo.datasets")$pbmc4k_demo())
#'   model <- train(sce[, 1:300], epochs = 2, verbose = FALSE)
#'   path <- file.path(tempdir(), "pbmc_model")
#'   save_model(model, path, overwrite = TRUE)
#'   again <- load_model(path)
#'   print(identical(rownames(again), rownames(model)))
#'   unlink(path, recursive = TRUE)
#' }
#' @export
save_model <- function(model, path, overwrite = FALSE) {
  .py_call(model$py$save, path.expand(path), overwrite = overwrite)
  invisible(path)
}

#' @rdname save_model
#' @export
load_model <- function(path) {
  .new_model(.py_call(.zipo_py()$ZiPo$load, path.expand(path)))
}
