#!/bin/sh
# Run once by the postgres image on an empty volume: POSTGRES_DB (prefect) exists; add MLflow's database.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -c 'CREATE DATABASE mlflow'
