"""Random-weight Hugging Face Llama folders with the exact shapes of real models (run by hand).

    python bench/make_random_llama.py --shape llama-3.2-1b     # 2.1 GB -> weights/random-llama-3.2-1b
    python bench/make_random_llama.py --shape llama-3-8b       # 14.8 GB -> weights/random-llama-3-8b
    python bench/make_random_llama.py --shape smollm2-135m     # 0.27 GB: the default model's shape

For measuring loading and decoding at real sizes (bench/size_bench.py) without downloading
gated weights: every matrix has its real shape, dtype (bfloat16) and file layout (safetensors
shards of at most --shard-gib with a model.safetensors.index.json), so what a step reads and
what loading allocates are the real ones. The text is noise, so this is no model for quality.

Shapes are the body of the real models; the tokenizer is the default model's (SmolLM2, copied
from its folder), so vocab_size is 49152, not 128256: the embedding and LM head are smaller
than the real ones (1B: 0.2 GB of 2.5; 8B: 0.8 GB of 16).

Weights are normal * 0.02 and norms 1 (as Llama's initialisation), so activations stay
finite through every layer. They are written tensor by tensor (in blocks of rows), straight
into the file: the peak memory is one block, not a shard.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    # HuggingFaceTB/SmolLM2-135M-Instruct, the default model: where its weights cannot travel
    # (a GPU machine that reaches no hub), its speed can
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, head_dim=64,
                         tie_word_embeddings=True, rope_theta=100000.0,
                         max_position_embeddings=8192),
    # meta-llama/Llama-3.2-1B: tied embeddings, RoPE llama3 scaling (factor 32), 128K context
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, head_dim=64,
                         tie_word_embeddings=True, rope_theta=500000.0,
                         max_position_embeddings=131072,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192}),
    # meta-llama/Meta-Llama-3-8B: untied, 8K context
    "llama-3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, intermediate_size=14336, head_dim=128,
                       tie_word_embeddings=False, rope_theta=500000.0,
                       max_position_embeddings=8192),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "generation_config.json", "special_tokens_map.json")
STD = 0.02
BLOCK = 1 << 24  # elements generated at a time (64 MB of float32)


def config(shape: str, tokenizer_config: dict, **over) -> dict:
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
               rms_norm_eps=1e-5, attention_bias=False, mlp_bias=False, torch_dtype="bfloat16",
               initializer_range=STD, use_cache=True,
               vocab_size=tokenizer_config["vocab_size"],
               bos_token_id=tokenizer_config.get("bos_token_id"),
               eos_token_id=tokenizer_config.get("eos_token_id"), **SHAPES[shape])
    cfg.update(over)
    return cfg


def tensor_shapes(cfg: dict) -> list[tuple[str, tuple]]:
    """The checkpoint's tensors in Hugging Face's order."""
    D, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or D // H
    out = [("model.embed_tokens.weight", (V, D))]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (D,)), (p + "mlp.down_proj.weight", (D, F)),
                (p + "mlp.gate_proj.weight", (F, D)), (p + "mlp.up_proj.weight", (F, D)),
                (p + "post_attention_layernorm.weight", (D,)),
                (p + "self_attn.k_proj.weight", (Hkv * hd, D)),
                (p + "self_attn.o_proj.weight", (D, H * hd)),
                (p + "self_attn.q_proj.weight", (H * hd, D)),
                (p + "self_attn.v_proj.weight", (Hkv * hd, D))]
    out.append(("model.norm.weight", (D,)))
    if not cfg["tie_word_embeddings"]:
        out.append(("lm_head.weight", (V, D)))
    return out


def shards(tensors: list[tuple[str, tuple]], limit: int) -> list[list[tuple[str, tuple]]]:
    """Consecutive tensors, at most `limit` bytes of bfloat16 per shard (one larger tensor
    gets a shard of its own)."""
    out, size = [[]], 0
    for name, shape in tensors:
        n = 2 * _numel(shape)
        if out[-1] and size + n > limit:
            out.append([])
            size = 0
        out[-1].append((name, shape))
        size += n
    return out


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def write_tensor(f, name: str, shape: tuple, g: torch.Generator):
    """normal * STD (norms: ones) as bfloat16, written block by block."""
    if "norm" in name:
        f.write(torch.ones(shape, dtype=torch.bfloat16).view(torch.int16).numpy())
        return
    rows, cols = (shape[0], shape[1]) if len(shape) == 2 else (1, shape[0])
    step = max(1, BLOCK // cols)
    for a in range(0, rows, step):
        block = torch.randn(min(step, rows - a), cols, generator=g).mul_(STD).to(torch.bfloat16)
        f.write(block.view(torch.int16).numpy())


def write_shard(path: Path, tensors: list[tuple[str, tuple]], seed: int, first: int):
    """A safetensors file: 8-byte little-endian header length, the JSON header (padded with
    spaces to 8 bytes), then each tensor's bytes in header order."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        n = 2 * _numel(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for i, (name, shape) in enumerate(tensors):
            write_tensor(f, name, shape, torch.Generator().manual_seed(seed * 1_000_003 + first + i))
    return offset


def write_random_llama(out: Path, cfg: dict, shard_bytes: int, seed: int = 0,
                       tokenizer_from: Path | None = None) -> dict:
    """The whole folder; returns the index it wrote."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for name in TOKENIZER_FILES if tokenizer_from else ():
        if (Path(tokenizer_from) / name).is_file():
            shutil.copy(Path(tokenizer_from) / name, out / name)
    parts = shards(tensor_shapes(cfg), shard_bytes)
    weight_map, total, first = {}, 0, 0
    for k, part in enumerate(parts):
        file = f"model-{k + 1:05d}-of-{len(parts):05d}.safetensors"
        total += write_shard(out / file, part, seed, first)
        first += len(part)
        weight_map.update({name: file for name, _ in part})
        print(f"{out / file}: {len(part)} tensors", file=sys.stderr, flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return index


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=list(SHAPES), required=True)
    p.add_argument("--out", help="folder (default: weights/random-<shape>)")
    p.add_argument("--shard-gib", type=float, default=4.0, help="largest shard (4 GiB)")
    p.add_argument("--layers", type=int, help="fewer layers than the real model (quick checks)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer-from", help="folder whose tokenizer is copied (default: the "
                                            "default model's)")
    a = p.parse_args()
    if a.tokenizer_from:
        tok = Path(a.tokenizer_from)
    else:
        from tinfinite.fetch import ensure_default_model
        tok = Path(ensure_default_model())
    tok_cfg = json.loads((tok / "config.json").read_text())
    over = {"num_hidden_layers": a.layers} if a.layers else {}
    cfg = config(a.shape, tok_cfg, **over)
    out = Path(a.out or ROOT / "weights" / f"random-{a.shape}{f'-{a.layers}l' if a.layers else ''}")
    index = write_random_llama(out, cfg, int(a.shard_gib * 2**30), a.seed, tok)
    print(json.dumps({"folder": str(out), "bytes": index["metadata"]["total_size"],
                      "shards": len(set(index["weight_map"].values()))}))


if __name__ == "__main__":
    main()
