"""Quartermaster's shared code: settings, Kafka and Postgres adapters, telemetry,
local infrastructure, and the generated protobuf code (`quartermaster.v1`)."""
