# The personal access token for a registry: BERTH_TOKEN, else what `podman login` or `docker login` stored for its
# host, in the files podman reads, in its order (containers-auth.json(5)), then Docker's. The user logs in once.

auth_files <- function() {
  env <- function(name) Sys.getenv(name, unset = "")
  files <- character(0)
  if (nzchar(env("REGISTRY_AUTH_FILE"))) files <- c(files, env("REGISTRY_AUTH_FILE"))
  runtime <- env("XDG_RUNTIME_DIR")
  if (!nzchar(runtime) && identical(unname(Sys.info()[["effective_user"]]), "root")) runtime <- "/run/containers/0"
  if (nzchar(runtime)) files <- c(files, file.path(runtime, "containers", "auth.json"))
  config <- if (nzchar(env("XDG_CONFIG_HOME"))) env("XDG_CONFIG_HOME") else file.path(path.expand("~"), ".config")
  files <- c(files, file.path(config, "containers", "auth.json"))
  docker <- if (nzchar(env("DOCKER_CONFIG"))) env("DOCKER_CONFIG") else file.path(path.expand("~"), ".docker")
  c(files, file.path(docker, "config.json"))
}

host_of <- function(url) {
  sub("/.*$", "", sub("^[A-Za-z][A-Za-z0-9+.-]*://", "", url))
}

#' The token for the registry at url, or NULL (anonymous).
berth_token <- function(url = Sys.getenv("BERTH_URL")) {
  from_env <- Sys.getenv("BERTH_TOKEN", unset = "")
  if (nzchar(from_env)) return(from_env)
  host <- host_of(url)
  for (path in auth_files()) {
    if (!file.exists(path)) next
    config <- tryCatch(jsonlite::read_json(path), error = function(e) NULL)
    auths <- if (is.list(config)) config$auths else NULL
    if (!is.list(auths) || !length(auths)) next
    keys <- names(auths)
    for (key in c(keys[keys == host], keys[keys != host & vapply(keys, host_of, "") == host])) {
      auth <- auths[[key]]$auth
      if (!is.character(auth)) next
      pair <- tryCatch(rawToChar(jsonlite::base64_dec(auth)), error = function(e) "")
      if (grepl(":", pair, fixed = TRUE)) {
        token <- sub("^[^:]*:", "", pair)  # "user:token"; Berth ignores the user
        if (nzchar(token)) return(token)
      }
    }
  }
  NULL
}
