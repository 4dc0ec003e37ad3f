"""Validation: the HTTP proxy (squid) this node reaches the world through.

Found from ``GLIDEIN_Proxy`` (a URL, ``none`` or ``auto``), else ``http_proxy``
and friends, else ``OSG_SQUID_LOCATION`` (see ``checks.find_proxy``); a proxy
that is found must accept a TCP connection, else the pilot would fail every
download later: a Network failure now. Publishes ``HAS_HTTP_PROXY``,
``GLIDEIN_Proxy_URL`` (without any credentials) and ``GLIDEIN_Proxy_Source``
as slot attributes; a proxy configured only by ``GLIDEIN_Proxy`` is also
given to jobs as ``http_proxy``/``https_proxy`` (the environment's own
proxies reach jobs anyway).
"""

from __future__ import annotations

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import checks
from gconfig import Failure, Script, main

CONNECT_TIMEOUT = 10.0


def check(script: Script) -> str:
    url, source = checks.find_proxy(script.get("GLIDEIN_Proxy"), os.environ)
    script.add("GLIDEIN_Proxy_Source", source, slot=True)
    if not url:
        script.add("HAS_HTTP_PROXY", False, slot=True)
        return f"no HTTP proxy ({source})"
    shown = checks.redact_proxy(url)
    try:
        host, port = checks.proxy_address(url)
    except ValueError as exc:
        raise Failure("Config", f"{source}: {exc}") from None
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise Failure(
            "Network", f"HTTP proxy {shown} (from {source}) does not answer: {exc}"
        ) from None
    script.add("HAS_HTTP_PROXY", True, slot=True)
    script.add("GLIDEIN_Proxy_URL", shown, slot=True)
    if source == "GLIDEIN_Proxy":
        script.add("http_proxy", url, env=True)
        script.add("https_proxy", url, env=True)
    return f"HTTP proxy {shown} from {source}"


if __name__ == "__main__":
    main(check)
