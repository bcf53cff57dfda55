"""Configs travel as JSON inside checkpoints: the shared dict round trip of our frozen dataclass configs."""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, TypeVar

T = TypeVar("T", bound="JsonConfig")


class JsonConfig:
    """Mixin for frozen dataclass configs: `to_dict` for JSON, `from_dict` that rejects unknown fields."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
        return cls(**d)
