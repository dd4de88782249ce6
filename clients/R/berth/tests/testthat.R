# Run by tests/clients/test_r.py against a running Berth (BERTH_URL, BERTH_TOKEN and the expectations in the
# environment): R CMD check alone has no server to talk to.
library(testthat)
library(berth)
test_check("berth")
