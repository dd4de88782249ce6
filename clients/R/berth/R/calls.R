# The core calls: repositories, tags as a data frame, a tag's digest, its history (and projects, to find an id).

#' The projects the caller may view, as a data frame.
berth_projects <- function(client = berth_client()) {
  client <- as_client(client)
  items <- berth_pages(client, "/api/v1/projects", "projects")
  data.frame(
    id = column(items, "id"), name = column(items, "name"), owner = column(items, "owner"),
    repositories = column(items, "repositories", numeric(1)), permission = column(items, "permission"),
    trashed = column(items, "trashed", logical(1)), stringsAsFactors = FALSE
  )
}

#' A project's repositories, as a data frame (name, tags, size, last_push, last_push_by, trashed, permission).
berth_repositories <- function(client = berth_client(), project, filter = NULL) {
  client <- as_client(client)
  path <- paste0("/api/v1/projects/", utils::URLencode(project, reserved = TRUE), "/repositories")
  items <- berth_pages(client, path, "repositories", list(filter = filter))
  push <- lapply(items, function(item) if (is.null(item$last_push)) list() else item$last_push)
  data.frame(
    name = column(items, "name"), tags = column(items, "tags", numeric(1)), size = column(items, "size", numeric(1)),
    last_push = parse_time(column(push, "time")), last_push_by = column(push, "actor"),
    trashed = column(items, "trashed", logical(1)), permission = column(items, "permission"),
    stringsAsFactors = FALSE
  )
}

#' A repository's tags, as a data frame, one row per tag: tag, digest, kind (image, index, artifact), platforms
#' ("linux/amd64,linux/arm64"), size (bytes), pushed_at (POSIXct, UTC), pushed_by.
#' @param sort "name", or "time" (newest push first)
#' @param n tags per request (the listing is read a page at a time, never one request per tag)
berth_tags <- function(client = berth_client(), repository, sort = c("name", "time"), filter = NULL, n = 1000) {
  client <- as_client(client)
  sort <- match.arg(sort)
  items <- berth_pages(client, repository_path(repository, "/-/tags"), "tags", list(sort = sort, filter = filter),
                       n = n)
  data.frame(
    tag = column(items, "tag"), digest = column(items, "digest"), kind = column(items, "kind"),
    platforms = vapply(items, function(item) paste(unlist(item$platforms), collapse = ","), character(1)),
    size = column(items, "size", numeric(1)), pushed_at = parse_time(column(items, "pushed_at")),
    pushed_by = column(items, "pushed_by"), stringsAsFactors = FALSE
  )
}

#' The digest a tag points at now (what `skopeo inspect` and the registry's Docker-Content-Digest say).
berth_digest <- function(client = berth_client(), repository, tag = "latest") {
  client <- as_client(client)
  berth_get(client, repository_path(repository, "/-/tags/", utils::URLencode(tag, reserved = TRUE)))$digest
}

#' Where a tag pointed, newest first, as a data frame: digest (NA: the tag was removed then), time, actor.
#' Row 1 is now, row 2 before.
berth_history <- function(client = berth_client(), repository, tag = "latest") {
  client <- as_client(client)
  path <- repository_path(repository, "/-/tags/", utils::URLencode(tag, reserved = TRUE), "/history")
  items <- berth_get(client, path)$history
  data.frame(
    digest = column(items, "digest"), time = parse_time(column(items, "time")), actor = column(items, "actor"),
    stringsAsFactors = FALSE
  )
}
