"""Convert a llama.cpp GGUF file (Llama architecture) into a plain Hugging Face Llama folder.

The folder it writes is what a user would download from the Hub:

    config.json              architecture, read from the GGUF metadata (nothing hard-coded)
    generation_config.json   bos / eos / pad ids
    model.safetensors        float32 tensors under HF names, q/k back in rotate-half order
    tokenizer.json           byte-level BPE for the `tokenizers` library
    tokenizer_config.json    special tokens, add_bos_token, chat template
    chat_template.jinja      the chat template, as its own file

Writing goes to a temporary sibling folder that is renamed into place only when every file
is complete, so an interrupted conversion never leaves a folder that looks loadable.
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

# GGUF name (after "blk.N.") -> HF name (after "model.layers.N.").
LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",  # absent when the embedding is tied (SmolLM2)
}

# llama.cpp token types (gguf.TokenType): 3 = CONTROL (<|im_start|> ...), 4 = USER_DEFINED.
CONTROL, USER_DEFINED = 3, 4


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation, giving HF's rotate-half row order.

    w: (n_heads * head_dim, in_features). HF's RoPE rotates row j of a head with row
    j + head_dim/2 (rotate-half); llama.cpp rotates adjacent rows 2j and 2j+1 (interleaved),
    so its converter moved HF row (half s, index j) of each head to row 2j + s. Here each
    head's rows are seen as (head_dim/2, 2), i.e. (j, s), and transposed back to (s, j).
    """
    rows, cols = w.shape
    head_dim = rows // n_heads
    w = w.reshape(n_heads, head_dim // 2, 2, cols)  # (h, j, s, in): llama.cpp order
    return w.swapaxes(1, 2).reshape(rows, cols)  # (h, s, j, in): HF order


def _meta(reader: GGUFReader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _f32(x: float) -> float:
    """GGUF stores floats as float32; 1e-5 reads back as 9.99999974e-06. Shortest decimal."""
    return float(str(np.float32(x)))


def _read_tensors(reader: GGUFReader, n_heads: int, n_kv_heads: int) -> dict:
    """All tensors as float32 numpy arrays under HF names, shapes (out, in) like nn.Linear."""
    tensors = {}
    for t in reader.tensors:
        # GGUF lists shapes innermost-first (t.shape = [in, out]); dequantize() returns the
        # numpy row-major array (out, in), already HF's nn.Linear orientation. Quantised
        # blocks of 32 hold an fp16 scale (Q4_1: and min) and small ints; the value is
        # scale * q (+ min), computed in float32 as llama.cpp does.
        w = dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        if t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            name = f"model.layers.{layer}.{LAYER_TENSORS[rest]}"
            if rest == "attn_q.weight":
                w = unpermute_qk(w, n_heads)
            elif rest == "attn_k.weight":
                w = unpermute_qk(w, n_kv_heads)  # k has only the KV heads
        else:
            name = GLOBAL_TENSORS[t.name]
        tensors[name] = np.ascontiguousarray(w)
    return tensors


def _build_tokenizer(reader: GGUFReader, add_bos: bool, bos_token: str) -> Tokenizer:
    """Byte-level BPE from the GGUF vocabulary and merges (tokenizer.ggml.model == "gpt2")."""
    model_type = _meta(reader, "tokenizer.ggml.model")
    pre_type = _meta(reader, "tokenizer.ggml.pre")
    if model_type != "gpt2" or pre_type != "smollm":
        raise ValueError(f"unsupported GGUF tokenizer {model_type!r}/{pre_type!r}; "
                         "only byte-level BPE with pre-tokenizer 'smollm' is converted")
    tokens = _meta(reader, "tokenizer.ggml.tokens")
    types = _meta(reader, "tokenizer.ggml.token_type")
    # Merges are stored as "left right"; byte-level symbols never contain a plain space.
    merges = [tuple(m.split(" ", 1)) for m in _meta(reader, "tokenizer.ggml.merges")]
    bpe = models.BPE({tok: i for i, tok in enumerate(tokens)}, merges, fuse_unk=False)
    tok = Tokenizer(bpe)
    # llama.cpp's "smollm" pre-tokenizer = SmolLM2's own tokenizer.json: every digit on its
    # own (\p{N}), then the GPT-2 regex split and the byte -> printable-unicode mapping.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, tokens.index(bos_token))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Control tokens are matched whole before BPE and skipped by decode(skip_special_tokens).
    # Their ids are already in the vocabulary, so adding them keeps the ids.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    return tok


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_folder(reader: GGUFReader, out: Path) -> None:
    arch = _meta(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture is {arch!r}; only 'llama' is converted")
    hp = lambda key, default=None: _meta(reader, f"llama.{key}", default)  # noqa: E731
    tokens = _meta(reader, "tokenizer.ggml.tokens")
    hidden, n_heads = hp("embedding_length"), hp("attention.head_count")
    n_kv_heads = hp("attention.head_count_kv", n_heads)
    head_dim = hp("attention.key_length", hidden // n_heads)
    if hp("rope.dimension_count", head_dim) != head_dim:
        raise ValueError("partial rotary embeddings are not supported by HF Llama")
    if hp("rope.scaling.type", "none") != "none":
        raise ValueError("GGUF RoPE scaling is not converted")
    bos_id = _meta(reader, "tokenizer.ggml.bos_token_id")
    eos_id = _meta(reader, "tokenizer.ggml.eos_token_id")
    pad_id = _meta(reader, "tokenizer.ggml.padding_token_id")
    unk_id = _meta(reader, "tokenizer.ggml.unknown_token_id")
    add_bos = bool(_meta(reader, "tokenizer.ggml.add_bos_token", False))
    chat_template = _meta(reader, "tokenizer.chat_template")

    tensors = _read_tensors(reader, n_heads, n_kv_heads)
    tied = "lm_head.weight" not in tensors
    # float32, not bfloat16: it keeps exactly the values llama.cpp computes from the Q4_1 /
    # Q8_0 blocks; bfloat16's 8-bit mantissa would round them a second time. 540 MB on disk
    # for 135M parameters is affordable, and the engine casts to its own dtype when loading.
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    _write_json(out / "config.json", {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": hp("vocab_size", len(tokens)),
        "hidden_size": hidden,
        "intermediate_size": hp("feed_forward_length"),
        "num_hidden_layers": hp("block_count"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": hp("context_length"),
        "rms_norm_eps": _f32(hp("attention.layer_norm_rms_epsilon")),
        "rope_theta": _f32(hp("rope.freq_base", 10000.0)),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
        "use_cache": True,
    })
    # Besides the GGUF's eos (<|im_end|> for SmolLM2), llama.cpp also ends generation at the
    # other end-of-text controls it recognises by name; list those too so greedy chat stops.
    stop_ids = [eos_id] + [tokens.index(t) for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")
                           if t in tokens and tokens.index(t) != eos_id]
    _write_json(out / "generation_config.json", {
        "bos_token_id": bos_id,
        "eos_token_id": stop_ids if len(stop_ids) > 1 else eos_id,
        "pad_token_id": pad_id,
    })

    name = lambda i: None if i is None else tokens[i]  # noqa: E731
    _build_tokenizer(reader, add_bos, name(bos_id)).save(str(out / "tokenizer.json"))
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name(bos_id),
        "eos_token": name(eos_id),
        "pad_token": name(pad_id),
        "unk_token": name(unk_id),
        "add_bos_token": add_bos,
        "add_eos_token": bool(_meta(reader, "tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": hp("context_length"),
    }
    if chat_template:
        tok_config["chat_template"] = chat_template
        (out / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    _write_json(out / "tokenizer_config.json", tok_config)


def convert(gguf_path, out_dir) -> Path:
    """Write the HF folder for `gguf_path` at `out_dir` (which must not exist yet).

    The files are written into a temporary sibling folder first and renamed into place at
    the end, so `out_dir` either is complete or does not exist.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it first")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        _write_folder(GGUFReader(str(gguf_path)), tmp)
        for path in tmp.iterdir():  # mkdtemp and safetensors make owner-only files
            path.chmod(0o644)
        tmp.chmod(0o755)
        tmp.rename(out_dir)  # atomic on one filesystem
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tinfinite.gguf_to_hf MODEL.gguf OUT_DIR")
    print(convert(sys.argv[1], sys.argv[2]))
