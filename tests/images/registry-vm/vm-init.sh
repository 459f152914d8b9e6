#!/bin/sh
# PID 1 of the test VM. A real registry host has an init system that starts dockerd and cron;
# this container has none, so it starts them itself and stops dockerd cleanly on SIGTERM.
set -u
mkdir -p /var/log
dockerd --storage-driver overlay2 --pidfile /run/docker.pid >/var/log/dockerd.log 2>&1 </dev/null &
cron
stop() {
    [ -s /run/docker.pid ] && kill "$(cat /run/docker.pid)" 2>/dev/null
    wait
    exit 0
}
trap stop TERM INT
while :; do
    sleep 3600 &
    wait $!
done
