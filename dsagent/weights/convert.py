"""Turn a GGUF file into a Hugging Face model folder; run as a child process.

``python -m dsagent.weights.convert GGUF OUT_DIR [--dtype bfloat16]`` loads the GGUF with transformers
(which dequantizes it) and writes safetensors, config, tokenizer and chat template into
``OUT_DIR``. It runs in the engine interpreter (the one with torch and transformers), so the
process that calls it never imports them. The caller owns atomicity: ``OUT_DIR`` is a staging
folder that is renamed into place only after this exits 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def convert(gguf: Path, out: Path, dtype: str = "bfloat16") -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
