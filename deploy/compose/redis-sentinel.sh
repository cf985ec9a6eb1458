#!/usr/bin/env bash
# Entrypoint of docker-compose.yml's sentinels (profile `sentinel`): Redis Sentinel with a
# config made from the template deploy/compose/sentinel.conf.
#
# Sentinel must be able to rewrite its config file (it records there the current master, the
# replicas and sentinels it found, and the config epoch), so the template, mounted read-only,
# is copied to /data on the container's first start, with this sentinel's own name added.
# /data is the image's volume: the copy, and so what this sentinel had learned, outlives a
# restart and a recreation by `docker compose up`. After `docker compose down` (or
# `docker compose rm -v`) the sentinel starts again from the template.
#
# Environment: SENTINEL_NAME, the name the others and the clients reach this sentinel by
# (its compose service name). Template: SENTINEL_TEMPLATE (default below).
set -euo pipefail

template=${SENTINEL_TEMPLATE:-/usr/local/etc/redis/sentinel.conf}
conf=/data/sentinel.conf

if [ ! -s "$conf" ]; then
  {
    cat "$template"
    printf '\n# This sentinel, as the others and the clients reach it.\n'
    printf 'sentinel announce-ip %s\n' "${SENTINEL_NAME:?SENTINEL_NAME must be set}"
  } >"$conf.new"
  mv "$conf.new" "$conf"
fi

# The image's entrypoint hands /data (the config included) to the redis user and drops root.
exec docker-entrypoint.sh redis-server "$conf" --sentinel
