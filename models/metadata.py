"""The metadata of our checkpoints, validated at load.

A checkpoint is the operator's own file, but a wrong one must fail at start-up
with one line naming the field, not as a 40-line ``TypeError`` or a server that
reports ready and answers every request 500 (``num_classes: "10"``,
``std: [0, 0, 0]``, ``widths: [NaN]`` all did).
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .widths import match_width

__all__ = ["CheckpointMetadata", "metadata_error"]

FiniteFloat = float  # with allow_inf_nan=False in the model config


class CheckpointMetadata(BaseModel):
    """What the server reads from a checkpoint; other keys (training settings, dataset) pass through."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, strict=False)

    arch: StrictStr
    widths: list[FiniteFloat] = Field(min_length=1, max_length=256)
    num_classes: StrictInt = Field(ge=1, le=1_000_000)
    input_size: StrictInt = Field(ge=8, le=4096)
    in_channels: StrictInt = Field(3, ge=1, le=16)
    bn_mode: Literal["switchable", "shared", "universal"] = "switchable"
    # Universally slimmable nets: the range any width may take, and the widths with BN statistics.
    width_range: list[FiniteFloat] | None = Field(None, min_length=2, max_length=2)
    calibrated: list[FiniteFloat] | None = Field(None, max_length=256)
    mean: list[FiniteFloat] | None = None
    std: list[FiniteFloat] | None = None
    labels: list[StrictStr] | None = None
    accuracy: dict[str, FiniteFloat] | None = None

    @field_validator("widths")
    @classmethod
    def _widths(cls, widths: list[float]) -> list[float]:
        if any(not 0 < w <= 4 for w in widths):
            raise ValueError(f"every width must be in (0, 4], got {widths}")
        if widths != sorted(set(widths)):
            raise ValueError(f"must be strictly ascending, got {widths}")
        return widths

    @field_validator("std")
    @classmethod
    def _std(cls, std: list[float] | None) -> list[float] | None:
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"every std must be positive, got {std}")
        return std

    @model_validator(mode="after")
    def _consistent(self) -> "CheckpointMetadata":
        for name in ("mean", "std"):
            values = getattr(self, name)
            if values is not None and len(values) != self.in_channels:
                raise ValueError(f"{name} has {len(values)} values for {self.in_channels} channels")
        if (self.bn_mode == "universal") != (self.width_range is not None):
            raise ValueError(
                "width_range goes with bn_mode 'universal' (a universally slimmable net), and only with it"
            )
        stray = [w for w in self.calibrated or () if match_width(self.widths, w) is None]
        if stray:
            raise ValueError(f"calibrated widths {stray} are not declared")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError(f"{len(self.labels)} labels for {self.num_classes} classes")
        for width, top1 in (self.accuracy or {}).items():
            try:
                declared = match_width(self.widths, float(width)) is not None
            except ValueError:
                declared = False
            if not declared:
                raise ValueError(f"accuracy names width {width!r}, which is not declared")
            if not 0 <= top1 <= 1:
                raise ValueError(f"accuracy of width {width} must be a fraction in [0, 1], got {top1}")
        return self


def metadata_error(exc: ValidationError) -> str:
    """The first problem as ``field: message``."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
