"""Typed configuration: YAML files validated by pydantic models."""

from glidewms.config.loader import ConfigError, load_config

__all__ = ["ConfigError", "load_config"]
