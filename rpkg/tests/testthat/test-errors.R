test_that("bad input gets an error naming the problem", {
  skip_without_core()
  sce <- simulated_sce()
  set_counts <- function(f) {
    s <- sce
    m <- as.matrix(assay_of(s, "counts"))
    SummarizedExperiment::assay(s, "counts") <- f(m)
    s
  }
  expect_error(denoise(sce, assay.type = "raw"),
               paste0("assay 'raw' is not in the object \\(assays: counts\\); ",
                      "name the assay holding raw counts with assay.type"))
  expect_error(denoise(set_counts(function(m) { m[2, 3] <- -1; m })),
               "negative values")
  expect_error(denoise(set_counts(function(m) m / 3)),
               "non-integer values.*assay.type = \"counts\"")
  expect_error(denoise(set_counts(function(m) { m[2, 3] <- NA; m })),
               "NA/NaN values")
  expect_error(denoise(set_counts(function(m) { m[, 5] <- 0; m })),
               "1 cells have zero counts .*cell5")
  expect_error(denoise(sce, covariates = "batch"),
               "covariate 'batch' is not a column of colData")
  withna <- sce
  withna$group[3] <- NA
  expect_error(denoise(withna, covariates = "group"),
               "covariate 'group' has 1 NA values")
  expect_error(denoise(list(1:4)), paste0(
    "denoise\\(\\) needs a SingleCellExperiment, a Seurat object or a genes x ",
    "cells count matrix \\(matrix, dgCMatrix or DelayedMatrix\\), not a list"))
  expect_error(train(sce, epochs = 1, batch_size = 1),
               "batch_size must be >= 2")
  # R's names and values, not Python's
  expect_error(train(sce, epochs = 0), "^epochs must be >= 1, got 0$")
  expect_error(train(sce, epochs = 1, verbose = "yes"),
               "^verbose must be TRUE or FALSE, got \"yes\"$")
  expect_error(train(sce, epochs = 1, encoder_dims = "64"), paste0(
    "^encoder_dims must be a vector of whole numbers, e.g. c\\(512, 128\\), ",
    "got c\\(\"64\"\\)$"))
  bare <- SingleCellExperiment::SingleCellExperiment(
    list(counts = assay_of(sce, "counts")))
  expect_error(denoise(bare, covariates = "batch"),
               "is not a column of colData\\(sce\\) \\(columns: none\\)")
  expect_error(denoise(sce, learning_rat = 0.01), paste0(
    "unknown option 'learning_rat' \\(did you mean 'learning_rate'\\?\\); ",
    "known options are"))
  # Listing every dotted option passes reticulate's message limit: shortened,
  # not a C++ substr error
  expect_error(denoise(sce, model.alpha_q = 1), paste0(
    "unknown option 'model.alpha_q' \\(did you mean 'model.alpha_z' or ",
    "'model.alpha_w'\\?\\); known options are data.allow_non_integer.*",
    " \\.\\.\\. .*train.weight_average$"))
  expect_error(denoise(sce, likelihood = "gauss"), paste0(
    "likelihood must be one of 'zip', 'zinb', 'poisson' or 'nb', ",
    "got 'gauss'"))
})

test_that("load_model() of a path without a model says so in one line", {
  skip_without_core()
  missing <- file.path(tempdir(), "no-such-model")
  expect_error(load_model(missing), paste0(
    "^no ZiPo model at '.*no-such-model': it is not a directory$"))
})

test_that("a bad output choice is refused before any training", {
  skip_without_core()
  sce <- simulated_sce()
  # batch_size = 1 fails as training starts: the expectation's error must come
  # first, with R's words for the fix
  expect_error(denoise(sce, expectation = "mean", batch_size = 1),
               "expectation must be .*got 'mean'.*Seurat's NormalizeData")
  expect_error(denoise(sce, target_sum = 0, batch_size = 1),
               "target_sum must be a positive number")
})

test_that("allow_non_integer lets non-integer counts through", {
  skip_without_core()
  sce <- simulated_sce()
  SummarizedExperiment::assay(sce, "counts") <- assay_of(sce, "counts") * 1.5
  out <- do.call(denoise, c(list(sce, epochs = 1, allow_non_integer = TRUE),
                            fast))
  expect_true("denoised" %in% SummarizedExperiment::assayNames(out))
})

