#!/usr/bin/env bash
# Entrypoint of docker-compose.yml's `postgres-replica` (profile `replica`): a PostgreSQL
# physical streaming replica of the `postgres` service, in the same image.
#
# First start (no cluster in $PGDATA yet): wait for the primary, then copy it with
#   pg_basebackup -R -X stream -C -S "$REPLICATION_SLOT" --checkpoint=fast
#   -R                 writes standby.signal and primary_conninfo (with the slot): the copy
#                      starts as a standby of the primary
#   -X stream          streams the WAL written during the copy, so the copy is consistent
#   -C -S SLOT         creates a replication slot on the primary: it keeps the WAL this replica
#                      has not received yet for as long as the replica is away. Remove the
#                      replica for good? Drop the slot too, or the primary's disk fills up:
#                      SELECT pg_drop_replication_slot('replica_1');
#   --checkpoint=fast  starts the copy now rather than at the primary's next checkpoint
# The copy goes to "$PGDATA.partial" and is renamed when complete, so a copy cut short (the
# container stopped mid-way) is started again instead of being taken for a cluster.
# Every start then runs postgres on that cluster; it resumes streaming from its slot.
#
# Environment (docker-compose.yml sets it): PGDATA, POSTGRES_PASSWORD (the password of
# REPLICATION_USER on the primary), PRIMARY_HOST, PRIMARY_PORT, REPLICATION_USER,
# REPLICATION_SLOT. Arguments: passed on to postgres.
set -euo pipefail

: "${PGDATA:?PGDATA must be set}"
primary_host=${PRIMARY_HOST:-postgres}
primary_port=${PRIMARY_PORT:-5432}
user=${REPLICATION_USER:-freshroots}
slot=${REPLICATION_SLOT:-replica_1}

# The image starts us as root: make the volume the postgres user's, then run as that user.
if [ "$(id -u)" = 0 ]; then
  parent=$(dirname "$PGDATA")
  mkdir -p "$parent"
  chown postgres:postgres "$parent"
  chmod 0700 "$parent"
  exec gosu postgres bash "${BASH_SOURCE[0]}" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  # PostgreSQL's own rule for slot names; checked here because the name goes into SQL below.
  if [[ ! $slot =~ ^[a-z0-9_]{1,63}$ ]]; then
    echo "REPLICATION_SLOT must be 1-63 of a-z, 0-9 and _, got '$slot'" >&2
    exit 2
  fi
  export PGPASSWORD="${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
  until pg_isready -q -h "$primary_host" -p "$primary_port" -U "$user" -d postgres; do
    echo "waiting for the primary at $primary_host:$primary_port"
    sleep 2
  done
  # A slot left by an earlier copy (this volume was removed, or a copy was cut short) holds
  # WAL from back then: drop it, and -C makes a new one. A slot in use by another replica is
  # left alone, and pg_basebackup then stops with "replication slot ... already exists".
  psql -X -q -v ON_ERROR_STOP=1 -h "$primary_host" -p "$primary_port" -U "$user" -d postgres \
    -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
        WHERE slot_name = '$slot' AND NOT active" >/dev/null
  echo "copying the primary at $primary_host:$primary_port (slot $slot)"
  rm -rf "$PGDATA.partial"
  pg_basebackup -h "$primary_host" -p "$primary_port" -U "$user" -D "$PGDATA.partial" \
    -R -X stream -C -S "$slot" --checkpoint=fast
  rmdir "$PGDATA" 2>/dev/null || true  # an empty directory would take the copy inside it
  mv "$PGDATA.partial" "$PGDATA"
  echo "copy complete: starting as a standby"
fi

# hot_standby_feedback: the primary keeps the row versions that queries running here still
# see, instead of vacuuming them away and so cancelling those queries ("conflict with
# recovery") -- a pull reading a REPEATABLE READ snapshot would otherwise fail and go to the
# primary again. The arguments (docker-compose.yml's `command`) carry the rest: a standby
# refuses to start with max_connections below the primary's, so it passes the same value.
exec postgres -c hot_standby_feedback=on "$@"
