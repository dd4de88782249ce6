# A client of Berth's JSON API (/api/v1, the contract in PORTAL-API.md), the R twin of the Python berth_client.
#
#   h <- berth_history("http://127.0.0.1:5000", "syn123/tools", "latest")
#   h$digest[1:2]     # now, and before
#
# Every function takes a client from berth_client(), or just the registry's URL. Failures are conditions of class
# berth_not_found, berth_not_allowed, berth_unauthorized, berth_unavailable, berth_invalid (all berth_error) carrying
# the server's message, so tryCatch(..., berth_not_found = function(e) ...) works.

#' A client of one registry.
#' @param url the registry, e.g. "http://127.0.0.1:5000" (default: the BERTH_URL environment variable)
#' @param token a personal access token (default: berth_token(url))
berth_client <- function(url = Sys.getenv("BERTH_URL"), token = NULL) {
  if (!nzchar(url)) berth_stop("invalid", "no registry: give a URL or set BERTH_URL")
  url <- sub("/+$", "", url)
  if (!grepl("://", url, fixed = TRUE)) {
    # as container tools name a registry: plain HTTP on loopback only
    url <- paste0(if (grepl("^(localhost|127\\.|\\[::1\\])", url)) "http://" else "https://", url)
  }
  if (is.null(token)) token <- berth_token(url)
  structure(list(url = url, token = token), class = "berth_client")
}

#' @export
print.berth_client <- function(x, ...) {
  cat("<berth_client ", x$url, if (is.null(x$token)) " (anonymous)" else " (with a token)", ">\n", sep = "")
  invisible(x)
}

as_client <- function(client) {
  if (inherits(client, "berth_client")) client else berth_client(client)
}

berth_stop <- function(kind, message, status = NA_integer_, retry_after = NA_real_) {
  condition <- structure(
    class = c(paste0("berth_", kind), "berth_error", "error", "condition"),
    list(message = message, call = NULL, status = status, retry_after = retry_after)
  )
  stop(condition)
}

# The status's condition class (PORTAL-API.md "Errors").
error_kind <- function(status) {
  switch(as.character(status),
    "400" = "invalid", "401" = "unauthorized", "403" = "not_allowed", "404" = "not_found",
    "409" = "conflict", "429" = "unavailable", "502" = "unavailable", "503" = "unavailable",
    "504" = "unavailable", "failure"
  )
}

# One request: the parsed JSON answer (lists, as the server wrote it), or a berth_error.
berth_get <- function(client, path, query = list()) {
  request <- httr2::request(paste0(client$url, path))
  request <- httr2::req_headers(request, Accept = "application/json")
  request <- httr2::req_user_agent(request, "berth-r/0.1")
  if (!is.null(token <- client$token)) request <- httr2::req_auth_bearer_token(request, token)
  query <- Filter(Negate(is.null), query)
  if (length(query)) request <- do.call(httr2::req_url_query, c(list(request), query))
  request <- httr2::req_error(request, is_error = function(response) FALSE)
  response <- tryCatch(httr2::req_perform(request), error = function(e) {
    berth_stop("unavailable", paste0("cannot reach ", client$url, ": ", conditionMessage(e)))
  })
  status <- httr2::resp_status(response)
  body <- tryCatch(httr2::resp_body_json(response, simplifyVector = FALSE), error = function(e) NULL)
  if (status >= 400) {
    message <- if (is.list(body) && is.list(body$error)) body$error$message else NULL
    if (!is.character(message)) message <- paste("the server answered HTTP", status)
    retry <- suppressWarnings(as.numeric(httr2::resp_header(response, "retry-after")))
    berth_stop(error_kind(status), message, status, if (length(retry)) retry else NA_real_)
  }
  if (is.null(body)) berth_stop("failure", paste("the answer to", path, "is not JSON"), status)
  body
}

# Every item of a paged listing: one request per page of n, following the `next` marker.
berth_pages <- function(client, path, key, query = list(), n = 1000) {
  items <- list()
  last <- NULL
  repeat {
    page <- berth_get(client, path, c(query, list(n = n, last = last)))
    items <- c(items, page[[key]])
    if (is.null(page[["next"]]) || identical(page[["next"]], last)) break
    last <- page[["next"]]
  }
  items
}

encode_repository <- function(name) {
  parts <- strsplit(sub("^/+", "", sub("/+$", "", name)), "/", fixed = TRUE)[[1]]
  paste(vapply(parts, utils::URLencode, "", reserved = TRUE), collapse = "/")
}

repository_path <- function(repository, ...) {
  paste0("/api/v1/repositories/", encode_repository(repository), ...)
}

# A column of a data frame from one field of each item (NA where the server wrote null or nothing).
column <- function(items, field, type = character(1)) {
  vapply(items, function(item) {
    value <- item[[field]]
    if (is.null(value)) type[NA_integer_] else as.vector(value, mode(type))
  }, type)
}

parse_time <- function(text) {
  as.POSIXct(sub("Z$", "", text), format = "%Y-%m-%dT%H:%M:%OS", tz = "UTC")
}
