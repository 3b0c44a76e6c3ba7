"""Ask a question about a book-length text file.

    python examples/long_document.py book.txt "Who is Jean Valjean?" [--top-k-middle 5]

The file is streamed through the fixed-size cache in chunks (memory does not grow with it),
then the question is asked and answered. What the answer can draw on, honestly:

- LM-Infinite keeps the model *fluent* at any length, but each answer token attends only to
  the first n_global tokens and the last n_local (8K for the default model). A fact from the
  middle of a book is not visible when answering; it can only have influenced the text near
  it. Ask about the end of the text, or put the question's context last.
- --top-k-middle K lets the answer also attend, per head and from layer 4 on, to the K middle
  tokens that match best (the paper's passkey variant). That can bring back a distinctive
  token (a number, a name) from anywhere, at the price of keeping every token's key and value
  (memory grows with the text). It is retrieval of tokens, not understanding of chapters.
- A 135M-parameter model answers simple questions only; the mechanism is the same for larger
  Llama models (--model).
"""
import argparse
import sys
import time
from pathlib import Path

from tinfinite import Engine, ensure_default_model

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("file", type=Path, help="UTF-8 text file")
p.add_argument("question")
p.add_argument("--model", help="Llama folder (default: SmolLM2-135M-Instruct)")
p.add_argument("--dtype", default="bfloat16")
p.add_argument("--top-k-middle", type=int, default=0, metavar="K")
p.add_argument("--max-new-tokens", type=int, default=100)
a = p.parse_args()
if not a.file.is_file():
    sys.exit(f"long_document: {a.file}: no such file")

llm = Engine.load(a.model or ensure_default_model(), dtype=a.dtype, top_k_middle=a.top_k_middle)
book = a.file.read_text(encoding="utf-8", errors="replace")
prompt = f"{book}\n\nAnswer from the text above. {a.question}"
t0 = time.perf_counter()
for piece in llm.generate(prompt, chat=llm.tokenizer.has_chat_template,
                          max_new_tokens=a.max_new_tokens):
    print(piece, end="", flush=True)
print()
s = llm.stats
print(f"[read {s.prompt_tokens} tokens at {s.prefill_tps:.0f} tok/s; the model attends to the "
      f"first {llm.n_global} and the last {llm.n_local}"
      f"{f', plus {a.top_k_middle} middle tokens per head' if a.top_k_middle else ''}]",
      file=sys.stderr)
