"""Check tinfinite against Hugging Face transformers on the same folder (run by hand).

    pip install -r requirements-oracle.txt
    python bench/oracle_transformers.py [--model DIR] [--tokens 500]

Prints the transformers greedy chat answer to "What is the capital of France?" and the largest
logit difference between the two engines over a prompt inside the window (where LM-Infinite
equals vanilla attention). transformers is imported here only, never by tinfinite.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinfinite.engine import Engine  # noqa: E402
from tinfinite.fetch import ensure_default_model  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model")
    p.add_argument("--tokens", type=int, default=500)
    a = p.parse_args()
    import transformers
    folder = a.model or ensure_default_model()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt").input_ids
    out = hf.generate(ids, max_new_tokens=20, do_sample=False)
    print("transformers answer:", repr(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)))

    ours = Engine.load(folder)
    text = " ".join(f"Line {i}: a quick brown fox jumps over {i % 7} lazy dogs." for i in range(200))
    ids = ours.tokenizer.encode(text)[:a.tokens]
    assert ids == tok(text).input_ids[:a.tokens], "tokenizers disagree"
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0]
    ours.cache.reset()
    got = torch.cat([ours.model(ours._tensor(ids[s:s + 128]), ours.cache, last_only=False)[0]
                     for s in range(0, len(ids), 128)])
    print(f"max |logit difference| over {len(ids)} tokens: {(got - want).abs().max():.2e} "
          f"(logit scale {want.abs().max():.1f}); greedy agreement "
          f"{(got.argmax(-1) == want.argmax(-1)).float().mean():.4f}")


if __name__ == "__main__":
    main()
