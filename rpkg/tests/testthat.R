library(testthat)
library(zipo)

test_check("zipo")
