"""The pool's HTTP routes, one router per resource (see docs/protocol.md).

- `pilots`: the pilot turn, register, claim, complete, heartbeat, leave;
  the frontend's list of pilots
- `jobs`: submit, list, show, events, edit, hold/release/remove
- `files`: sandbox files by SHA-256
- `streams`: stdout/stderr of running jobs, sent by pilots, read by owners
- `demand`: the frontends' demand
- `tokens`: pilot tokens for frontends
- `admin`: health, priorities, concurrency limits, counters
- `operator`: drains of pilots, entries and sites; setting a submitter's usage
- `userlog`: a cluster's events after a given one (users' job event logs)

Handlers are thin: the caller's identity and the pool come from dependencies
(`deps`), the body is validated by its model, the store is called in a
worker thread, and its refusals become HTTP statuses (`deps.guarded`).
"""
