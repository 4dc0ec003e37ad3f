"""The pilot (glidein) side of glidewms: what runs on a worker node.

It is shipped, not installed: the factory stages ``bootstrap/glidein_startup.sh``
and the ``agent`` package (standard library only, Python >= 3.9) with a
manifest of sha256 sums; the bootstrap verifies every file, writes
``glidein_config`` and runs ``python3 -m agent --config glidein_config``.
"""
