# Sourced by scripts/test: the real clients the interop tests drive, from Debian, when missing.
# skopeo and podman (as root; --no-install-recommends is enough: no container is ever run).
install_clients() {
  local missing=()
  for tool in skopeo podman; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "scripts/test: installing ${missing[*]} from Debian for the interop tests" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
