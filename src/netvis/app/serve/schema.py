"""The schema of every request body the viewer accepts (pydantic v2), checked before anything else.

A job request is one of four JSON objects told apart by ``kind``. Each is parsed and validated in one
step from the raw bytes (:func:`parse_job`): the wrong JSON type (``[]``, ``"x"``), a field of the
wrong type (``"kind": []``, ``"k": "5"``, ``"k": 3e73``), a value out of range, an unknown field, a string
that is not an image reference (``"sample:²"``) and nesting deeper than the parser allows all give a
:class:`RequestInvalid` (HTTP 422) that names the field. Only then does the viewer look at what the request
asks for (does the layer exist? is the channel in range?), which it also answers with 422.

=============  =========================================================================================
kind           fields (default)
=============  =========================================================================================
``examples``   ``layer``; ``k`` 1..64 (16); ``reduce`` ``"mean"``/``"max"`` (``"mean"``)
``filters``    ``layer``; ``channel`` >= 0; ``k`` (16); ``n`` 1..64 (8, at most ``k``); ``reduce``
``saliency``   ``image`` ``sample:N``/``upload:<16 hex>``; ``target`` class index or null; ``methods``
               a non-empty list of the registry's method names (all)
``inversion``  ``image``; ``layer``; ``steps`` 1..1000 (60); ``tv_weight`` 0..100 (0.05);
               ``optimizer`` ``"lbfgs"``/``"adam"``/``"sgd"`` (``"lbfgs"``)
=============  =========================================================================================

Numbers are strict: an integer field takes a JSON integer (not ``true``, ``"5"`` or ``5.0``); a number field
takes a finite JSON number.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from netvis.saliency import methods as saliency_methods

__all__ = [
    "ExamplesRequest",
    "FiltersRequest",
    "InversionRequest",
    "JobRequest",
    "MAX_K",
    "MAX_STEPS",
    "RequestInvalid",
    "SaliencyRequest",
    "is_json_error",
    "parse_job",
    "validate_job",
]

MAX_K = 64
MAX_STEPS = 1000
DEFAULT_K = 16
DEFAULT_FILTERS = 8
DEFAULT_STEPS = 60

LayerName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
ImageRef = Annotated[str, StringConstraints(pattern=r"^(sample:[0-9]{1,9}|upload:[0-9a-f]{16})$")]
MAX_METHODS = 64


def _registered_method(name: str) -> str:
    if name not in saliency_methods.names():
        known = ", ".join(repr(known) for known in saliency_methods.names())
        raise ValueError(f"unknown saliency method {name!r}; choose from {known}")
    return name


# Checked against the registry when a request arrives, so that a method registered later is accepted.
MethodName = Annotated[str, StringConstraints(min_length=1, max_length=100), AfterValidator(_registered_method)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ExamplesRequest(_Request):
    """``{"kind": "examples", "layer": L, "k": 16, "reduce": "mean"}``: each channel's top-k data images."""

    kind: Literal["examples"]
    layer: LayerName
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K)
    reduce: Literal["mean", "max"] = "mean"


class FiltersRequest(_Request):
    """``{"kind": "filters", "layer": L, "channel": c, "k": 16, "n": 8}``: guided backprop of one channel."""

    kind: Literal["filters"]
    layer: LayerName
    channel: int = Field(ge=0, le=1 << 20)
    k: int = Field(DEFAULT_K, ge=1, le=MAX_K)
    n: int | None = Field(None, ge=1, le=MAX_K)
    reduce: Literal["mean", "max"] = "mean"


class SaliencyRequest(_Request):
    """``{"kind": "saliency", "image": "sample:N", "target": null, "methods": [...]}``."""

    kind: Literal["saliency"]
    image: ImageRef
    target: int | None = Field(None, ge=0, le=1 << 20)
    methods: list[MethodName] | None = Field(None, min_length=1, max_length=MAX_METHODS)


class InversionRequest(_Request):
    """``{"kind": "inversion", "image": ..., "layer": L, "steps": 60, "tv_weight": 0.05, "optimizer": "lbfgs"}``."""

    kind: Literal["inversion"]
    image: ImageRef
    layer: LayerName
    steps: int = Field(DEFAULT_STEPS, ge=1, le=MAX_STEPS)
    tv_weight: float = Field(0.05, ge=0, le=100, allow_inf_nan=False)
    optimizer: Literal["lbfgs", "adam", "sgd"] = "lbfgs"


JobRequest = Annotated[ExamplesRequest | FiltersRequest | SaliencyRequest | InversionRequest,
                       Field(discriminator="kind")]
"""Any job request (told apart by ``kind``)."""

_JOB = TypeAdapter(JobRequest)
KINDS = ("examples", "filters", "saliency", "inversion")


class RequestInvalid(ValueError):
    """A request body that does not fit the schema: HTTP ``status`` (422), ``errors`` ``[{field, message}]``."""

    status = 422

    def __init__(self, errors: list[dict[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]))


def _errors(exc: ValidationError) -> list[dict[str, str]]:
    out = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [str(part) for part in error["loc"]]
        kind = error["type"]
        if loc and loc[0] in KINDS:  # the discriminated union puts the tag first
            loc = loc[1:]
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            field, message = "kind", f"must be one of {', '.join(KINDS)}"
        elif kind in ("model_attributes_type", "model_type", "dict_type") and not loc:
            field, message = "body", "a job request is a JSON object with a 'kind'"
        elif kind == "json_invalid" and "recursion" in str((error.get("ctx") or {}).get("error", "")):
            field, message = "body", "nested too deeply"
        elif kind == "json_invalid":
            field, message = "body", f"invalid JSON: {(error.get('ctx') or {}).get('error', 'unreadable')}"
        elif kind == "extra_forbidden":
            field, message = ".".join(loc), "unknown field"
        elif kind == "missing":
            field, message = ".".join(loc), "required"
        elif kind == "string_pattern_mismatch" and loc[-1:] == ["image"]:
            field, message = "image", "must be sample:N or upload:<id>"
        else:
            field, message = ".".join(loc) or "body", error["msg"]
        out.append({"field": field, "message": message})
    return out or [{"field": "body", "message": "invalid"}]


def parse_job(body: bytes) -> ExamplesRequest | FiltersRequest | SaliencyRequest | InversionRequest:
    """Parse and validate the raw bytes of a job request in one step.

    Raises:
        RequestInvalid: the body does not fit the schema (the message names each bad field).
    """
    try:
        return _JOB.validate_json(body)
    except ValidationError as exc:
        raise RequestInvalid(_errors(exc)) from None


def validate_job(request: Any) -> ExamplesRequest | FiltersRequest | SaliencyRequest | InversionRequest:
    """Validate a request already decoded (a dict) or pass a validated one through.

    Raises:
        RequestInvalid: as :func:`parse_job`.
    """
    if isinstance(request, (ExamplesRequest, FiltersRequest, SaliencyRequest, InversionRequest)):
        return request
    try:
        return _JOB.validate_python(request)
    except ValidationError as exc:
        raise RequestInvalid(_errors(exc)) from None
    except RecursionError:
        raise RequestInvalid([{"field": "body", "message": "nested too deeply"}]) from None


def is_json_error(exc: RequestInvalid) -> bool:
    """Whether ``exc`` says that the body is not JSON at all (HTTP 400 rather than 422)."""
    return any(e["field"] == "body" and e["message"].startswith("invalid JSON") for e in exc.errors)
