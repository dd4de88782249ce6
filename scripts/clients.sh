# Sourced by scripts/test: what the interop tests and the benchmark smoke run need, from Debian, when missing:
# skopeo and podman (as root; --no-install-recommends is enough: no container is ever run); docker.io for dockerd
# (it brings containerd, runc, tini and iptables; its recommends, cgroupfs-mount, apparmor, git, xz-utils..., are
# not needed to build, push and pull; a `docker` CLI elsewhere on PATH is not enough: the tests start a dockerd
# of their own); chromium for the portal's browser tests (Playwright drives it: tests/interop/test_portal_browser.py);
# and for the harness CNCF Distribution (docker-registry), wrk and nginx-light.
install_clients() {
  local missing=() tool pkg
  for pair in skopeo:skopeo podman:podman dockerd:docker.io docker-registry:docker-registry wrk:wrk \
              nginx:nginx-light chromium:chromium; do
    tool=${pair%%:*} pkg=${pair#*:}
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "scripts/test: installing ${missing[*]} from Debian for the interop tests" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
