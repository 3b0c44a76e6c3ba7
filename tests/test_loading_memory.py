"""Loading holds no second copy of any weight: the file is read into the model's own tensors
(in blocks when the dtype changes), int8 quantises in blocks, and nothing imports sympy.
Running reuses memory: a call's freed activations stay in the heap for the next call."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from tests.tiny import make_tiny_model, tiny_llama
from tinfinite import checkpoint, quantize
from tinfinite.checkpoint import load_model
from tinfinite.quantize import Int8Linear

ROOT = Path(__file__).resolve().parent.parent


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_block_reads_are_whole_reads(tmp_path, monkeypatch):
    """Files of either dtype, models of either dtype: a few rows at a time gives the same."""
    for stored in (torch.float32, torch.bfloat16):
        folder = tmp_path / str(stored)
        state = make_tiny_model(folder, shards=2, dtype=stored)
        for dtype in (torch.float32, torch.bfloat16):
            whole = weights(load_model(folder, dtype))
            monkeypatch.setattr(checkpoint, "BLOCK_BYTES", 3 * 64 * 4)  # a few rows a block
            blocks = weights(load_model(folder, dtype))
            monkeypatch.undo()
            assert whole.keys() == blocks.keys()
            for k in whole:
                assert whole[k].dtype == dtype and torch.equal(whole[k], blocks[k]), k
            want = state["model.embed_tokens.weight"].to(stored).to(dtype)
            assert torch.equal(whole["embed_tokens.weight"], want)


def test_int8_in_blocks_leaves_the_weight_alone(monkeypatch):
    w = torch.randn(50, 24, generator=torch.Generator().manual_seed(0))
    before = w.clone()
    whole = Int8Linear(w)
    monkeypatch.setattr(quantize, "QUANTIZE_ELEMENTS", 24 * 7)  # 7 rows a block
    blocks = Int8Linear(w)
    assert torch.equal(w, before)                   # the float weight is read, never written
    assert torch.equal(whole.weight, blocks.weight) and torch.equal(whole.scale, blocks.scale)
    assert torch.equal(whole.scale, (w.abs().amax(1) / 127).to(torch.bfloat16))


RSS = """
import json, sys
def rss_mb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
import torch
"""


def probe(code: str, folder) -> dict:
    """Run RSS + code in a fresh process (one thread) on a model folder; its JSON line."""
    done = subprocess.run([sys.executable, "-c", RSS + code, str(folder)], capture_output=True,
                          text=True, cwd=ROOT, check=True,
                          env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                               "PATH": "/usr/bin:/bin"})
    return json.loads(done.stdout)


def test_loading_peaks_at_the_weights(tmp_path):
    """A fresh process: loading adds the weights to its peak and little else. A copy of each
    tensor on its way would add the 32 MB embedding; sympy (meta tensors) adds 34-73 MB."""
    make_tiny_model(tmp_path, vocab_size=16384, hidden_size=512, intermediate_size=256,
                    num_attention_heads=8, num_key_value_heads=2)
    r = probe("""
from tinfinite.checkpoint import load_model
before = rss_mb("VmRSS")
model = load_model(sys.argv[1], torch.float32)
print(json.dumps({"peak_mb": rss_mb("VmHWM") - before, "sympy": "sympy" in sys.modules,
                  "weights_mb": sum(p.nbytes for p in model.parameters()) / 2**20}))
""", tmp_path)
    assert not r["sympy"]
    assert r["weights_mb"] > 40
    assert r["peak_mb"] < r["weights_mb"] + 12, r


def test_a_quantised_load_keeps_only_what_it_holds(tmp_path):
    """The bfloat16 weights that int8 replaced are given back, not kept by the C library's
    heap for reuse: the process grows by what the model holds (35 MB here), not by what
    loading went through (45-54 MB here without memory.release_freed)."""
    tiny_llama(tmp_path, hidden_size=512, intermediate_size=1536, num_hidden_layers=12,
               num_attention_heads=8, num_key_value_heads=2)
    r = probe("""
from tinfinite.engine import Engine
before = rss_mb("RssAnon")
engine = Engine.load(sys.argv[1], dtype="bfloat16", quantize="int8", threads=1)
held = sum(t.nbytes for t in [*engine.model.parameters(), *engine.model.buffers()]) / 2**20
print(json.dumps({"added_mb": rss_mb("RssAnon") - before, "held_mb": held}))
""", tmp_path)
    assert r["held_mb"] > 30
    assert r["added_mb"] < r["held_mb"] + 4, r


def test_a_second_prefill_reuses_the_pages_of_the_first(tmp_path):
    """A fresh process prefills a window of 1024 tokens twice. The second call's activations
    (10,240 pages by memory.run_bytes) come from the heap the first one freed: a few dozen
    page faults, where glibc's own trimming made 18,000-25,000 (memory.keep_freed a no-op)."""
    tiny_llama(tmp_path, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
               num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024)
    r = probe("""
import resource
from tinfinite.engine import Engine
engine = Engine.load(sys.argv[1], dtype="float32", threads=1, n_local=1024)
ids = [5 + i % 300 for i in range(1024)]
engine.prefill(ids)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
engine.prefill(ids)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "pages": engine._check_memory()["activations"] // 4096}))
""", tmp_path)
    assert r["pages"] > 5000
    assert r["faults"] < r["pages"] / 4, r
