#!/bin/sh
# A learner's pod: copy the course into their home the first time, then the single-user server
# (JupyterHub passes its URL, token and the LABXDS_* environment of the spawner hook).
set -eu
for notebook in "${LABXDS_COURSE:-/opt/labxds/notebooks}"/*.ipynb; do
  [ -e "$HOME/$(basename "$notebook")" ] || cp "$notebook" "$HOME/"
done
exec jupyterhub-singleuser "$@"
