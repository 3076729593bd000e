test_that("train, print, summary, history, save, load and predict", {
  skip_without_core()
  sce <- simulated_sce()
  model <- do.call(train, c(list(sce, epochs = 3, seed = 2), fast))
  expect_s3_class(model, "zipo_model")
  expect_output(print(model), "ZiPo\\(likelihood='zinb', genes=40")
  s <- summary(model)
  expect_s3_class(s, "summary.zipo_model")
  expect_identical(s$genes, 40L)
  expect_identical(s$epochs, 3L)
  expect_identical(s$fits, 4L)  # 90 cells: four fits averaged by default
  expect_output(print(s), "fits averaged: +4")
  expect_identical(s$decoder, c(128L, 128L))  # the default hidden decoder layers
  expect_output(print(s), "decoder: +128-128")
  h <- training_history(model)
  # the kept epoch is the best of what training followed (held-out molecules
  # by default)
  expect_identical(s$monitored, "validation_heldout_nll")
  expect_equal(s$kept_epoch, h$epoch[which.min(h$validation_heldout_nll)])
  expect_equal(s$best, min(h$validation_heldout_nll))
  expect_output(print(s), "best validation_heldout_nll")
  expect_true(all(c("epoch", "train_loss", "validation_loss",
                    "learning_rate") %in% names(h)))
  expect_identical(nrow(h), 3L)

  path <- file.path(tempfile(), "model")
  dir.create(dirname(path))
  save_model(model, path)
  expect_true(file.exists(file.path(path, "weights.pt")))
  expect_error(save_model(model, path), paste0(
    "^'.*' already exists; choose another path or pass overwrite = TRUE$"))
  loaded <- load_model(path)
  a <- predict(model, sce)
  b <- predict(loaded, sce)
  expect_identical(assay_of(a, "denoised"), assay_of(b, "denoised"))
  expect_identical(reduced_dim(a, "ZIPO"), reduced_dim(b, "ZIPO"))
})

test_that("a preset's likelihood reaches the model unless one is given", {
  skip_without_core()
  sce <- simulated_sce()
  dca <- do.call(train, c(list(sce, epochs = 1, preset = "dca"), fast))
  expect_output(print(dca), "likelihood='nb'")
  zinb <- do.call(train, c(list(sce, epochs = 1, preset = "dca",
                                likelihood = "zinb"), fast))
  expect_output(print(zinb), "likelihood='zinb'")
})

test_that("a model refuses data with other genes, naming them", {
  skip_without_core()
  sce <- simulated_sce()
  model <- do.call(train, c(list(sce, epochs = 1), fast))
  expect_error(predict(model, sce[1:30, ]),
               "genes of the model are missing \\(gene31")
})
