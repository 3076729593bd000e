#' zipo: denoise single-cell RNA-seq counts with a deep zero-inflated autoencoder
#'
#' `denoise(sce)` is the headline call; [train()], [save_model()] and
#' [load_model()] give a reusable model. All modelling runs in ZiPo's Python core
#' through reticulate; [install_zipo()] sets that up once.
#'
#' @keywords internal
#' @importFrom methods setGeneric setMethod
"_PACKAGE"
