import os

# Before grpc loads: its core logs an INFO line each time this process forks a child.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
