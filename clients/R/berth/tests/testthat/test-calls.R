client <- function() berth_client(site("BERTH_URL"), site("BERTH_TOKEN"))
repo <- function(name) paste0(site("BERTH_PROJECT"), "/", name)

test_that("repositories lists the project's repositories", {
  repos <- berth_repositories(client(), site("BERTH_PROJECT"))
  expect_s3_class(repos, "data.frame")
  expect_true(all(repo(c("tools", "many", "results")) %in% repos$name))
  expect_equal(repos$tags[repos$name == repo("tools")], 3)
  expect_true(all(repos$size > 0))
  expect_s3_class(repos$last_push, "POSIXct")
  expect_equal(berth_repositories(client(), site("BERTH_PROJECT"), filter = "man")$name, repo("many"))
})

test_that("tags come as a data frame, one row per tag", {
  tags <- berth_tags(client(), repo("tools"))
  expect_equal(tags$tag, c("latest", "multi", "v1"))
  expect_equal(tags$digest, c(site("BERTH_INDEX"), site("BERTH_INDEX"), site("BERTH_IMAGE")))
  expect_equal(tags$kind, c("index", "index", "image"))
  expect_equal(tags$platforms[3], "linux/amd64")
  expect_equal(tags$pushed_by, rep("owner", 3))
  expect_s3_class(tags$pushed_at, "POSIXct")
  expect_equal(attr(tags$pushed_at, "tzone"), "UTC")
  expect_equal(berth_tags(client(), repo("tools"), sort = "time")$tag[3], "v1")
  expect_error(berth_tags(client(), repo("tools"), sort = "size"))
})

test_that("paging across page boundaries gives every tag once", {
  all <- berth_tags(client(), repo("many"))$tag
  expect_equal(all, paste0("tag-", seq_len(as.integer(site("BERTH_MANY"))) - 1))
  for (n in 1:4) expect_equal(berth_tags(client(), repo("many"), n = n)$tag, all)
})

test_that("a tag's digest and its history, newest first", {
  expect_equal(berth_digest(client(), repo("tools"), "latest"), site("BERTH_INDEX"))
  expect_equal(berth_digest(client(), repo("results"), "v1"), site("BERTH_ARTIFACT"))
  history <- berth_history(client(), repo("tools"), "latest")
  expect_equal(history$digest, c(site("BERTH_INDEX"), site("BERTH_IMAGE")))
  expect_equal(history$actor, c("owner", "owner"))
  expect_true(history$time[1] >= history$time[2])
  # a URL is enough where a client is asked for
  with_env(c(BERTH_TOKEN = site("BERTH_TOKEN")), {
    expect_equal(berth_history(site("BERTH_URL"), repo("tools"))$digest[1:2],
                 c(site("BERTH_INDEX"), site("BERTH_IMAGE")))
  })
})

test_that("failures are typed conditions with the server's message", {
  missing <- tryCatch(berth_digest(client(), repo("tools"), "no-such-tag"), berth_not_found = function(e) e)
  expect_s3_class(missing, "berth_error")
  expect_equal(missing$status, 404L)
  expect_true(nzchar(conditionMessage(missing)))
  forged <- berth_client(site("BERTH_URL"), "berth_0_forged")
  expect_error(berth_tags(forged, repo("tools")), class = "berth_unauthorized")
  stranger <- berth_client(site("BERTH_URL"), site("BERTH_STRANGER_TOKEN"))
  expect_error(berth_digest(stranger, repo("tools"), "v1"), class = "berth_error")
  expect_false(site("BERTH_PROJECT") %in% berth_projects(stranger)$id)
  down <- berth_client("http://127.0.0.1:1", "t")
  expect_error(berth_projects(down), class = "berth_unavailable")
})

test_that("a trashed repository answers not found, with the reason", {
  reader <- berth_client(site("BERTH_URL"), site("BERTH_READER_TOKEN"))
  expect_error(berth_tags(reader, site("BERTH_TRASHED")), "trash", class = "berth_not_found")
  expect_false(site("BERTH_TRASHED") %in% berth_repositories(reader, site("BERTH_PROJECT"))$name)
})

test_that("the token comes from BERTH_TOKEN or from the file podman login wrote", {
  token <- site("BERTH_TOKEN")
  project <- site("BERTH_PROJECT")
  image <- site("BERTH_IMAGE")
  url <- site("BERTH_URL")
  podman_file <- site("BERTH_PODMAN_AUTH_FILE")
  auth <- tempfile(fileext = ".json")
  host <- sub("^https?://", "", url)
  entry <- list()
  entry[[host]] <- list(auth = jsonlite::base64_enc(charToRaw(paste0("someone:", token))))
  jsonlite::write_json(list(auths = entry), auth, auto_unbox = TRUE)
  with_env(c(BERTH_TOKEN = NA, REGISTRY_AUTH_FILE = auth), {
    expect_equal(berth_token(url), token)
    expect_equal(berth_digest(url, paste0(project, "/tools"), "v1"), image)
  })
  with_env(c(BERTH_TOKEN = "from-the-environment", REGISTRY_AUTH_FILE = auth), {
    expect_equal(berth_token(url), "from-the-environment")
  })
  with_env(c(BERTH_TOKEN = NA, REGISTRY_AUTH_FILE = auth, XDG_RUNTIME_DIR = tempdir(), HOME = tempdir(),
             DOCKER_CONFIG = tempdir()), {
    expect_null(berth_token("http://elsewhere:1"))
  })
  with_env(c(BERTH_TOKEN = NA, REGISTRY_AUTH_FILE = podman_file), {  # written by a real `podman login`
    expect_equal(berth_token(url), token)
  })
})
