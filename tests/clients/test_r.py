"""The R package (clients/R/berth) against a real `berth serve`: installed into a library of the test's own, its
testthat tests run with the server's URL, tokens and the expected digests in the environment. Any R failure, error
or skip fails this test."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from berth_client import Client
from tests.clients.conftest import MANY, Site, podman_login
from tests.serving import ROOT

PACKAGE = ROOT / "clients" / "R" / "berth"

# test_dir's result as a data frame: a failed expectation, an error or a skip is a failure of the whole run.
RUN = """
results <- as.data.frame(testthat::test_dir(Sys.getenv("BERTH_R_TESTS"), package = "berth",
                                            load_package = "installed", stop_on_failure = FALSE,
                                            reporter = testthat::SummaryReporter$new(show_praise = FALSE)))
cat(sprintf("\\nR: %d tests, %d failed, %d errors, %d skipped\\n", nrow(results), sum(results$failed),
            sum(results$error), sum(results$skipped)))
if (nrow(results) == 0 || sum(results$failed) > 0 || any(results$error) || sum(results$skipped) > 0) quit(status = 1)
"""


def rscript() -> str:
    path = shutil.which("Rscript")
    assert path, ("Rscript is not installed: run the suite through scripts/test, which installs r-base-core, "
                  "r-cran-httr2, r-cran-jsonlite and r-cran-testthat from Debian")
    return path


def test_the_r_package(site: Site, tmp_path: Path) -> None:
    library = tmp_path / "R-library"
    library.mkdir()
    source = tmp_path / "berth"
    shutil.copytree(PACKAGE, source)  # R CMD INSTALL may leave files beside the sources: not in the checkout
    install = subprocess.run(["R", "CMD", "INSTALL", "--no-test-load", "-l", str(library), str(source)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    authfile = tmp_path / "auth.json"
    podman_login(site.server.host, site.owner_token, authfile, tmp_path)
    env = dict(os.environ, R_LIBS=str(library), BERTH_R_TESTS=str(source / "tests" / "testthat"),
               BERTH_URL=site.url, BERTH_TOKEN=site.owner_token, BERTH_READER_TOKEN=site.reader_token,
               BERTH_STRANGER_TOKEN=site.stranger_token, BERTH_PROJECT=site.project, BERTH_IMAGE=site.image,
               BERTH_INDEX=site.index, BERTH_ARTIFACT=site.artifact, BERTH_MANY=str(MANY),
               BERTH_TRASHED=site.repo("old"), BERTH_PODMAN_AUTH_FILE=str(authfile))
    with Client(site.url, site.owner_token) as owner:
        owner.trash(site.repo("old"))
        try:
            run = subprocess.run([rscript(), "-e", RUN], env=env, capture_output=True, text=True, timeout=300)
        finally:
            owner.restore(site.repo("old"))
    assert run.returncode == 0, f"the R tests failed:\n{run.stdout}\n{run.stderr}"
    assert "0 failed, 0 errors, 0 skipped" in run.stdout
