"""Serving options: how Triton schedules, places, versions, warms up and caches a model."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from builder.spec._base import Strict

__all__ = [
    "CpuOptions",
    "DynamicBatching",
    "GpuOptions",
    "InstanceGroup",
    "QueuePolicy",
    "RateLimiter",
    "RateLimiterResource",
    "SequenceBatching",
    "VersionPolicy",
    "Warmup",
]

NonNegative = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]


class QueuePolicy(Strict):
    """What happens to queued requests: how long they may wait and how many may wait.

    Bounded by default, so overload is answered at once (UNAVAILABLE, "exceeds maximum queue
    size") instead of growing the queue, its latency and the server's memory without limit, and
    a request its client has given up on does not run 10 s later. 0 means unbounded."""

    timeout_action: Literal["REJECT", "DELAY"] = "REJECT"
    """What happens to a request that waited past its timeout: `REJECT` it or `DELAY` it."""
    default_timeout_microseconds: NonNegative = 10_000_000
    """How long a request may wait in the queue; 0: unbounded."""
    allow_timeout_override: bool = True
    """Whether a request's own timeout may override the default."""
    max_queue_size: NonNegative = 256
    """How many requests may wait; 0: unbounded."""


class DynamicBatching(Strict):
    """Triton's dynamic batcher: requests are queued up to the delay and executed together."""

    max_queue_delay_microseconds: NonNegative = 0
    """How long the batcher may hold a request to form a larger batch."""
    preferred_batch_size: tuple[Positive, ...] = ()
    """Batch sizes the batcher aims for, each at most `max_batch_size`."""
    preserve_ordering: bool = False
    """Return responses in the order the requests arrived."""
    priority_levels: NonNegative = 0
    """The number of priority levels; 0: none."""
    default_priority_level: NonNegative = 0
    """The level of a request that names none, between 1 and `priority_levels`."""
    default_queue_policy: QueuePolicy | None = Field(default_factory=QueuePolicy)
    """The bounded default above; `null` leaves the queue unbounded, as Triton does."""
    priority_queue_policy: dict[Positive, QueuePolicy] = Field(default_factory=dict)
    """A queue policy per priority level."""


class SequenceBatching(Strict):
    """The sequence batcher for stateful models: requests of one sequence go to one instance.

    The control tensors (TYPE_INT32 0/1 flags, TYPE_UINT64 correlation id) are named here and
    must not be declared as inputs; the model receives them as inputs of those names.
    """

    max_sequence_idle_microseconds: Positive = 1_000_000
    """How long a sequence may stay idle before Triton ends it."""
    start: str | None = None
    """Name of the control tensor that flags a sequence's first request."""
    end: str | None = None
    """Name of the control tensor that flags a sequence's last request."""
    ready: str | None = None
    """Name of the control tensor that flags a slot holding a request."""
    correlation_id: str | None = None
    """Name of the tensor that carries the sequence's correlation id."""
    strategy: Literal["direct", "oldest"] = "direct"
    """`direct`: a sequence keeps its batch slot; `oldest`: the oldest sequences are batched together."""
    max_queue_delay_microseconds: NonNegative = 0
    """(`oldest`) how long to wait to form a larger batch."""
    max_candidate_sequences: Positive = 1
    """(`oldest`) how many sequences may be candidates at once."""
    preferred_batch_size: tuple[Positive, ...] = ()
    """(`oldest`) batch sizes to aim for, each at most `max_batch_size`."""


class RateLimiterResource(Strict):
    """A resource an instance needs from the rate limiter before it may execute."""

    name: str
    """The resource's name."""
    count: Positive = 1
    """How many units of it one execution needs."""
    shared: bool = Field(default=False, description="rendered as `global`: shared by all devices")


class RateLimiter(Strict):
    """Rate-limiter settings of an instance group (effective with `--rate-limit=execution_count`)."""

    resources: tuple[RateLimiterResource, ...] = ()
    """The resources an execution needs."""
    priority: NonNegative = 0
    """The instances' weight when the rate limiter picks among them."""


class InstanceGroup(Strict):
    """How many copies of the model run, and where. Without `kind`, the build target decides:
    KIND_GPU for `gpu`, KIND_CPU for `cpu` (Python models run on the CPU on both, but for a
    `gpu` class on the `gpu` target)."""

    kind: Literal["KIND_CPU", "KIND_GPU", "KIND_AUTO"] | None = None
    """Where the instances run; default: from the build target."""
    count: Positive = 1
    """Instances per device (on the `cpu` target, in all)."""
    gpu_count: Positive | None = Field(
        default=None,
        description="count on the gpu target (default: count). Several instances per GPU overlap one "
        "execution's host work with another's kernels (bench/gpu.py measures 1, 2 and 4)",
    )
    gpus: tuple[NonNegative, ...] = ()
    """GPU ids the instances run on; not with `KIND_CPU`."""
    rate_limiter: RateLimiter | None = None
    """Rate-limiter resources and priority of the instances."""


class VersionPolicy(Strict):
    """Which versions are served: the newest `latest`, `all`, or the `specific` ones."""

    latest: Positive | None = None
    """Serve the newest N versions."""
    all: bool = False
    """Serve every version."""
    specific: tuple[Positive, ...] = ()
    """Serve these versions."""


class Warmup(Strict):
    """model_warmup generated from the input specs (random data at each input's typical shape).

    `when` picks the targets that get it: warmup makes the first request fast at the cost of a
    slower load, which matters most on GPUs (and with TensorRT engines). Every batch size is
    warmed by default, so no size formed under load pays a first call's set-up (on GPUs, see
    `gpu.pad_batch`).
    """

    when: Literal["gpu", "always", "never"] = "gpu"
    """The targets that get warmup: `gpu` only, `always` or `never`."""
    batch_sizes: tuple[Positive, ...] = Field(
        default=(), description="default: every size from 1 to max_batch_size, as the dynamic batcher forms them"
    )
    count: Positive = 1
    """How many times each warmup request runs."""


class GpuOptions(Strict):
    """ONNX Runtime execution accelerators, rendered for the `gpu` target only.

    `tensorrt` puts ORT's TensorRT provider in front of the CUDA provider (the precision, workspace
    and engine cache below are its options); only a backend built with TensorRT loads it (NGC's
    image), and the embedded server's has none; `cuda` holds CUDA provider options, rendered as the
    `cuda` accelerator's parameters (for instance `cudnn_conv_algo_search: HEURISTIC`). TF32 is
    off unless `cuda: {use_tf32: 1}` asks for it: it is a reduced precision, like FP16.
    """

    accelerator: Literal["none", "cuda", "tensorrt"] = "none"
    """ONNX Runtime's accelerator on the `gpu` target: none, the CUDA provider's options, or its TensorRT provider."""
    precision_mode: Literal["FP32", "FP16", "INT8"] = "FP16"
    """The TensorRT provider's precision."""
    max_workspace_size_bytes: Positive = 1 << 30
    """The TensorRT provider's workspace."""
    engine_cache_path: str | None = None
    """Where the TensorRT provider caches its engines; default: no cache."""
    cuda: dict[str, str | int | bool] = Field(default_factory=dict)
    """CUDA provider options, e.g. `use_tf32` (default 0) or `cudnn_conv_algo_search`."""
    pad_batch: bool | Literal["auto"] = Field(
        default="auto",
        description="on the gpu target, the exported graph pads every batch to max_batch_size with zero rows "
        "and returns the request's rows (builder/export/padding.py), so ONNX Runtime's CUDA convolutions meet one "
        "input shape: they plan again at every change of shape (measured on the H200: 55-406 ms per execution "
        "while the batcher formed varied sizes, ~1.5 ms padded). In the model file, so the embedded server "
        "and NGC's container run the same. 'auto' pads graphs with convolutions",
    )


class CpuOptions(Strict):
    """ONNX Runtime thread counts, rendered as backend parameters on both targets: on a GPU host
    they bound the CPU threads each instance spins (ONNX Runtime's default is one per core)."""

    intra_op_thread_count: NonNegative | None = None
    """ONNX Runtime's threads within an operator, per instance; default: ONNX Runtime's (one per core)."""
    inter_op_thread_count: NonNegative | None = None
    """ONNX Runtime's threads across operators, per instance."""
