"""Run output files: metrics.jsonl, samples.jsonl, TensorBoard, optional wandb / trackio (console: rlkit.console).

Everything a run writes for humans lives in its run directory::

    run_dir/
      metrics.jsonl     one JSON object per ``MetricsLogger.log`` call: {"step", "time", **metrics}
      samples.jsonl     one JSON object per logged sample: {"step", **row} (prompt, completion, reward, ...)
      tensorboard/      TensorBoard event files (scalars only)
      plots/            PNG curves written by ``rlkit plot`` (see ``rlkit.plot``)
      run.log           every log record of the run (``rlkit.run_logging``)

Hosted trackers (optional packages, imported only when their section is set): ``logging.wandb`` (keyword
arguments of ``wandb.init``, ``dir`` defaulting to the run directory) and ``logging.trackio`` (keyword arguments of
``trackio.init``, the wandb-compatible local tracker; ``project`` defaults to "rlkit" and ``name`` to the run
directory's name; its database lives in ``$TRACKIO_DIR``, default ``$HF_HOME/trackio``; view it with
``trackio show``). Both receive the numeric metrics of every ``log`` call.

File format. Every line is strict JSON (RFC 8259), so ``json.loads``, ``jq`` and pandas all read it.
Non-finite numbers (NaN, +inf, -inf) have no JSON spelling: they are written as ``null`` and
``read_metrics`` gives them back as ``float("nan")`` (the sign of an infinity is lost; TensorBoard and wandb
receive the exact value). Integers stay integers, everything numeric else becomes a Python float
(0-d / one-element tensors and numpy scalars included). Each line is flushed as soon as it is written, so a
crash loses at most the line being written; that partial line is tolerated by ``read_metrics`` and dropped
when a resumed run reopens the file.

Metric names are written exactly as given: the trainer prefixes them by kind (``advantage/``, ``loss/``,
``sampler/``, ``rollout/``, ``reward/``, ``time/``, ``eval/``), and this module renames nothing.

Only the main process writes: build ``MetricsLogger(..., enabled=False)`` on the other ranks and every method
becomes a no-op.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
import os
import time
import warnings
from pathlib import Path
from typing import IO, Any, Mapping, Sequence


METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
TENSORBOARD_DIR = "tensorboard"
RESERVED_KEYS = ("step", "time")



# --------------------------------------------------------------------------------------------------------------
# value conversion
# --------------------------------------------------------------------------------------------------------------


def as_scalar(value: Any) -> Any:
    """Unwrap 0-d/one-element tensors and numpy scalars/arrays into Python numbers; other values unchanged."""
    if hasattr(value, "numel") and hasattr(value, "item"):  # torch.Tensor, without importing torch here
        if value.numel() != 1:
            raise ValueError(f"tensor with shape {tuple(value.shape)}")
        return value.item()
    if hasattr(value, "item") and getattr(value, "size", None) == 1:  # numpy scalar or one-element array
        return value.item()
    return value


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def metric_value(key: str, value: Any) -> int | float | str | None:
    """Convert one metric to its JSON form: int, float (None when non-finite), str, or None.

    Raises ``TypeError`` naming the key when the value is not a scalar (a list, a multi-element tensor, ...).
    """
    try:
        value = as_scalar(value)
    except ValueError as err:
        raise TypeError(
            f"metric {key!r} is a {err}; log a scalar instead (e.g. `.mean().item()`)"
        ) from None
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return _finite_or_none(float(value))
    raise TypeError(
        f"metric {key!r} has type {type(value).__name__} ({value!r:.60}); log a number "
        "(float, int, 0-d tensor, numpy scalar), a string or None"
    )


def jsonable(value: Any) -> Any:
    """Best-effort conversion of a sample field to strict JSON (never raises).

    Tensors and arrays become (nested) lists, non-finite floats become None, unknown objects become ``str``.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return _finite_or_none(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):  # tensors, numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, numbers.Real):
        return _finite_or_none(float(value))
    return str(value)


