"""The frontend: turns job demand into pilot requests to factories.

Public surface:

- `api.create_app(config, own_token)`: the service (routes in `routes.py`);
  `main.run(config_path)` serves it;
- `service.Frontend`: the loop (`cycle()`, `explain()`), asking its pools and
  factories through `sources.Sources`;
- the pure steps of a cycle: `observe.observe_group` (demand via `matching`
  and `conjuncts`, supply via `supply`), then `policy.decide` per entry;
- `explanations.Explanations` and `explain_text`: why each entry got its
  request, as records and as the operator's tables;
- `state.StateFile` (memory across restarts), `credentials.PilotTokens`,
  `vostage` (the groups' VO stages);
- configuration models: `glidewms.config.frontend`.
"""
