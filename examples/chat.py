"""An endless chat on the tinfinite Python API. Ctrl-D (end of input) ends it.

    python examples/chat.py [--model path/to/llama] [--dtype bfloat16]

The conversation is never cut and never re-read: each turn feeds only its new tokens to the
cache that holds everything said so far (Engine.generate(..., resume=True)). With LM-Infinite
attention the cache is a fixed-size ring, so turn 1000 costs what turn 10 did, in the same
memory, long after the conversation has outgrown the model's 8K-token training length.
The model then sees the first tokens (the system prompt's start) and the last 8K.
"""
import argparse
import sys

from tinfinite import Engine, ensure_default_model

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--model", help="Llama folder (default: SmolLM2-135M-Instruct)")
p.add_argument("--dtype", default="bfloat16")
p.add_argument("--max-new-tokens", type=int, default=256, help="per reply")
a = p.parse_args()

llm = Engine.load(a.model or ensure_default_model(), dtype=a.dtype)
messages, said = [], ""  # said: the conversation's text as the cache holds it
while True:
    try:
        user = input("> ")
    except EOFError:
        print()
        break
    messages.append({"role": "user", "content": user})
    text = llm.tokenizer.chat_prompt(messages)  # the whole conversation, in the model's template
    # Feed only what is new. (Should a template ever rewrite an earlier turn, read it all again.)
    resume = bool(said) and text.startswith(said)
    reply = ""
    for piece in llm.generate(text[len(said):] if resume else text, resume=resume,
                              max_new_tokens=a.max_new_tokens):
        print(piece, end="", flush=True)
        reply += piece
    messages.append({"role": "assistant", "content": reply})
    said = text + reply
    s = llm.stats
    print()
    print(f"[{llm.cache.n_seen} tokens so far | this turn: {s.prompt_tokens} new, "
          f"{s.decode_tps:.1f} tok/s]", file=sys.stderr)
