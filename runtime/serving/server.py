"""A real Triton Inference Server process: PyPI's ``nvidia-pytriton`` wheel ships the ``tritonserver``
binary (2.51) and its python backend; segrt runs that binary directly with its own model repository.

:class:`TritonServer` makes a private workspace (the python backend with the stub for this
interpreter, the log, the model repository), starts the server bound to one host, waits for
``GET /v2/health/ready``, and on :meth:`stop` sends SIGTERM (a backgrounded server ignores SIGINT),
kills whatever of its process group is left after a grace period and removes the workspace and the
backend's shared-memory regions, so nothing outlives it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import BackendUnavailableError, InvalidInputError

#: How long ``wait_ready`` waits for the models to load by default (seconds).
READY_TIMEOUT = 120.0
STOP_GRACE = 15.0
#: Triton waits this long for in-flight requests (and open client connections) after SIGTERM.
EXIT_TIMEOUT = 5


def triton_dist() -> Path:
    """The folder of the ``tritonserver`` distribution inside the ``nvidia-pytriton`` wheel."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError("segrt serve needs the tritonserver binary from nvidia-pytriton: "
                                      "pip install --no-deps nvidia-pytriton==0.7.0 (see docs/serving.md)")
    dist = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise BackendUnavailableError(f"no tritonserver binary under {dist}; reinstall nvidia-pytriton")
    return dist


def _stub(dist: Path) -> Path:
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise BackendUnavailableError(f"nvidia-pytriton has no python backend stub for Python {version}")
    return stub


def check_port(value: int, what: str) -> int:
    if not 1 <= value <= 65535:
        raise InvalidInputError(f"{what} must be a TCP port in 1-65535; got {value}")
    return value


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens. Ports must differ; ``host`` is the only address bound."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001

    def __post_init__(self) -> None:
        check_port(self.http_port, "--http-port")
        check_port(self.grpc_port, "--grpc-port")
        if self.http_port == self.grpc_port:
            raise InvalidInputError(f"--http-port and --grpc-port must differ; both are {self.http_port}")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.grpc_port}"


def python_env(dist: Path) -> dict[str, str]:
    """The stub embeds libpython: point it at this interpreter's (LIBDIR) and the wheel's bundled
    libraries, and put this interpreter's bin/ first on PATH so the embedded Python finds this
    environment's site-packages (and segrt)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    wheel_libs = str(dist.parent.parent / "nvidia_pytriton.libs")
    libs = [p for p in (libdir, wheel_libs, env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = ":".join(libs)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.pop("PYTHONHOME", None)
    return env


class TritonServer:
    """``with TritonServer(repository, ServerConfig(...)) as server:`` starts, waits ready, stops."""

    def __init__(self, repository: Path | Callable[[Path], object], config: ServerConfig = ServerConfig(), *,
                 log_verbose: int = 0) -> None:
        """``repository``: a model repository, or a function that writes one into the folder it is given
        (inside the workspace, removed with it)."""
        self._writer = None if isinstance(repository, (str, Path)) else repository
        self.repository = Path(repository) if self._writer is None else Path()
        self.config = config
        self.log_verbose = log_verbose
        self.process: subprocess.Popen | None = None
        self.workspace: Path | None = None

    # -- start ---------------------------------------------------------------------------------
    def _prepare(self) -> Path:
        dist = triton_dist()
        stub = _stub(dist)
        ws = self.workspace = Path(tempfile.mkdtemp(prefix="segrt-triton-"))  # removed by _cleanup, whatever fails
        try:
            backend = ws / "backends" / "python"
            backend.mkdir(parents=True)
            for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
                shutil.copy2(dist / "backends" / "python" / name, backend / name)
            shutil.copy2(stub, backend / "triton_python_backend_stub")
            if self._writer is not None:
                self.repository = ws / "models"
                self._writer(self.repository)
        except OSError as exc:  # a broken nvidia-pytriton install, or no room in the temp folder
            self._cleanup()
            raise BackendUnavailableError(f"cannot prepare tritonserver's workspace: {exc}") from None
        except BaseException:
            self._cleanup()
            raise
        return dist

    @property
    def shm_prefix(self) -> str:
        return f"segrt{os.getpid()}_{id(self) % 100000}_"

    def command(self, dist: Path) -> list[str]:
        c, ws = self.config, self.workspace
        assert ws is not None  # set by _prepare, which start() calls first
        return [str(dist / "bin" / "tritonserver"), f"--model-repository={self.repository}",
                f"--backend-directory={ws / 'backends'}", f"--cache-directory={ws / 'caches'}",
                f"--http-address={c.host}", f"--http-port={c.http_port}",
                f"--grpc-address={c.host}", f"--grpc-port={c.grpc_port}",
                "--allow-metrics=false", "--allow-gpu-metrics=false", "--allow-cpu-metrics=false",
                "--strict-readiness=true", "--exit-on-error=true", f"--exit-timeout-secs={EXIT_TIMEOUT}", "--disable-auto-complete-config",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
                f"--log-verbose={self.log_verbose}"]

    def start(self) -> "TritonServer":
        dist = self._prepare()
        try:
            log = open(self.log_path, "wb")  # noqa: SIM115 (the child owns it; closed below)
        except OSError as exc:
            self._cleanup()
            raise BackendUnavailableError(f"cannot write tritonserver's log: {exc}") from None
        try:
            self.process = subprocess.Popen(self.command(dist), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=python_env(dist), cwd=self.workspace,
                                            start_new_session=True)
        except OSError as exc:
            self._cleanup()
            raise BackendUnavailableError(f"cannot start tritonserver: {exc.strerror}") from None
        finally:
            log.close()
        return self

    @property
    def log_path(self) -> Path:
        assert self.workspace is not None
        return self.workspace / "tritonserver.log"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return ""

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.config.url}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT, stop: threading.Event | None = None) -> bool:
        """Block until the server is ready (True), or ``stop`` is set while the models load (False: the server is
        stopped). A server that exits or is not ready in time is stopped and a BackendUnavailableError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                tail = self.log_tail().replace("\n", " | ")
                self.stop()
                raise BackendUnavailableError(f"tritonserver exited before it was ready: {tail[-600:]}")
            if self.is_ready():
                return True
            if stop is not None and stop.wait(0.2):
                self.stop()
                return False
            time.sleep(0 if stop is not None else 0.2)
        tail = self.log_tail().replace("\n", " | ")
        self.stop()
        raise BackendUnavailableError(f"tritonserver was not ready within {timeout:.0f} s: {tail[-600:]}")

    # -- stop ----------------------------------------------------------------------------------
    def stop(self, grace: float = STOP_GRACE) -> int | None:
        """SIGTERM, wait ``grace`` seconds, then SIGKILL the process group; remove the workspace."""
        code = None
        if self.process is not None:
            pgid = self.process.pid  # start_new_session: the server leads its own group
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    code = self.process.wait(grace)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    code = self.process.wait()
            else:
                code = self.process.returncode
            self._kill_group(pgid)
            self.process = None
        self._cleanup()
        return code

    @staticmethod
    def _kill_group(pgid: int, wait: float = 5.0) -> None:
        """Stubs left behind by a killed server (their watchdog ends them too, but later): kill the
        group and wait until it is gone (orphans are reaped by init)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                return
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def _cleanup(self) -> None:
        for region in Path("/dev/shm").glob(f"{self.shm_prefix}*"):
            region.unlink(missing_ok=True)
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = None

    def __enter__(self) -> "TritonServer":
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
