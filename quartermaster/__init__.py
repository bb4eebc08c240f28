"""Quartermaster's shared platform code: settings, Kafka and Postgres adapters, telemetry,
clients, and the generated protobuf code (`quartermaster.v1`)."""

import os

# Before grpc loads anywhere: its core logs an INFO line each time a process that
# has loaded it forks a child (our supervisors and tests start many).
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
