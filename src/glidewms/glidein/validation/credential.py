"""Validation: the pilot token must not expire before the pilot can do useful work.

A token already expired, or expiring within ``GLIDEIN_Token_Min_Seconds``
(default 300), is a VO_Proxy failure. Publishes ``GLIDEIN_Token_Expires``
(epoch) so the agent retires before its credential dies. The token itself is
never printed.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checks
from gconfig import Failure, Script, main


def check(script: Script) -> str:
    path = script.get("GLIDEIN_Token_File") or os.environ.get("GLIDEIN_TOKEN_FILE", "")
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read()
    except OSError as exc:
        raise Failure(
            "VO_Proxy", f"cannot read the pilot token file {path}: {exc.strerror}"
        ) from None
    expires = checks.token_expiry(token)
    if expires is None:
        return "the token carries no expiry"
    left = expires - time.time()
    minimum = int(script.get("GLIDEIN_Token_Min_Seconds", "300") or 0)
    if left < minimum:
        raise Failure(
            "VO_Proxy",
            f"the pilot token expires in {left:.0f}s (GLIDEIN_Token_Min_Seconds is {minimum})",
        )
    script.add("GLIDEIN_Token_Expires", int(expires))
    return f"token valid for {left:.0f}s"


if __name__ == "__main__":
    main(check)
