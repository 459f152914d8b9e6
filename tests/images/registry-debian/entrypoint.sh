#!/bin/sh
# Same dispatch as the official registry:2 image: a config path means "serve it",
# a subcommand (serve, garbage-collect, ...) goes to the registry binary.
set -e
case "$1" in
    *.yaml|*.yml) set -- registry serve "$@" ;;
    serve|garbage-collect|help|-*) set -- registry "$@" ;;
esac
exec "$@"
