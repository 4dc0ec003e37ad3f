"""The frontend: turns job demand into pilot requests to factories."""
