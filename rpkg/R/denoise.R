#' Denoise single-cell counts with ZiPo
#'
#' Trains a ZiPo model on the raw counts (or uses `model`) and adds the denoised
#' expected counts, the latent embedding and the predicted library size.
#'
#' For a SingleCellExperiment: assay `name` (genes x cells, dimnames kept),
#' `reducedDim(x, dimred)` (latents) and `colData(x)$zipo_library_size`; with
#' `zero_inflation = TRUE` also assay `"zipo_zero_prob"`.
#'
#' For a Seurat object: an assay `"ZIPO"` whose data slot holds the denoised
#' values, a DimReduc `"zipo"`, and `zipo_library_size` in the meta.data.
#'
#' `expectation = "rate"` (default) gives `l * mu`, the expected count with
#' technical zeros removed; `"mixture"` gives `(1 - z) * l * mu`, the mean of the
#' whole zero-inflated distribution.
#'
#' @param x A SingleCellExperiment or a Seurat object.
#' @param ... Training options when no `model` is given: `epochs`, `seed`,
#'   `likelihood`, `verbose` and any ZiPo option (see [train()]).
#' @return `x` with the results added.
#' @examples
#' \dontrun{
#' sce <- zipo::denoise(sce, assay = "counts", epochs = 100, seed = 1)
#' assay(sce, "denoised"); reducedDim(sce, "ZIPO")
#' }
#' @export
setGeneric("denoise", function(x, ...) standardGeneric("denoise"))

#' @rdname denoise
#' @param assay Assay with raw counts (`"counts"`; for Seurat, the default assay).
#' @param covariates colData (meta.data) columns used as known covariates.
#' @param likelihood `"zip"`, `"zinb"`, `"poisson"` or `"nb"`.
#' @param epochs Maximum number of training epochs.
#' @param seed Random seed.
#' @param model A trained `zipo_model` to apply instead of training one.
#' @param expectation `"rate"` or `"mixture"` (see Details).
#' @param zero_inflation Also add the zero-inflation probabilities.
#' @param name Name of the new assay.
#' @param dimred Name of the new reducedDim (SingleCellExperiment) or DimReduc (Seurat).
#' @param allow_non_integer Accept non-integer counts.
#' @export
setMethod("denoise", "SingleCellExperiment", function(
    x, assay = "counts", covariates = NULL, likelihood = "zip", epochs = NULL, seed = 0L,
    model = NULL, expectation = "rate", zero_inflation = FALSE, name = "denoised",
    dimred = "ZIPO", allow_non_integer = FALSE, ...) {
  if (is.null(model)) {
    model <- train(x, assay = assay, covariates = covariates, likelihood = likelihood,
                   epochs = epochs, seed = seed, allow_non_integer = allow_non_integer, ...)
  }
  cov <- .model_covariates(model)
  adata <- .as_anndata(x, assay, cov, allow_non_integer)
  res <- .apply_model(model, adata, expectation, zero_inflation)
  dn <- dimnames(x)
  SummarizedExperiment::assay(x, name, withDimnames = FALSE) <- .with_dimnames(res$denoised, dn)
  if (zero_inflation) {
    SummarizedExperiment::assay(x, "zipo_zero_prob", withDimnames = FALSE) <-
      .with_dimnames(res$zero_prob, dn)
  }
  latent <- res$latent
  dimnames(latent) <- list(colnames(x), paste0("ZIPO_", seq_len(ncol(latent))))
  SingleCellExperiment::reducedDim(x, dimred) <- latent
  SummarizedExperiment::colData(x)$zipo_library_size <- as.numeric(res$library_size)
  x
})

#' @rdname denoise
#' @export
setMethod("denoise", "ANY", function(x, assay = NULL, covariates = NULL, likelihood = "zip",
                                     epochs = NULL, seed = 0L, model = NULL,
                                     expectation = "rate", zero_inflation = FALSE,
                                     name = "ZIPO", dimred = "zipo",
                                     allow_non_integer = FALSE, ...) {
  if (!inherits(x, "Seurat")) {
    stop("denoise() needs a SingleCellExperiment or a Seurat object, not a ", class(x)[1],
         "; for a plain count matrix use SingleCellExperiment(assays = list(counts = m))",
         call. = FALSE)
  }
  .need_seurat()
  assay <- assay %||% SeuratObject::DefaultAssay(x)
  if (is.null(model)) {
    model <- train(x, assay = assay, covariates = covariates, likelihood = likelihood,
                   epochs = epochs, seed = seed, allow_non_integer = allow_non_integer, ...)
  }
  adata <- .as_anndata(x, assay, .model_covariates(model), allow_non_integer)
  res <- .apply_model(model, adata, expectation, zero_inflation)
  counts <- SeuratObject::GetAssayData(x, slot = "counts", assay = assay)
  x[[name]] <- SeuratObject::CreateAssayObject(data = .with_dimnames(res$denoised, dimnames(counts)))
  latent <- res$latent
  dimnames(latent) <- list(colnames(x), paste0("ZIPO_", seq_len(ncol(latent))))
  x[[dimred]] <- SeuratObject::CreateDimReducObject(embeddings = latent, key = "ZIPO_",
                                                    assay = assay)
  x$zipo_library_size <- as.numeric(res$library_size)
  x
})

.with_dimnames <- function(m, dn) {
  dimnames(m) <- dn
  m
}

.model_covariates <- function(model) {
  unlist(.r(model$py$covariate_encoder$names))
}

.need_seurat <- function() {
  if (!requireNamespace("SeuratObject", quietly = TRUE)) {
    stop("the SeuratObject package is needed for Seurat objects; install it first", call. = FALSE)
  }
}
