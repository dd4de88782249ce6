# What tests/clients/test_r.py pushed, handed over in the environment.
site <- function(name) {
  value <- Sys.getenv(name, unset = "")
  if (!nzchar(value)) stop(name, " is not set: these tests run from tests/clients/test_r.py, against a real server")
  value
}

# Run `code` with environment variables set (or unset, for NA), restoring them afterwards.
with_env <- function(values, code) {
  old <- Sys.getenv(names(values), unset = NA, names = TRUE)
  on.exit({
    for (name in names(old)) if (is.na(old[[name]])) Sys.unsetenv(name) else do.call(Sys.setenv, as.list(old[name]))
  })
  for (name in names(values)) {
    if (is.na(values[[name]])) Sys.unsetenv(name) else do.call(Sys.setenv, as.list(values[name]))
  }
  force(code)
}
