#' zipo: denoise single-cell RNA-seq counts with a deep zero-inflated
#' autoencoder
#'
#' `denoise(sce)` is the headline call; it takes a SingleCellExperiment, a
#' Seurat object or a genes x cells count matrix. [train()],
#' [save_model()] and
#' [load_model()] give a reusable model. All modelling
#' runs in ZiPo's Python core through reticulate;
#' [install_zipo()] sets that up once.
#'
#' @examples
#' if (zipo_available()) {
#'   # PBMC 4k, 1,009 genes x 2,170 cells, shipped with ZiPo's Python core
#'   sce <- anndata_to_sce(reticulate::import("zipo.datasets")$pbmc4k_demo())
#'   sce <- denoise(sce[, 1:300], epochs = 2, seed = 1, verbose = FALSE)
#'   sce
#' }
#' @keywords internal
#' @importFrom methods setGeneric setMethod
"_PACKAGE"
