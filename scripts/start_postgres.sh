#!/usr/bin/env bash
# Start a PostgreSQL server for the tests on 127.0.0.1 only, with a user, a password and a
# database, and print the line the caller exports:
#   SWEEPER_TEST_POSTGRES_URL=postgresql://sweeper:PASSWORD@127.0.0.1:PORT/sweeper
# Installs Debian's postgresql with apt-get when it is missing. Run it again and it reuses the
# server (and password) it started before. Everything else it says goes to stderr.
#   SWEEPER_PG_DIR   data, socket, log and password (default /tmp/sweeper-postgres)
#   SWEEPER_PG_PORT  port (default 55432, away from a system server's 5432)
set -euo pipefail
dir=${SWEEPER_PG_DIR:-/tmp/sweeper-postgres}
port=${SWEEPER_PG_PORT:-55432}
user=sweeper
database=sweeper

say() { echo "start_postgres: $*" >&2; }

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bin" ] && ! command -v pg_ctl >/dev/null; then
  say "installing postgresql with apt-get"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
  bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
[ -n "$bin" ] || bin=$(dirname "$(command -v pg_ctl)")

# The server refuses to run as root: as root, it runs as the postgres account the package made.
as_owner() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

mkdir -p "$dir"
[ "$(id -u)" -ne 0 ] || chown postgres "$dir"
chmod 700 "$dir"
if [ ! -s "$dir/password" ]; then
  # URL-safe characters only, so the URL needs no escaping.
  head -c 64 /dev/urandom | tr -dc 'A-Za-z0-9' | head -c 24 >"$dir/password"
  chmod 600 "$dir/password"
fi
password=$(cat "$dir/password")

if [ ! -f "$dir/data/PG_VERSION" ]; then
  say "initialising a cluster in $dir/data"
  # Local socket connections are trusted (to set up the user); TCP needs the password.
  as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >&2
fi
if ! as_owner "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
  say "starting the server on 127.0.0.1:$port"
  as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir" >&2
fi

psql() { as_owner "$bin/psql" -h "$dir" -p "$port" -U postgres -v ON_ERROR_STOP=1 -qAt "$@"; }
if [ "$(psql -c "SELECT 1 FROM pg_roles WHERE rolname = '$user'")" != "1" ]; then
  psql -c "CREATE ROLE $user LOGIN PASSWORD '$password'"
fi
if [ "$(psql -c "SELECT 1 FROM pg_database WHERE datname = '$database'")" != "1" ]; then
  psql -c "CREATE DATABASE $database OWNER $user"
fi
say "ready: database $database, user $user, on 127.0.0.1:$port"
echo "SWEEPER_TEST_POSTGRES_URL=postgresql://$user:$password@127.0.0.1:$port/$database"
