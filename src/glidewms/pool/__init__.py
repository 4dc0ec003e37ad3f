"""The pool: global job queue, matchmaker and sandbox store."""
