"""Answers about request bodies the pool refuses.

The token and size checks that come before any body is read are the gate's
(security/asgi.py, installed by pool/api.py). `invalid_body` (shared by every
service, glidewms/errors.py) answers a body its model refuses (422) without
echoing the input.
"""

from __future__ import annotations

from glidewms.errors import invalid_body

__all__ = ["invalid_body"]