test_that("the old assay= works, with a warning naming assay.type", {
  skip_without_core()
  sce <- simulated_sce()
  model <- do.call(train, c(list(sce, epochs = 1, seed = 4), fast))
  expect_warning(old <- denoise(sce, assay = "counts", model = model),
                 paste0("'assay' argument of denoise\\(\\) is deprecated; ",
                        "use assay.type = \"counts\""),
                 class = "deprecatedWarning")
  new <- expect_silent(denoise(sce, assay.type = "counts", model = model))
  expect_identical(assay_of(old, "denoised"), assay_of(new, "denoised"))
  expect_error(
    denoise(sce, assay.type = "counts", assay = "counts", model = model),
    "got both assay.type and assay, its old name; pass only assay.type")
  expect_warning(
    do.call(train, c(list(sce, assay = "counts", epochs = 1), fast)),
    "'assay' argument of train\\(\\) is deprecated; use assay.type",
    class = "deprecatedWarning")
  expect_warning(sce_to_anndata(sce, assay = "counts"),
                 paste0("'assay' argument of sce_to_anndata\\(\\) is ",
                        "deprecated; use assay.type"),
                 class = "deprecatedWarning")
  expect_warning(back <- anndata_to_sce(sce_to_anndata(sce), assay = "raw"),
                 paste0("'assay' argument of anndata_to_sce\\(\\) is ",
                        "deprecated; use name"),
                 class = "deprecatedWarning")
  expect_identical(SummarizedExperiment::assayNames(back), "raw")
})

# (names no rows, repeats one or has the wrong length)
test_that("a subset.row that cannot be read is refused", {
  skip_without_core()
  sce <- simulated_sce()
  model <- do.call(train, c(list(sce, epochs = 1), fast))
  expect_error(denoise(sce, model = model, subset.row = c("gene1", "CD3E")),
               paste0("subset.row names genes that are not rows of the ",
                      "object \\(CD3E\\)"))
  expect_error(denoise(sce, model = model, subset.row = c(2, 2)),
               "subset.row lists gene2 more than once")
  expect_error(denoise(sce, model = model, subset.row = c(TRUE, FALSE)),
               "subset.row is a logical vector of length 2 for 40 genes")
  expect_error(denoise(sce, model = model, subset.row = 41),
               "row numbers outside 1..40")
  expect_error(denoise(sce, model = model, subset.row = character()),
               "subset.row selects no genes")
})

test_that("the Python core's errors name R's objects and functions", {
  skip_without_core()
  sce <- simulated_sce()
  model <- do.call(train, c(list(sce, epochs = 1), fast))
  no_python <- function(msg) {
    expect_false(grepl("adata|scanpy|var_names|Traceback|Error:", msg),
                 info = msg)
    msg
  }
  error_of <- function(expr) tryCatch(expr, error = conditionMessage)
  missing <- error_of(denoise(sce[-2, ], model = model))
  expect_match(no_python(missing), paste0(
    "^the genes of the object do not match the trained model: 1 genes of ",
    "the model are missing \\(gene2\\)\\. Subset or reorder with ",
    "x\\[rownames\\(model\\), \\]"))
  m <- assay_of(sce, "counts")
  new_gene <- Matrix::Matrix(1, 1, ncol(m), sparse = TRUE,
                             dimnames = list("NEW", colnames(m)))
  extra <- SingleCellExperiment::SingleCellExperiment(
    list(counts = rbind(m, new_gene)))
  expect_match(no_python(error_of(denoise(extra, model = model))), paste0(
    "1 genes are not in the model and have counts here \\(NEW\\)\\. ",
    "Drop them with x\\[rownames\\(model\\), \\]"))
  dup <- sce
  rownames(dup)[2] <- rownames(dup)[1]
  expect_match(no_python(error_of(train(dup, epochs = 1))), paste0(
    "gene names are not unique \\(gene1\\); make them unique first, e.g. ",
    "rownames\\(x\\) <- make.unique\\(rownames\\(x\\)\\)"))
  empty <- sce
  SummarizedExperiment::assay(empty, "counts")[, 5] <- 0
  expect_match(error_of(denoise(empty)),
               paste0("1 cells have zero counts .*cell5.*",
                      "scuttle::addPerCellQC\\(sce\\)"))
})
