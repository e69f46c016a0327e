"""Turn a GGUF file into a Hugging Face model folder; run as a child process.

``python -m dsagent.weights.convert GGUF OUT_DIR [--dtype bfloat16]`` loads the GGUF with transformers
(which dequantizes it) and writes safetensors, config, tokenizer and chat template into
``OUT_DIR``. It runs in the engine interpreter (the one with torch and transformers), so the
process that calls it never imports them. The caller owns atomicity: ``OUT_DIR`` is a staging
folder that is renamed into place only after this exits 0.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path


def _parse_once() -> None:
    """transformers parses the GGUF file three times (tokenizer, config, weights: about 7 s each on
    the embedded model's 49,152-token vocabulary) and rebuilds gguf's tensor-name map once per
    tensor (about 9 s): both are pure functions of their arguments, so each is computed once here.
    The written folder is byte-for-byte the same (``tests/test_fetch.py`` pins its digest)."""
    import gguf

    if not hasattr(gguf.GGUFReader, "cache_info"):
        gguf.GGUFReader = functools.lru_cache(maxsize=4)(gguf.GGUFReader)
        gguf.get_tensor_name_map = functools.lru_cache(maxsize=16)(gguf.get_tensor_name_map)


def convert(gguf: Path, out: Path, dtype: str = "bfloat16") -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _parse_once()

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=getattr(torch, dtype)
    )
    # The GGUF quantization config describes the source file, not these dequantized weights;
    # save_pretrained refuses to write it.
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            try:
                delattr(holder, "quantization_config")
            except AttributeError:
                pass
    model.config.quantization_config = None
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsagent.weights.convert", description=__doc__)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)
    convert(args.gguf, args.out, args.dtype)
    print(f"converted {args.gguf} -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
