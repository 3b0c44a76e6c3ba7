"""bench/make_random_llama.py writes valid sharded safetensors folders of any Llama shape."""
import json
import sys
from pathlib import Path

import torch
from safetensors import safe_open

from tinfinite.checkpoint import load_model

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from make_random_llama import SHAPES, config, write_random_llama  # noqa: E402


def test_random_folder_loads_and_matches_the_reference_reader(tmp_path):
    for shape in SHAPES:  # each real shape, shrunk: same config fields, tiny sizes
        cfg = config(shape, {"vocab_size": 96, "bos_token_id": 1, "eos_token_id": 2},
                     hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16)
        folder = tmp_path / shape
        index = write_random_llama(folder, cfg, shard_bytes=20_000, seed=1)
        files = sorted(set(index["weight_map"].values()))
        assert len(files) > 2 and json.loads((folder / "config.json").read_text()) == cfg
        model = load_model(folder, torch.float32)               # strict: every tensor, shape
        params = dict(model.named_parameters())
        stored = {}
        for file in files:
            with safe_open(folder / file, framework="pt") as f:
                stored.update({k: f.get_tensor(k) for k in f.keys()})
        assert sum(t.nbytes for t in stored.values()) == index["metadata"]["total_size"]
        assert all(t.dtype == torch.bfloat16 for t in stored.values())
        assert torch.equal(params["embed_tokens.weight"], stored["model.embed_tokens.weight"].float())
        down = stored["model.layers.1.mlp.down_proj.weight"].float()
        assert torch.equal(params["layers.1.mlp.down_proj.weight"], down)
        assert 0.015 < down.std() < 0.025 and (stored["model.norm.weight"] == 1).all()
        head = "lm_head.weight" in stored
        assert head != cfg["tie_word_embeddings"]
