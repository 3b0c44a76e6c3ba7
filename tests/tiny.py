"""Tiny random Llama folders for tests: config.json + safetensors, made in a temp dir."""
import json
from pathlib import Path

import tokenizers
import torch
from safetensors.torch import save_file
from tokenizers import decoders, models, pre_tokenizers, trainers



def tiny_config(**over) -> dict:
    cfg = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=96,
               hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
               rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
               torch_dtype="float32", bos_token_id=1, eos_token_id=2)
    cfg.update(over)
    return cfg


def checkpoint_shapes(cfg: dict) -> dict[str, tuple]:
    """The tensors of a Hugging Face Llama checkpoint, from its config alone."""
    D, F, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or D // H
    shapes = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
            p + "self_attn.q_proj.weight": (H * hd, D), p + "self_attn.k_proj.weight": (Hkv * hd, D),
            p + "self_attn.v_proj.weight": (Hkv * hd, D), p + "self_attn.o_proj.weight": (D, H * hd),
            p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
            p + "mlp.down_proj.weight": (D, F)})
    if not cfg.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (V, D)
    return shapes


def random_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Checkpoint-named random tensors; norms away from 1 so they are really exercised."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in checkpoint_shapes(cfg).items():
        t = torch.randn(shape, generator=g)
        state[name] = 1 + 0.2 * t if "norm" in name else 0.3 * t
    return state


def make_tiny_model(folder: Path, shards: int = 1, dtype=torch.float32, seed: int = 0,
                    **over) -> dict[str, torch.Tensor]:
    """Write a tiny random Llama to folder; return its float32 tensors by checkpoint name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(**over)
    state = random_state(cfg, seed)
    (folder / "config.json").write_text(json.dumps(cfg))
    stored = {k: v.to(dtype).contiguous() for k, v in state.items()}
    if shards == 1:
        save_file(stored, str(folder / "model.safetensors"))
    else:
        names = sorted(stored)
        weight_map = {}
        for s in range(shards):
            file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = names[s::shards]
            save_file({n: stored[n] for n in part}, str(folder / file))
            weight_map.update({n: file for n in part})
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}))
    return state


CORPUS = ["The quick brown fox jumps over the lazy dog.",
          "A small engine reads a model folder and writes text."] * 10


def tiny_llama(folder: Path, **model_options) -> Path:
    """A runnable model folder: random tiny Llama + byte-level BPE tokenizer.json (<s>, </s>)."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(folder / "tokenizer.json"))
    make_tiny_model(folder, vocab_size=tok.get_vocab_size(), bos_token_id=0, eos_token_id=1,
                    **model_options)
    return folder
