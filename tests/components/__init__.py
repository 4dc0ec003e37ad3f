"""Real components started by tests (databases, daemons), shared by several test modules."""
