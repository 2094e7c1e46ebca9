"""LoRA policies on ``vllm_server``: the adapter through vLLM's runtime adapter loading, the base weights once.

Where every server allows it (``--enable-lora --max-lora-rank R`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``;
``rlkit rollout-server --lora-rank R`` adds both), a server gets

* the **base weights** (the policy with its adapter disabled) through the weight transfer once per connection:
  at connect, and again after a restart;
* at **every sync** only the adapter: saved in peft format to ``<adapter_dir>/v<version>``, loaded in place under
  one name per run (``rlkit-<run id>``, ``POST /v1/load_lora_adapter`` with ``load_inplace``) while the server is
  paused, then stamped with the version (``/update_weight_version``). Every generate and probe request names the
  adapter, so the canary checks the adapter actually served. A new directory per version: vLLM warns that an
  in-place reload from the same path may reuse prefix-cache blocks of the old weights (the pause clears the
  cache anyway). A server may read an adapter's directory again after loading it (vLLM's workers load lazily,
  and a failed read stops the engine), so the directories of the last two versions are kept, older ones removed
  once every server holds the new one.

``adapter_dir`` must be readable at the same path by every server (a shared filesystem for servers on other
nodes); the adapters go to its subdirectory ``<run id>``, removed when the engine closes. By default it is a
temporary directory on the trainer's machine. ``model.lora.sync: auto`` falls back to
merged weights (every sync sends ``W + (alpha/r) B A``) when a server does not allow runtime loading;
``sync: adapter`` refuses such a server with the reason and the fix.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from pathlib import Path

from rlkit.lora import _unwrap
from rlkit.rollout.http_client import ServerClient, ServerError

log = logging.getLogger("rlkit.server_lora")


class ServerAdapters:
    """The adapter side of a LoRA policy's sync to stock vLLM servers (rank 0 saves and loads; every rank names)."""

    def __init__(self, lora, run_id: str, adapter_dir: str | None):
        self.required = lora.sync == "adapter"    # the caller has resolved sync with use_adapter_sync
        self.name = f"rlkit-{run_id}"
        self.dir = Path(tempfile.mkdtemp(prefix="rlkit-lora-")) if adapter_dir is None else Path(adapter_dir) / run_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path: Path | None = None         # the adapter every server holds now
        self.saved: list[Path] = []           # every version's directory still on disk, oldest first

    @staticmethod
    def base_weights(model):
        """Context: the policy's weights with the adapter disabled (what the servers' base layers hold)."""
        peft_model = _unwrap(model)
        return peft_model.disable_adapter() if hasattr(peft_model, "disable_adapter") else contextlib.nullcontext()

    def save(self, model, version: int) -> int:
        """Rank 0: the adapter of ``version`` saved for the servers (once per version); its size in bytes."""
        path = self.dir / f"v{version}"
        if path != self.path:
            _unwrap(model).save_pretrained(str(path), safe_serialization=True)
            self.path = path
            self.saved.append(path)
        return sum(f.stat().st_size for f in path.iterdir())

    def load(self, client: ServerClient, version: str) -> None:
        """Rank 0: ``client``'s server serves the saved adapter as weight version ``version`` (it is paused)."""
        client.load_lora_adapter(self.name, str(self.path))
        client.update_weight_version(version)
        client.adapter = self.name

    def forget_old(self) -> None:
        while len(self.saved) > 2:
            shutil.rmtree(self.saved.pop(0), ignore_errors=True)

    def refusal(self, client: ServerClient) -> str | None:
        """Rank 0 at connect, after :meth:`save` of version 0: why ``client``'s server cannot load the adapter at
        runtime (None: it loaded it)."""
        try:
            client.load_lora_adapter(self.name, str(self.path))
        except ServerError as exc:
            return str(exc)
        return None

    def close(self) -> None:
        """The run's adapter directory goes (``adapter_dir`` itself stays)."""
        shutil.rmtree(self.dir, ignore_errors=True)


def explain(address: str, reason: str) -> str:
    return (f"model.lora.sync=adapter, but rollout server {address} cannot load LoRA adapters at runtime: {reason}. "
            "Start it with `rlkit rollout-server --lora-rank R` (or VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 and "
            "--enable-lora --max-lora-rank R on your vllm serve), or set model.lora.sync to merged or auto")
