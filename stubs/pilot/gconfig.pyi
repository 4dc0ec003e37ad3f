# Pilot-side names for mypy only (pyproject.toml: mypy_path). On a worker node the
# validation scripts import their siblings, and the agent package from the work
# dir, as top-level modules; these stubs give those names the real types of the
# modules under src/glidewms/glidein/, which is where they are checked.

from glidewms.glidein.validation.gconfig import *
