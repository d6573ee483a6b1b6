"""How a Ray job is laid out (cluster, replicas, resources per replica), and the command-line flags
that set it, shared by ``aligner-chain correct`` and ``aligner-chain bootstrap``. Light: Ray itself
is only imported by :mod:`aligner_chain.offline.ray_data`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

__all__ = ["RAY_EXTRA_HINT", "RayOptions", "add_ray_arguments", "ray_options_from_args", "replica_options"]

_REPLICA_OPTIONS = (
    "model",
    "adapter",
    "template",
    "max_new_tokens",
    "base_url",
    "api_key",
    "timeout",
    "max_retries",
    "device",
    "dtype",
    "trust_remote_code",
    "revision",
    "generation_kwargs",
)

RAY_EXTRA_HINT = 'the Ray engine needs Ray Data: pip install "aligner-chain[ray]"'


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray correction job runs.

    Args:
        address: an existing cluster (``"auto"``, ``"HOST:PORT"``); ``None`` uses the Ray instance
            this process already runs, else starts a local one (or connects to ``$RAY_ADDRESS``).
        replicas: Aligner replicas, one per Ray actor; throughput is about replicas x the rows/s
            of one replica.
        gpus_per_replica: GPUs each replica reserves (its model loads on one; 0: CPU).
        cpus_per_replica: CPUs each replica reserves (default 1). On a cluster of C CPUs keep
            ``replicas * cpus_per_replica <= C - 1``: reading the input needs a CPU too.
        batch_size: rows per call of a replica (one batched ``generate``, or that many requests in
            flight to a server).
    """

    address: str | None = None
    replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.gpus_per_replica < 0:
            raise ValueError(f"gpus_per_replica must be >= 0, got {self.gpus_per_replica}")
        if self.cpus_per_replica is not None and self.cpus_per_replica <= 0:
            raise ValueError(f"cpus_per_replica must be > 0, got {self.cpus_per_replica}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    @property
    def cpus(self) -> float:
        """CPUs each replica reserves."""
        return 1.0 if self.cpus_per_replica is None else self.cpus_per_replica


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_ray_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, what: str) -> None:
    """Register ``--engine``, ``--ray-address``, ``--replicas``, ``--gpus-per-replica`` and
    ``--cpus-per-replica``; ``what`` names the step the engine runs (for the help)."""
    parser.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help=f"where {what} runs: in this process (local, default) or on Ray Data (ray: one Aligner "
        'replica per Ray actor; needs pip install "aligner-chain[ray]")',
    )
    parser.add_argument(
        "--ray-address",
        help="with --engine ray: the cluster to use (auto, HOST:PORT); default: $RAY_ADDRESS, else a "
        "local Ray instance started for the run",
    )
    parser.add_argument(
        "--replicas", type=_positive_int, default=1, help="with --engine ray: Aligner replicas (default 1)"
    )
    parser.add_argument(
        "--gpus-per-replica",
        type=_non_negative_float,
        default=0.0,
        help="with --engine ray: GPUs each replica reserves (default 0: CPU)",
    )
    parser.add_argument(
        "--cpus-per-replica",
        type=_positive_float,
        default=None,
        help="with --engine ray: CPUs each replica reserves (default 1); leave one CPU for reading",
    )


def ray_options_from_args(args: argparse.Namespace, *, batch_size: int | None) -> RayOptions | None:
    """The :class:`RayOptions` the flags ask for, or ``None`` with ``--engine local``
    (``batch_size``: ``None`` keeps :class:`RayOptions`' default).

    Raises:
        ValueError: a Ray flag given without ``--engine ray``.
    """
    if args.engine != "ray":
        given = [
            flag
            for flag, value, default in (
                ("--ray-address", args.ray_address, None),
                ("--replicas", args.replicas, 1),
                ("--gpus-per-replica", args.gpus_per_replica, 0.0),
                ("--cpus-per-replica", args.cpus_per_replica, None),
            )
            if value != default
        ]
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --engine ray")
        return None
    return RayOptions(
        address=args.ray_address,
        replicas=args.replicas,
        gpus_per_replica=args.gpus_per_replica,
        cpus_per_replica=args.cpus_per_replica,
        **({} if batch_size is None else {"batch_size": batch_size}),
    )


def replica_options(aligner: Any) -> dict[str, Any]:
    """The backend options a Ray replica builds ``aligner`` from (an ``AlignerRunnable``'s or
    ``ChatAligner``'s model options).

    Raises:
        TypeError: an aligner without model options (a ready backend or another runnable): a Ray
            replica builds its own Aligner and cannot be handed one.
    """
    from aligner_chain.options import AlignerOptions

    if not isinstance(aligner, AlignerOptions) or aligner.backend is not None:
        raise TypeError(
            "the Ray engine builds the Aligner in each replica from its model options: pass a model path "
            "or an AlignerRunnable(model=..., base_url=...), not a ready backend or another runnable"
        )
    return {name: getattr(aligner, name) for name in _REPLICA_OPTIONS}
