"""The factory: entries, requests from frontends, pilots submitted through backends.

Public surface:

- `api.create_app(config, public_url)`: the service (routes in `routes/`, one
  module per resource); `main.run(config_path)` serves it;
- `service.Factory`: the converge loop, with `restart.py` (recovery after a
  stop), `upkeep.py` (held and stale pilots, the log archive), `reload.py`
  (reconfiguration) and `token_push.py` around it;
- `policy.plan()` and `recovery.py`: the pure decisions, tested by tables;
- `states.GlideinState`: a pilot's state as the factory counts it (also what
  frontends read in the glidein summary); `store.FactoryStore`: the database;
- `backends.base.Backend`: the interface every kind of site implements;
- `client.FactoryClient`: the operators' client of a running factory;
- configuration models: `glidewms.config.factory` and `glidewms.config.sites`.
"""
