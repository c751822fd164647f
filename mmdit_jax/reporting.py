"""What commands report: TensorBoard scalars and images (tensorboardX), a JSON-lines metrics log, progress lines
with ETA, and the machine description every RESULTS.md records."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any, Callable

import numpy as np


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            self._tb.add_scalar(k, v, step)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """``image``: (H, W, 3) uint8."""
        if self.enabled:
            self._tb.add_image(name, image, step, dataformats="HWC")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def quiet_library_logs() -> None:
    """Keep absl logging at WARNING unless ``--verbosity`` was given: Orbax and TFDS log every file operation at INFO.

    Call from a command's ``main`` (after absl parsed the flags).
    """
    from absl import flags, logging

    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)


def report(message: str) -> None:
    """A line on stdout from process 0 (library logs stay at WARNING unless --verbosity is raised)."""
    import jax

    if jax.process_index() == 0:
        print(message, flush=True)


class Progress:
    """``step/total  loss  examples/s  ETA`` lines."""

    def __init__(self, total: int, start_step: int, batch_size: int):
        self.total, self.start_step, self.batch = total, start_step, batch_size
        self.t0 = time.time()
        self.last_t, self.last_step = self.t0, start_step

    def update(self, step: int, loss: float) -> float:
        now = time.time()
        rate = (step - self.last_step) * self.batch / max(now - self.last_t, 1e-9)
        done = step - self.start_step
        eta = (now - self.t0) / max(done, 1) * (self.total - step)
        width = 30
        bar = "#" * int(width * step / self.total)
        report(f"[{bar[:width]:<30s}] {step}/{self.total}  loss {loss:.4f}  {rate:.1f} examples/s  "
               f"ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}")
        self.last_t, self.last_step = now, step
        return rate


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def machine(extra: str = "") -> str:
    """One line naming the machine a result was measured on: CPU, cores, JAX version and the device."""
    import jax

    dev = jax.devices()[0]
    line = (f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPU cores, JAX {jax.__version__}, "
            f"device {dev.platform} ({getattr(dev, 'device_kind', '?')})")
    return f"{line}; {extra}" if extra else line


EXIT_USAGE = 2      # the exit status of an input error (a bad flag, config value or missing checkpoint)


def exit_on_input_error(run: Callable[[], Any], errors: tuple[type[BaseException], ...]) -> Any:
    """Run a command; an error of ``errors`` (the user's input) becomes one line ``error: ...`` on stderr and exit
    status 2 instead of a traceback (which ``--verbosity=1`` shows). Nothing else is printed: the command checks its
    input before it creates anything."""
    from absl import flags

    try:
        return run()
    except errors as e:
        if flags.FLAGS.is_parsed() and flags.FLAGS["verbosity"].present and flags.FLAGS.verbosity >= 1:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def one_line(error: BaseException) -> str:
    """An error's message on one line (a message listing several causes joins them with '; ')."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__


def write_png(path: str, image: Any, metadata: dict[str, str]) -> None:
    """An ``(H, W, 3)`` uint8 image as a PNG, atomically (temporary file, then rename), with ``metadata`` as PNG
    text chunks."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in metadata.items():
        info.add_text(key, value)
    tmp = f"{path}.{os.getpid()}.tmp"
    Image.fromarray(image).save(tmp, format="PNG", pnginfo=info)
    os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: a reader (or a crash)
    never sees half a file."""
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
