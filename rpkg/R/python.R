# Finding, checking and installing ZiPo's Python core.

.zipo_state <- new.env(parent = emptyenv())

#' Install ZiPo's Python core for R
#'
#' Creates a Python virtual environment holding the ZiPo core and its pinned
#' dependencies, the way reticulate-based packages do. zipo finds it on first
#' use; set `RETICULATE_PYTHON` to use another Python instead.
#'
#' NumPy is pinned below 2 because reticulate releases before 1.35 (Debian ships
#' 1.28) refuse NumPy 2 ("incompatible NumPy binary version").
#'
#' @param envname Name of the virtual environment (created under reticulate's
#'   virtualenv root), or a path to create it at.
#' @param source What pip installs as the core: a path to a clone of the ZiPo
#'   repository, or a requirement such as `"zipo"`. Defaults to the
#'   `ZIPO_PYTHON_SOURCE` environment variable, else `"zipo"`.
#' @param python Python interpreter (>= 3.10) to create the environment with;
#'   `NULL` lets reticulate choose.
#' @param packages Pinned dependencies installed together with the core.
#' @param extra_packages Further requirements to install (e.g. test tools).
#' @return The path of the environment's Python interpreter, invisibly.
#' @examples
#' \dontrun{
#' install_zipo()                                   # once
#' install_zipo(source = "~/src/zipo")              # from a clone
#' }
#' @export
install_zipo <- function(envname = "r-zipo",
                         source = Sys.getenv("ZIPO_PYTHON_SOURCE", "zipo"),
                         python = NULL,
                         packages = c("torch==2.13.0", "numpy<2"),
                         extra_packages = character()) {
  if (reticulate::py_available(initialize = FALSE)) {
    warning("Python is already initialised in this R session; restart R ",
            "before using the new environment.", call. = FALSE)
  }
  if (dir.exists(source)) source <- normalizePath(source)
  path <- .env_path(envname)
  if (is.null(python)) python <- Sys.which("python3")
  if (!nzchar(python)) {
    stop("no python3 found; pass python = \"/path/to/python3\" (>= 3.10)",
         call. = FALSE)
  }
  # Python runs without R's LD_LIBRARY_PATH: R puts the system library folder
  # first, and a Python built with a shared libpython (pyenv, conda) then
  # loads the system's libpython instead of its own (seen here: a pip without
  # its ssl module).
  run <- function(exe, args, what) {
    status <- system2("env", c("LD_LIBRARY_PATH=", shQuote(exe), args))
    if (!identical(status, 0L)) {
      stop(what, " failed for '", path, "' (exit status ", status,
           "); see the messages above.", call. = FALSE)
    }
  }
  dir.create(dirname(path), recursive = TRUE, showWarnings = FALSE)
  run(python, c("-m", "venv", shQuote(path)),
      "creating the virtual environment")
  py <- file.path(path, "bin", "python")
  pip <- function(...) {
    run(py, c("-m", "pip", "install", "--disable-pip-version-check", ...),
        "pip install")
  }
  pip(shQuote(c(packages, source, extra_packages)))
  message("ZiPo's Python core is installed in ", path, ".")
  invisible(py)
}

#' Is ZiPo's Python core available?
#'
#' Finds and imports ZiPo's Python core once per R session (the environment
#' [install_zipo()] made, or the Python
#' `RETICULATE_PYTHON` names); the other functions of zipo need it. Use it to
#' guard code that needs the core, as the examples of this package do.
#'
#' @return `TRUE` when Python with the `zipo` module can be used from R,
#'   `FALSE` otherwise (never an error).
#' @examples
#' if (zipo_available()) {
#'   message("ZiPo's Python core is ready")
#' } else {
#'   message("run zipo::install_zipo() once to set up ZiPo's Python core")
#' }
#' @export
zipo_available <- function() {
  isTRUE(tryCatch({
    .zipo_py()
    TRUE
  }, error = function(e) FALSE))
}

# A bare environment name lives under reticulate's virtualenv root, as
# reticulate expects.
.env_path <- function(envname) {
  if (grepl("/", envname, fixed = TRUE)) return(path.expand(envname))
  file.path(reticulate::virtualenv_root(), envname)
}

.missing_core <- function(detail) {
  stop("ZiPo's Python core is not available: ", detail, "\n",
       "Run zipo::install_zipo() once (then restart R), or point ",
       "RETICULATE_PYTHON at a Python that has the 'zipo' module.",
       call. = FALSE)
}

.configure_python <- function() {
  if (reticulate::py_available(initialize = FALSE) ||
      nzchar(Sys.getenv("RETICULATE_PYTHON"))) {
    return(invisible())
  }
  envname <- getOption("zipo.envname", "r-zipo")
  if (file.exists(file.path(.env_path(envname), "bin", "python"))) {
    reticulate::use_virtualenv(.env_path(envname), required = TRUE)
  } else {
    .missing_core(paste0("no Python environment '", envname, "' was found"))
  }
}

# The zipo Python module (imported once per session).
.zipo_py <- function() {
  if (!is.null(.zipo_state$zipo)) return(.zipo_state$zipo)
  .configure_python()
  imported <- tryCatch(
    list(np = reticulate::import("numpy"), zipo = reticulate::import("zipo"),
         bridge = reticulate::import("zipo.rbridge"),
         errors = reticulate::import("zipo.errors")),
    error = function(e) e
  )
  if (inherits(imported, "error")) {
    msg <- conditionMessage(imported)
    if (grepl("NumPy", msg, ignore.case = TRUE)) {
      .missing_core(paste0("this reticulate cannot use the NumPy in ",
                           reticulate::py_config()$python, " (", msg,
                           "); install_zipo() pins numpy<2, which it can use"))
    }
    .missing_core(msg)
  }
  # The core's messages name R's objects and arguments from now on
  # (zipo.errors).
  imported$errors$speak_r()
  .zipo_state$np <- imported$np
  .zipo_state$bridge <- imported$bridge
  .zipo_state$errors <- imported$errors
  .zipo_state$zipo <- imported$zipo
  imported$zipo
}

# Calls the Python function `f`. The core writes its messages in R's terms
# (zipo.errors): a Python ValueError (bad input) becomes an R error with that
# message alone, without Python's exception name and traceback (shortened by
# zipo.rbridge.call where reticulate could not pass it on), and the notices the
# call left are shown as R messages.
.py_call <- function(f, ...) {
  on.exit(for (n in .r(.zipo_state$errors$take_notices())) message(n),
          add = TRUE)
  tryCatch(.bridge()$call(f, ...), error = function(e) {
    msg <- conditionMessage(e)
    bad_input <- "^(zipo\\.errors\\.InputError|ValueError): "
    if (!grepl(bad_input, msg)) stop(e)
    msg <- sub("\n+Detailed traceback:.*$", "", sub(bad_input, "", msg))
    stop(sub("\n+$", "", msg), call. = FALSE)
  })
}

.bridge <- function() {
  .zipo_py()
  .zipo_state$bridge
}

# An R value from a Python result (modules are imported with convert = TRUE,
# so most already are).
.r <- function(x) {
  if (inherits(x, "python.builtin.object")) reticulate::py_to_r(x) else x
}
