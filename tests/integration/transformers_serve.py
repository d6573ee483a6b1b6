"""``transformers serve`` (transformers' own OpenAI-compatible server) on a local model, for tests.

The server is started on 127.0.0.1 with ``--port 0`` (uvicorn binds a free port and logs it, so no
port can be taken in between), in its own process group, offline, on the CPU. It is ready at the
first 200 from ``GET /health`` (a model named on the command line is loaded before uvicorn listens).
A server that exits or does not get ready in time fails at once with the tail of its log; stopping
sends SIGTERM and kills the whole process group if it does not exit in time.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["CONTINUOUS_BATCHING", "TransformersServe"]

CONTINUOUS_BATCHING = ("--continuous-batching", "--cb-num-blocks", "64", "--cb-max-batch-tokens", "256")
"""Continuous batching with a cache small enough to start in seconds on a CPU."""

_LISTENING = re.compile(r"Uvicorn running on http://[^:\s]+:(\d+)")


class TransformersServe:
    """Run ``transformers serve MODEL_DIR`` until :meth:`stop` (or the end of a ``with`` block).

    Args:
        model_dir: the model directory; the server is pinned to it and serves it under its path.
        log_path: where the server's stdout and stderr go.
        extra_args: more ``transformers serve`` flags (e.g. :data:`CONTINUOUS_BATCHING`).
        startup_timeout: seconds to wait for ``/health``.
    """

    def __init__(
        self,
        model_dir: str | Path,
        log_path: str | Path,
        *extra_args: str,
        startup_timeout: float = 240.0,
    ) -> None:
        self.model = str(Path(model_dir).resolve())
        self.log_path = Path(log_path)
        self.extra_args = extra_args
        self.startup_timeout = startup_timeout
        self.startup_seconds: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def base_url(self) -> str:
        """The API root, ``http://127.0.0.1:PORT/v1``."""
        if self._port is None:
            raise RuntimeError("the server is not running")
        return f"http://127.0.0.1:{self._port}/v1"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def start(self) -> TransformersServe:
        command = [
            *(sys.executable, "-m", "transformers.cli.transformers", "serve", self.model),
            *("--host", "127.0.0.1", "--port", "0", "--device", "cpu", "--dtype", "float32"),
            *("--log-level", "warning", *self.extra_args),
        ]
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": "1",  # a tiny model on a shared 2-core machine: one thread is fastest
        }
        started = time.perf_counter()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        try:
            self._wait_until_ready(started + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - started
        return self

    def _wait_until_ready(self, deadline: float) -> None:
        assert self._process is not None
        while time.perf_counter() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"transformers serve exited with status {self._process.returncode}:\n{self.log_tail()}"
                )
            if self._port is None:
                found = _LISTENING.search(self.log_tail(1_000_000))
                self._port = int(found.group(1)) if found else None
            if self._port is not None:
                try:
                    if httpx.get(f"http://127.0.0.1:{self._port}/health", timeout=2).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        raise TimeoutError(
            f"transformers serve was not ready in {self.startup_timeout} s:\n{self.log_tail()}"
        )

    def stop(self, grace: float = 20.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(grace)
        # The model runs in a child process of the server: make sure the whole group is gone.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def __enter__(self) -> TransformersServe:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
