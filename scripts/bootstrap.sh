# Sourced by scripts/berth and scripts/test: make .venv (Python >= 3.11) with Berth installed, on a fresh Debian too.
# Usage: bootstrap_venv [extra]   (extra = "test" installs the test dependencies as well)
bootstrap_venv() {
  local extra="${1:-}" here
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  cd "$here" || return 1
  if ! python3 -c 'import sys, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null; then
    # Debian splits venv/ensurepip out of python3; as root we can add it.
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  [ -x .venv/bin/python ] || python3 -m venv .venv
  local stamp=".venv/.installed-${extra:-run}" spec="." installed
  [ -n "$extra" ] && spec=".[$extra]"
  # Every extra's install includes the base one, and the test extra includes the distributed one.
  local covered="run bench distributed test"
  [ "$extra" = distributed ] && covered="distributed test"
  if [ -z "$extra" ] || [ "$extra" = distributed ]; then
    for installed in .venv/.installed-*; do
      if [ -f "$installed" ] && [ ! pyproject.toml -nt "$installed" ] \
         && [[ " $covered " == *" ${installed##*/.installed-} "* ]]; then stamp="$installed"; fi
    done
  fi
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e "$spec" && touch "$stamp"
  fi
}
