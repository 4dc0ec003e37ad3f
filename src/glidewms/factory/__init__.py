"""The factory: entries, requests from frontends, pilots submitted through backends.

Public surface: `create_app(config, public_url)` (factory.api), `run(config_path)`
(factory.main), the configuration models in `glidewms.config.factory`, the
backend interface in `factory.backends.base`, and the pure `plan()` in
`factory.service`.
"""
