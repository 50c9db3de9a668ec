# Installs redis-server (the Debian package) when absent. Sourced by scripts/test: the
# Redis event-bus tests (tests/api/redis_bus.rs) start their own redis-server on a free
# loopback port, as the `redis` user when run as root, and kill and restart it.
ensure_redis_server() {
  if command -v redis-server >/dev/null 2>&1; then
    return 0
  fi
  echo "colloquy: installing redis-server (apt-get)…" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >&2
  # The package starts a system instance where systemd runs; the tests use their own.
  command -v redis-server >/dev/null 2>&1
}
