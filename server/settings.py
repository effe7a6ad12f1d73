"""Server settings: one pydantic-settings model; every field is a ``serve`` flag and a ``WIDTHWISE_*`` variable.

Precedence: command-line flag > environment variable > default. Nothing is
read from the environment at import time, only when ``Settings()`` is built.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.widths import parse_widths
from policies.scheduler import SchedulerConfig
from server.runtime.config import RuntimeConfig

__all__ = ["Settings", "SCHEDULING_FIELDS", "add_serve_arguments", "settings_from_args"]


class Settings(BaseSettings):
    # No inf/NaN anywhere, and every number has an upper bound: `--max-queue-delay-ms inf` once passed
    # validation and killed the worker on the first request.
    model_config = SettingsConfigDict(env_prefix="WIDTHWISE_", extra="ignore", allow_inf_nan=False)

    checkpoint: Path | None = Field(
        None, description="checkpoint (.safetensors or official .pt); default: embedded digits model"
    )
    widths: str | None = Field(
        None, description="widths to serve: a list (0.35,0.5,1.0) or a grid lo:hi:step (0.35:1.0:0.05); each must be "
        "declared by the checkpoint, and for a universally slimmable one calibrated (widthwise calibrate --widths); "
        "default: every declared (calibrated) width"
    )
    model_name: str | None = Field(None, description="name in URLs and metrics (default: derived from the checkpoint)")
    labels: Path | None = Field(
        None, description="class labels file, one per line in class order (default: the checkpoint's labels)"
    )
    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8000, ge=0, le=65535, description="listen port")
    grpc_port: int = Field(
        0, ge=0, le=65535, description="KServe v2 gRPC port on the same host (Triton's is 8001; 0: no gRPC)"
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the model runs")
    backend: Literal["auto", "torch", "onnxruntime"] = Field(
        "auto", description="auto: onnxruntime on CPU when installed, torch on CUDA"
    )
    precision: Literal["fp32", "fp16", "bf16"] = Field("fp32", description="CUDA compute precision")
    cuda_graphs: bool = Field(True, description="capture CUDA graphs per (width, batch bucket) on CUDA")
    weights: Literal["per-width", "shared"] = Field(
        "per-width", description="per-width: each width runs its own BN-folded copy of its weights (fastest; "
        "memory grows with the number of widths); shared: every width reads one copy, as the paper's network does "
        "(memory of the widest width once; torch backend, BN folded at each call: about 2x slower on CPU)"
    )
    policy: str = Field("max-width", description="width-selection policy: max-width, fixed:<width>, ...")
    profile: Path | None = Field(
        None, description="latency profile JSON to load instead of measuring at startup (must have been measured "
        "for the same model, device, backend, precision and threads)"
    )
    startup_cache: bool = Field(
        True, description="keep exported switches, the latency profile and MACs on disk, keyed by the weights' hash "
        "and the runtime, so a restart skips export and profiling"
    )
    cache_dir: Path | None = Field(None, description="start-up cache directory (default: $XDG_CACHE_HOME/widthwise "
                                   "or ~/.cache/widthwise)")
    save_profile: Path | None = Field(
        None, description="write the latency profile measured at startup to this JSON file"
    )
    default_budget_ms: float | None = Field(
        None, gt=0, le=3_600_000, description="budget for requests without one (default: none)"
    )
    max_batch_size: int = Field(8, ge=1, le=1024, description="largest batch one width runs at once")
    max_queue_delay_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        description="how long a batch may wait to fill up (0: batch only what is already queued, as Triton)",
    )
    queue_limit: int = Field(256, ge=1, le=1_000_000, description="queued requests beyond which new ones get 503")
    max_inflight_http: int = Field(
        1024, ge=1, le=1_000_000, description="HTTP requests in flight beyond which new ones get 503 at once"
    )
    max_connections: int = Field(
        1024, ge=16, le=1_000_000,
        description="open connections across both ports; with --grpc-port a quarter of them are gRPC's "
        "(HTTP/2 multiplexes calls over few connections), the rest HTTP's. Past its share HTTP closes its "
        "oldest idle connection to take the new one and gRPC refuses new ones; the file-descriptor limit is "
        "raised to hold them all",
    )
    admission: Literal["reject", "best_effort"] = Field(
        "reject", description="reject: 503/504 when no width meets the deadline; best_effort: serve narrowest late"
    )
    admission_audit: float = Field(
        0.0, ge=0, le=1, description="serve this share of the requests the deadline checks would refuse anyway, "
        "and count in widthwise_admission_audits_total whether each was answered in time: how many refusals "
        "were needless (0: off). Audited requests are served best effort; a late one still gets 504"
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1024**3, description="largest request body (413 beyond)")
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=1024**2, description="largest total size of request headers (431 beyond)"
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=3600, description="a connection whose request headers are not complete within this time "
        "(of connecting, or of its previous response) gets 408 and is closed"
    )
    body_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="a request body not received within this time gets 408"
    )
    event_loop: Literal["auto", "asyncio", "uvloop"] = Field(
        "auto", description="uvicorn event loop (auto: uvloop when installed)"
    )
    http_parser: Literal["auto", "httptools", "h11"] = Field("auto", description="uvicorn HTTP parser")
    max_images_per_request: int = Field(
        16, ge=1, le=1024, description="images one /v1/classify request may carry (413 beyond)"
    )
    max_image_pixels: int = Field(
        16_777_216, ge=1, le=178_956_970, description="largest decoded image (width x height)"
    )
    max_request_pixels: int = Field(
        16_777_216, ge=1, le=1_000_000_000,
        description="most pixels one /v1/classify request may decode, all its images together (413 beyond)",
    )
    max_decoding_pixels: int = Field(
        67_108_864, ge=1, le=10_000_000_000,
        description="most pixels being decoded at once across requests (about 3 bytes each); a request that "
        "would go over gets 503 before any pixel is decoded",
    )
    jpeg_draft: bool = Field(
        False, description="decode large JPEGs at a reduced scale, never below the input size (2-3x less CPU for "
        "photos; pixels differ slightly from a full decode)"
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="intra-op threads (default: ONNX Runtime all usable CPUs but one; torch its own choice, at most "
        "the usable CPUs; usable = the affinity mask capped by the container's CPU quota)",
    )
    profile_repeats: int = Field(
        15, ge=3, le=10_000, description="timed runs per (width, batch) when profiling at startup"
    )
    reserve_ms: float | None = Field(
        None,
        ge=0,
        le=60_000,
        description="budget kept for HTTP and the reply (default: learnt, 1 ms + the handler's own time)",
    )
    latency_margin: float = Field(
        0.1, ge=0, le=2, description="policies plan for batches this much slower than the profile (0.1 = 10%)"
    )
    profile_ewma_alpha: float = Field(
        0.1, ge=0, le=1, description="weight of each observed batch time in the online profile update (0: never update)"
    )
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After seconds on 503")
    keep_warm_ms: float = Field(
        50.0, ge=0, le=60_000, description="when idle this long, run one sample through the next width (round "
        "robin) so the first request after a quiet spell is not served from cold caches; at most 5% of one core "
        "(0: off)"
    )
    batch_timeout_s: float = Field(30.0, gt=0, le=3600, description="a batch running longer fails its requests (500)")
    worker_nice: int = Field(
        5, ge=0, le=19, description="on a CPU whose cores the model takes all of, run the inference thread this much "
        "nicer (Linux) than the HTTP event loop, so reading requests and sending answers never waits for a batch "
        "(0: off)"
    )
    api_token: str | None = Field(
        None, description="bearer token required by inference and model endpoints", repr=False
    )
    auth_metrics: bool = Field(False, description="also require the token on /metrics")
    cors_origins: str | None = Field(None, description="comma-separated allowed CORS origins (default: CORS off)")
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per line")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")

    def runtime_config(self) -> RuntimeConfig:
        """How the model runs (serve's engine and `widthwise profile` build runtimes from it)."""
        return RuntimeConfig(device=self.device, backend=self.backend, threads=self.threads, precision=self.precision,
                             cuda_graphs=self.cuda_graphs, weights=self.weights)

    def scheduler_config(self) -> SchedulerConfig:
        """The scheduler's part of these settings (serve and simulate build it the same way)."""
        return SchedulerConfig(
            max_batch_size=self.max_batch_size, max_queue_delay_s=self.max_queue_delay_ms / 1e3,
            queue_limit=self.queue_limit, admission=self.admission, margin=self.latency_margin,
            audit_share=self.admission_audit,
        )

    @field_validator("api_token")
    @classmethod
    def _token_not_blank(cls, value: str | None) -> str | None:
        # An empty token (say, an unset shell variable) must not silently turn authentication off.
        if value is not None and (not value.strip() or any(c.isspace() for c in value)):
            raise ValueError("the API token is empty or contains white space; set a real token, or unset "
                             "WIDTHWISE_API_TOKEN / drop --api-token to run without authentication")
        return value

    @field_validator("widths")
    @classmethod
    def _widths_parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_widths(value)  # raises with the reason
        return value

    @field_validator("weights")
    @classmethod
    def _shared_weights_need_torch(cls, value: str, info: ValidationInfo) -> str:
        # known from the flags alone: refuse before listening (exit 2), not at start-up (exit 3)
        if value == "shared" and info.data.get("backend") == "onnxruntime":
            raise ValueError("shared weights run on the torch backend; use --backend torch (or auto)")
        return value

    def connection_caps(self) -> tuple[int, int]:
        """``--max-connections`` split into (HTTP's, gRPC's); gRPC's is 0 without ``--grpc-port``."""
        grpc_share = self.max_connections // 4 if self.grpc_port else 0
        return self.max_connections - grpc_share, grpc_share

    def served_widths(self) -> tuple[float, ...] | None:
        return parse_widths(self.widths) if self.widths is not None else None

    @field_validator("policy")
    @classmethod
    def _policy_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("policy must not be empty")
        return value.strip()


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# The settings `simulate` shares with `serve`: same flags, variables and defaults, so a simulation
# runs the scheduler and policy exactly as configured for the server.
SCHEDULING_FIELDS = ("policy", "max_batch_size", "max_queue_delay_ms", "queue_limit", "admission", "latency_margin",
                     "profile_ewma_alpha")


def add_serve_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """One flag per settings field (or per field in ``names``); unset flags stay ``None`` so env and
    defaults apply."""
    for name, field in Settings.model_fields.items():
        if names is not None and name not in names:
            continue
        annotation = field.annotation
        choices = None
        kind: type = str
        default = repr(field.default)
        if annotation is bool:  # a switch: written on/off as before (also true/false, yes/no, 1/0)
            kind, choices, default = _on_off, [True, False], "on" if field.default else "off"
        elif get_origin(annotation) is Literal:
            choices = list(get_args(annotation))
        else:
            args = [a for a in get_args(annotation) if a is not type(None)] or [annotation]
            if args[0] in (int, float):
                kind = args[0]
        env = f"WIDTHWISE_{name.upper()}"
        help_text = f"{field.description or name} (env {env}; default {default})".replace("%", "%%")
        parser.add_argument(_flag(name), dest=name, type=kind, choices=choices, default=None, help=help_text,
                            metavar="{on,off}" if annotation is bool else None)


_SWITCH = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def _on_off(value: str) -> bool:
    try:
        return _SWITCH[value.strip().lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}") from None


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings from parsed ``serve`` flags over the environment.

    Raises:
        ValueError: one line per invalid setting, naming the flag and its variable.
    """
    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """``--max-batch-size (WIDTHWISE_MAX_BATCH_SIZE): Input should be ... (got 0)``, one per problem."""
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        where = f"{_flag(name)} ({'WIDTHWISE_' + name.upper()})" if name else "settings"
        message = error["msg"].removeprefix("Value error, ")
        got = f" (got {error['input']!r})" if name and name != "api_token" and "input" in error else ""
        problems.append(f"{where}: {message}{got}")
    return "; ".join(problems)
