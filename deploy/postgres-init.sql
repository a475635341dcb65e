-- One Postgres for the team: Prefect's database is created by the image (POSTGRES_DB);
-- Label Studio gets its own.
CREATE DATABASE labelstudio;
