"""The pool: global job queue, matchmaker and sandbox store.

Public surface:

- `api.create_app(config, public_url)`: the HTTP service (routes/ has one
  router per resource; docs/protocol.md lists them); `main.run` serves it.
- `store.PoolStore(engine, *, ...)`: the durable state, owner of the
  components `queue`, `turns`, `pilots`, `matching`, `reports`, `periodic`
  and `autoclusters` (its docstring has the table); `store.FairShare`.
- `lifecycle`: `JobState`, `PilotState`, and the transition tables `JOB`
  and `PILOT` every state change goes through (drawn in docs/pool.md).
- `jobs`: job ids, `NewJob`, what a pilot needs to run a job, and the
  store's exceptions (`NotFound`, `Conflict`, `PilotGone`, `InvalidJob`,
  `InvalidEdit`); `exit.Completion`, a pilot's report of an ended job.
- Pure policy, tested by tables: `exit.exit_action`, `periodic.decide`,
  `fairshare`, `matchmaker`, `slots`.
- `dblock.DatabaseInUse`: a second pool on the same database is refused.
"""
