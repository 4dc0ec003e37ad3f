"""The pilot agent: registers a partitionable slot with the pool and runs jobs.

Standard library only, Python >= 3.9: it is shipped to worker nodes as a
directory named ``agent`` and started with ``python3 -m agent --config
glidein_config`` from the pilot's work directory. Imports inside the package
are relative so that the same files work as ``glidewms.glidein.agent``.
"""
