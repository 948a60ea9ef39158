"""Reference log-probs computed once, cached on disk, reused by every rerun (SPEC §1: S_ref(y)).

The reference is frozen, so its log-probs of the training responses never change. Computing them once before
training halves the forward passes of every step and frees the reference's memory: with a cache hit the reference
model is not even loaded. The cache key hashes (reference model identity, the tokenised data, the settings that change
the numbers: logit temperature and dtype), so a different model, data set, truncation or temperature gets a new
entry and a stale one is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from prefopt.forward import plan_forward, summed_logps

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def default_cache_dir() -> Path:
    return Path(os.environ.get("PREFOPT_CACHE", Path.home() / ".cache" / "prefopt")) / "ref_logps"


def model_fingerprint(name_or_path: str, revision: Optional[str] = None) -> dict:
    """What identifies a reference model. For a local folder: its config and, per weight file, its size and a hash of
    its first MiB (reading whole 16 GB checkpoints would cost minutes); for a Hub name: the name and revision."""
    path = Path(name_or_path)
    if not path.is_dir():
        return {"hub": name_or_path, "revision": revision}
    weights = {}
    for file in sorted(path.iterdir()):
        if file.suffix in _WEIGHT_SUFFIXES:
            with open(file, "rb") as handle:
                head = hashlib.sha256(handle.read(1 << 20)).hexdigest()
            weights[file.name] = [file.stat().st_size, head]
    config = path / "config.json"
    return {
        "local": str(path.resolve()),
        "config": hashlib.sha256(config.read_bytes()).hexdigest() if config.is_file() else None,
        "weights": weights,
    }


def data_fingerprint(examples: Sequence[dict]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example["prompt_ids"], example["completion_ids"]]).encode())
    return digest.hexdigest()


def cache_key(model: dict, examples: Sequence[dict], **settings) -> str:
    payload = {"version": CACHE_VERSION, "model": model, "data": data_fingerprint(examples), "settings": settings}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def compute_reference_logps(
    ref_model: torch.nn.Module,
    examples: Sequence[dict],
    collator: Callable[[list[dict]], dict],
    *,
    batch_size: int,
    temperature: float = 1.0,
    chunk_size: int = 128,
    accelerator=None,
    logps_from_hidden: bool = True,
    padding_free: str = "auto",
) -> torch.Tensor:
    """Summed reference log-probs ``[N, K]`` of every example's K responses, in dataset order.

    With an ``accelerator`` each process scores a shard and the results are gathered, so every rank ends with the
    full table. ``logps_from_hidden`` and ``padding_free`` choose the forward path as for the policy
    (:func:`prefopt.forward.plan_forward`; one log line says which runs).
    """
    loader = torch.utils.data.DataLoader(list(examples), batch_size=batch_size, shuffle=False, collate_fn=collator)
    device = next(ref_model.parameters()).device
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
        device = accelerator.device
    ref_model.eval()
    plan = plan_forward(ref_model, logps_from_hidden=logps_from_hidden, padding_free=padding_free, role="reference")
    indices, values = [], []
    show = accelerator is None or accelerator.is_local_main_process
    for batch in tqdm(loader, desc="reference log-probs", disable=not show):
        batch = {key: value.to(device) for key, value in batch.items()}
        summed, _ = summed_logps(ref_model, batch, plan, temperature=temperature, chunk_size=chunk_size)
        summed = summed.view(batch["rewards"].shape)
        index = batch["index"]
        if accelerator is not None:
            summed, index = accelerator.gather_for_metrics((summed, index))
        values.append(summed.float().cpu())
        indices.append(index.cpu())
    table = torch.empty(len(examples), values[0].shape[1]) if values else torch.empty(0, 0)
    position = {int(example["index"]): row for row, example in enumerate(examples)}
    for index, value in zip(torch.cat(indices).tolist(), torch.cat(values)):
        table[position[index]] = value
    return table


def load_or_compute(
    key: str,
    cache_dir: Path,
    compute: Callable[[], torch.Tensor],
    *,
    expected_rows: int,
    is_main_process: bool = True,
    wait_for_everyone: Callable[[], None] = lambda: None,
) -> tuple[torch.Tensor, bool]:
    """The cached table for ``key`` if present (``hit=True``), else ``compute()`` it and save it atomically."""
    path = Path(cache_dir) / f"{key}.pt"
    if path.is_file():
        table = torch.load(path, weights_only=True)
        if table.shape[0] == expected_rows and bool(torch.isfinite(table).all()):
            logger.info("reference log-probs: cache hit %s", path)
            return table, True
        logger.warning("reference log-probs cache %s is unusable (%s rows); recomputing", path, table.shape[0])
    table = compute()
    if is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(table, partial)
        os.replace(partial, path)  # atomic: an interrupted run never leaves a truncated cache
        logger.info("reference log-probs: cached %d rows at %s", table.shape[0], path)
    wait_for_everyone()
    return table, False