def _numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics as floats, non-finite values kept (strings and None left out)."""
    out = {}
    for key, value in metrics.items():
        value = as_scalar(value)
        if isinstance(value, numbers.Real):
            out[str(key)] = float(value)
    return out


def _json_line(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n"


# --------------------------------------------------------------------------------------------------------------
# jsonl files
# --------------------------------------------------------------------------------------------------------------


def _drop_partial_last_line(path: Path) -> int:
    """Cut an unterminated last line (left by a crash mid-write) so appends start on a fresh line.

    Returns the number of bytes removed (0 when the file is absent, empty or ends with a newline).
    """
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        pos = size
        while pos > 0:  # scan backwards in chunks for the last newline
            start = max(0, pos - 65536)
            f.seek(start)
            chunk = f.read(pos - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            pos = start
        else:
            keep = 0
        f.truncate(keep)
        return size - keep


def _open_append(path: Path) -> IO[str]:
    dropped = _drop_partial_last_line(path)
    if dropped:
        warnings.warn(
            f"{path}: dropped a partial last line of {dropped} bytes (left by an interrupted run)",
            stacklevel=3,
        )
    return open(path, "a", encoding="utf-8")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines file written by this module, tolerating a truncated last line.

    A malformed line anywhere else raises ``ValueError`` with the file and line number.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):  # interrupted mid-write: the last line may be cut anywhere
                break
            raise ValueError(
                f"{path}:{number} is not valid JSON ({err.msg}); fix or delete that line"
            ) from None
    return rows


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Return the rows of ``run_dir/metrics.jsonl`` in file order, with ``null`` values as ``float('nan')``.

    A truncated last line (interrupted run) is skipped. Rows of a resumed run may repeat steps; consumers
    that need one value per step keep the last one (as ``rlkit.plot`` does).
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; is {str(run_dir)!r} an rlkit run directory "
            f"(the `output_dir` of a training run)?"
        )
    rows = read_jsonl(path)
    return [{k: (math.nan if v is None else v) for k, v in row.items()} for row in rows]


# --------------------------------------------------------------------------------------------------------------
# MetricsLogger
# --------------------------------------------------------------------------------------------------------------


#: tracker -> (pip install command, defaults for its init call given the run directory)
TRACKERS: dict[str, tuple[str, Any]] = {
    "wandb": ("pip install wandb (or pip install 'rlkit[wandb]')", lambda run_dir: {"dir": str(run_dir)}),
    "trackio": ("pip install 'rlkit[trackio]'",
                lambda run_dir: {"project": "rlkit", "name": Path(run_dir).resolve().name}),
}


def _import_tracker(name: str) -> Any:
    try:
        return importlib.import_module(name)  # optional dependency, imported only when configured
    except ImportError as err:
        raise ImportError(
            f"the recipe asks for {name} logging (a `logging.{name}` section), but the `{name}` package is not "
            f"installed; run `{TRACKERS[name][0]}`, or remove the `logging.{name}` section to log to metrics.jsonl "
            f"and TensorBoard only"
        ) from err


class MetricsLogger:
    """Append metrics to ``metrics.jsonl``, TensorBoard and (optionally) wandb / trackio; samples to ``samples.jsonl``.

    Args:
        run_dir: the run directory (created if missing).
        tensorboard: also write scalars to ``run_dir/tensorboard``.
        wandb: keyword arguments for ``wandb.init`` (``project``, ``name``, ``entity``, ``config``, ...);
            None disables wandb. ``dir`` defaults to ``run_dir``.
        trackio: keyword arguments for ``trackio.init`` (``project``, ``name``, ``config``, ``space_id``, ...);
            None disables trackio. ``project`` defaults to "rlkit", ``name`` to the run directory's name.
        enabled: False on non-main processes: nothing is created or written, every method is a no-op.

    Usable as a context manager; ``close()`` is idempotent.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        tensorboard: bool = True,
        wandb: Mapping[str, Any] | None = None,
        trackio: Mapping[str, Any] | None = None,
        enabled: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._metrics_file: IO[str] | None = None
        self._samples_file: IO[str] | None = None
        self._tb_writer: Any = None
        self._tracker_runs: list[Any] = []
        if not enabled:
            return
        wanted = {name: kwargs for name, kwargs in (("wandb", wandb), ("trackio", trackio)) if kwargs is not None}
        for name, kwargs in wanted.items():
            if not isinstance(kwargs, Mapping):
                raise TypeError(f"{name} must be a dict of {name}.init keyword arguments or None, "
                                f"got {type(kwargs).__name__}")
        modules = {name: _import_tracker(name) for name in wanted}  # fail before creating files
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics_file = _open_append(self.run_dir / METRICS_FILE)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - slow import, only when used

            self._tb_writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), flush_secs=30)
        for name, module in modules.items():
            self._tracker_runs.append(module.init(**{**TRACKERS[name][1](self.run_dir), **dict(wanted[name])}))

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / METRICS_FILE

    @property
    def samples_path(self) -> Path:
        return self.run_dir / SAMPLES_FILE

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Write one row ``{"step", "time", **metrics}``; metric names are kept exactly as given."""
        if not self.enabled:
            return
        if self._metrics_file is None:
            raise RuntimeError(f"MetricsLogger({str(self.run_dir)!r}) is closed; log before close()")
        clash = [k for k in RESERVED_KEYS if k in metrics]
        if clash:
            raise ValueError(f"metric names {clash} are reserved by metrics.jsonl; rename them")
        values = {str(k): metric_value(str(k), v) for k, v in metrics.items()}
        self._metrics_file.write(_json_line({"step": int(step), "time": time.time(), **values}))
        self._metrics_file.flush()
        numeric = _numeric(metrics)  # exact values (NaN/inf included) for TensorBoard, wandb and trackio
        if self._tb_writer is not None:
            for key, value in numeric.items():
                self._tb_writer.add_scalar(key, value, global_step=int(step))
        for run in self._tracker_runs:
            run.log(numeric, step=int(step))

    def log_samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append ``{"step": step, **row}`` per row to ``samples.jsonl`` (nothing when disabled). Showing them is the
        caller's (``rlkit.console.samples_table``): a file sink does not render."""
        if not self.enabled:
            return
        if self._samples_file is None:
            if self._metrics_file is None:
                raise RuntimeError(f"MetricsLogger({str(self.run_dir)!r}) is closed; log before close()")
            self._samples_file = _open_append(self.samples_path)
        for row in rows:
            fields = {k: v for k, v in jsonable(dict(row)).items() if k != "step"}
            self._samples_file.write(_json_line({"step": int(step), **fields}))
        self._samples_file.flush()

    def close(self) -> None:
        """Flush and close every sink (files, TensorBoard, tracker runs). Safe to call twice."""
        for attr in ("_metrics_file", "_samples_file"):
            handle = getattr(self, attr)
            if handle is not None:
                handle.close()
                setattr(self, attr, None)
        if self._tb_writer is not None:
            self._tb_writer.close()
            self._tb_writer = None
        runs, self._tracker_runs = self._tracker_runs, []
        for run in runs:
            run.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
