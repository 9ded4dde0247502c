-- The Prefect server's database beside MLflow's (POSTGRES_DB creates mlflow); runs once, on an empty volume.
CREATE DATABASE prefect;
