"""The configuration reference tables of docs/configuration.md, from the models.

`python -m glidewms.config.reference` prints them; a test checks that the
document contains exactly this text, so defaults in the docs cannot drift.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from glidewms.config.factory import EntryConfig, FactoryConfig, RecoveryConfig
from glidewms.config.frontend import FrontendConfig, GroupConfig, OverflowConfig, Source
from glidewms.config.pool import PoolConfig
from glidewms.config.sites import JobIsolationConfig
from glidewms.config.web import WebConfig

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("pool.yaml", PoolConfig),
    ("factory.yaml", FactoryConfig),
    ("Factory entries (items of `entries:`)", EntryConfig),
    ("Entry recovery (`recovery:` in an entry)", RecoveryConfig),
    ("Local job isolation (`isolation:` in an entry, backend local)", JobIsolationConfig),
    ("frontend.yaml", FrontendConfig),
    ("Frontend groups (items of `groups:`)", GroupConfig),
    ("Frontend pools and factories (items of `pools:` and `factories:`)", Source),
    ("Group overflow (`overflow:` in a group)", OverflowConfig),
    ("web.yaml (the web console)", WebConfig),
]


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if repr(value) == "PydanticUndefined":
        return "required"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        return "see below"
    if isinstance(value, Enum):  # as YAML spells it
        return f"`{value.value}`"
    return f"`{value}`"


def reference_markdown() -> str:
    out = []
    for title, model in SECTIONS:
        out.append(f"## {title}\n\n| key | default | meaning |\n|---|---|---|")
        for name, field in model.model_fields.items():
            out.append(f"| `{name}` | {_default(field)} | {field.description or ''} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference_markdown())
