# Sourced by scripts/test: what the interop tests and the benchmark smoke run need, from Debian, when missing:
# skopeo and podman (as root; --no-install-recommends is enough: no container is ever run); docker.io for dockerd
# (it brings containerd, runc, tini and iptables; its recommends, cgroupfs-mount, apparmor, git, xz-utils..., are
# not needed to build, push and pull; a `docker` CLI elsewhere on PATH is not enough: the tests start a dockerd
# of their own); chromium for the portal's browser tests (Playwright drives it: tests/interop/test_portal_browser.py);
# for the harness CNCF Distribution (docker-registry), wrk and nginx-light; and R with httr2, jsonlite and testthat
# for the R client's tests (clients/R/berth, run by tests/clients/test_r.py).
install_clients() {
  local missing=() tool pkg
  for pair in skopeo:skopeo podman:podman dockerd:docker.io docker-registry:docker-registry wrk:wrk \
              nginx:nginx-light chromium:chromium; do
    tool=${pair%%:*} pkg=${pair#*:}
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$pkg")
  done
  for pkg in httr2 jsonlite testthat; do
    Rscript -e "library($pkg)" >/dev/null 2>&1 || missing+=("r-cran-$pkg")
  done
  command -v Rscript >/dev/null 2>&1 || missing+=(r-base-core)
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "scripts/test: installing ${missing[*]} from Debian for the interop tests" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
