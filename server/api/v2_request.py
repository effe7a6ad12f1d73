"""The KServe v2 inference request, validated whole before admission.

Handlers used to read the JSON header with ``dict.get`` and trusted what came
back: ``"outputs": 5``, a string ``binary_data_output`` or a 401-digit width
reached code that raised ``TypeError``/``OverflowError`` (500), sometimes after
the model ran. Every field the server reads is typed here; anything else in
``parameters`` is kept (Triton clients send their own) but never interpreted.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from server.http.errors import ApiError

__all__ = ["V2InferRequest", "V2InputTensor", "V2RequestedOutput", "parse_v2_request"]

# A number as JSON sends it, or a numeric string; parsed strictly by codecs.parse_number (a bool is
# not a number there: `"width": true` is not 1.0), which names the parameter in its 4xx.
Number = Any


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class V2TensorParameters(_Open):
    binary_data_size: StrictInt | None = Field(None, ge=0)


class V2InputTensor(BaseModel):
    name: StrictStr
    shape: list[StrictInt] = Field(max_length=8)
    datatype: StrictStr
    parameters: V2TensorParameters | None = None
    data: list[Any] | None = None


class V2OutputParameters(_Open):
    binary_data: StrictBool | None = None


class V2RequestedOutput(BaseModel):
    name: StrictStr
    parameters: V2OutputParameters | None = None


class V2RequestParameters(_Open):
    width: Number | None = None
    latency_budget_ms: Number | None = None
    timeout: Number | None = None  # Triton's, in microseconds
    binary_data_output: StrictBool | None = None


class V2InferRequest(BaseModel):
    id: StrictStr | None = None
    parameters: V2RequestParameters | None = None
    inputs: list[V2InputTensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None

    def wants_binary_output(self) -> bool:
        if self.parameters is not None and self.parameters.binary_data_output:
            return True
        return any(o.parameters is not None and o.parameters.binary_data for o in self.outputs or ())


def parse_v2_request(header: dict) -> V2InferRequest:
    """Validate a decoded JSON header; 400 naming the first offending field."""
    try:
        return V2InferRequest.model_validate(header)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "request"
        raise ApiError(400, f"invalid inference request: {where}: {first['msg']}") from None
