# Sourced by scripts/serve and scripts/test.
# ensure_postgres [dev|test]: when DATABASE_URL is unset, installs Postgres if it is missing,
# initialises a cluster under .pgdata/ (ignored by git), starts it and exports DATABASE_URL.
# Postgres refuses to run as root, so as root the cluster belongs to the `postgres` user.

_pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return 0
  fi
  return 1
}

_pg_install() {
  echo "colloquy: installing PostgreSQL (apt-get)…" >&2
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql postgresql-contrib >&2
}

_as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

ensure_postgres() {
  local mode="${1:-dev}"
  if [ -n "${DATABASE_URL:-}" ]; then
    echo "colloquy: using DATABASE_URL from the environment" >&2
    return 0
  fi
  local root data port bindir
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  data="$root/.pgdata/$mode"
  port="${COLLOQUY_PG_PORT:-$([ "$mode" = test ] && echo 54330 || echo 54329)}"
  bindir=$(_pg_bindir) || { _pg_install; bindir=$(_pg_bindir); } || {
    echo "colloquy: PostgreSQL is not installed and could not be installed" >&2; return 1; }
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
  fi
  mkdir -p "$data"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$root/.pgdata" "$data"
    # The postgres user must reach the data directory (a checkout under /root cannot).
    if ! runuser -u postgres -- test -x "$data"; then
      data="${TMPDIR:-/tmp}/colloquy-pgdata/$mode"
      mkdir -p "$data" && chown postgres "$(dirname "$data")" "$data"
      echo "colloquy: $root is not readable by the postgres user; cluster kept in $data" >&2
    fi
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    echo "colloquy: initialising a Postgres cluster in $data" >&2
    _as_pg "$bindir/initdb" -D "$data" -A trust -U postgres --no-sync -E UTF8 >/dev/null
  fi
  if ! _as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    local opts="-p $port -k $data -c listen_addresses=127.0.0.1 -c max_connections=500 -c shared_buffers=256MB"
    # Tests throw their databases away: durability there only costs time.
    [ "$mode" = test ] && opts="$opts -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    _as_pg "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -o "$opts" -w -t 60 start >/dev/null
    echo "colloquy: Postgres started on 127.0.0.1:$port (log: $data/server.log)" >&2
  fi
  if ! "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'colloquy'" | grep -q 1; then
    "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres colloquy
  fi
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/colloquy"
}
