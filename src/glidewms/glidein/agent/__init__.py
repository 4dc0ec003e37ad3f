"""The pilot agent: registers a partitionable slot with the pool and runs jobs.

Standard library only, Python >= 3.9: it is shipped to worker nodes as a
directory named ``agent`` and started with ``python3 -m agent --config
glidein_config`` from the pilot's work directory. Imports inside the package
are relative so that the same files work as ``glidewms.glidein.agent``; it
imports nothing else of glidewms (its protocol constants are its own,
``http.API_MAJOR``, kept equal to ``glidewms.protocol``'s by a test).

Public surface (what the bootstrap, validation scripts, tests and benches use):

- ``__main__.main``: the command line; ``agent.Agent(cfg, *, total, backoff,
  kill_grace).run()`` returns the pilot's exit code.
- ``config``: ``load_config``, ``build_config``, ``parse_lines``,
  ``GlideinConfig``, ``ConfigError``.
- ``policy``: ``ExitReason`` (the exit reasons as they cross the wire),
  ``next_step`` and the other pure decisions.
- ``exchange``: ``Exchange`` and the ``Pilot`` protocol it works for;
  ``slot.Slot``; ``checks.Checks``; ``claims.ClaimRunner``; ``trail.Trail``.
- ``http``: ``Api``, ``HttpStatusError``, ``TransportError``,
  ``IncompatiblePeer``, ``API_MAJOR``, ``VERSION_HEADER``.
- ``isolation``: ``Isolation``, how jobs are kept from the pilot and the
  services (another account, or bubblewrap), and ``open_output``.
- ``jobs``, ``container``, ``cvmfs``, ``cvmfsexec``, ``validation``,
  ``resources``, ``forkrun``, ``workers``: used by the validation scripts
  (``from agent import cvmfs``...), the bootstrap and the benches.

docs/glidein.md ("The agent's code") says what each module holds.
"""
