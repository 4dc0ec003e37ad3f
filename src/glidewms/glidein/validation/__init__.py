"""Standard validation scripts, shipped to worker nodes by the factory's stage.

Each script is a small executable run by the pilot agent before it registers
(see ``docs/glidein.md``). Standard library only, Python >= 3.9.
"""
