"""What every service's configuration checks of its TLS files."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ValidationInfo, field_validator

from glidewms.security.tls import read_ca_bundle, tls_pair


class TlsChecks(BaseModel):
    """The checks every service's config makes of its TLS files, in one place:
    `tls_key` only beside `tls_cert` (and the other way round), and a
    `ca_file` that holds certificates; each error names the file. A model
    that has none of these fields is not checked for them."""

    @field_validator("tls_key", check_fields=False)
    @classmethod
    def _tls_pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return tls_pair(info.data.get("tls_cert"), value)

    @field_validator("ca_file", check_fields=False)
    @classmethod
    def _ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_ca_bundle(value)  # a TlsError (a ValueError) names the file
        return value
