# Shared helpers for the project's scripts (sourced, not run).

# rustfmt and clippy ship as rustup components; a bare toolchain may lack them.
ensure_rust_components() {
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
      rustup component add rustfmt clippy
    else
      echo "cargo fmt / cargo clippy are missing and rustup is not available" >&2
      return 1
    fi
  fi
}

# Installs Debian packages that are missing: ensure_packages PKG...
# etcd-server and prometheus are wanted for their binaries only (the tests start their own
# on loopback): when this installs them on a host run by systemd, the services their
# packages start are stopped and disabled. Ones installed before are left alone.
ensure_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if [ -d /run/systemd/system ]; then
      for p in "${missing[@]}"; do
        case "$p" in
          etcd-server) systemctl disable --now etcd.service >/dev/null 2>&1 || true ;;
          prometheus) systemctl disable --now prometheus.service >/dev/null 2>&1 || true ;;
        esac
      done
    fi
  fi
}
