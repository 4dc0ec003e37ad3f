"""The web console (`glidewms web`): pages over the services' APIs (app.py)."""
