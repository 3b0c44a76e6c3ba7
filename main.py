"""tinfinite command line: generate text, or measure perplexity, with LM-Infinite attention.

A thin layer over tinfinite.engine: parse flags, call the API, turn user errors into one line.
"""
import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from tinfinite.errors import UserError

EXAMPLES = """examples:
  python main.py --prompt-text "What is the capital of France?" --chat
  python main.py --model path/to/llama --prompt book.txt --max-new-tokens 200
  python main.py perplexity --file ../shared/data/texts/moby_dick.txt --max-tokens 32768 --json
"""


def model_flags(p: argparse.ArgumentParser):
    p.add_argument("--model", help="Hugging Face Llama folder (default: SmolLM2-135M-Instruct, "
                                   "fetched into weights/ on first use)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or mps")
    p.add_argument("--quantize", choices=["int8"], help="int8 weight-only matmuls (faster "
                                                       "decoding, slightly different output)")
    p.add_argument("--attention", default="lambda", choices=["lambda", "full"],
                   help="lambda: LM-Infinite (default); full: vanilla causal, growing cache")
    p.add_argument("--n-local", type=int, help="window of recent tokens (default: the model's "
                                               "pre-training length)")
    p.add_argument("--n-global", type=int, default=10, help="starting tokens always attended (10)")
    p.add_argument("--chunk-size", type=int, default=256, help="prefill chunk in tokens (256)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="main.py", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate text with a Llama model far past its training length "
                    "(LM-Infinite). Subcommand: `main.py perplexity -h`.")
    model_flags(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="file holding the prompt (UTF-8 text)")
    src.add_argument("--prompt-text", help="the prompt itself")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", help="system message for --chat")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = all)")
    p.add_argument("--seed", type=int, help="random seed for sampling")
    p.add_argument("--stop", action="append", default=[], help="stop before this text (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="always make --max-new-tokens tokens")
    return p


def perplexity_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="main.py perplexity",
                                description="Stream text files through the model and report "
                                            "token count, total NLL and perplexity.")
    model_flags(p)
    p.add_argument("--file", nargs="+", required=True, help="UTF-8 text file(s), concatenated")
    p.add_argument("--max-tokens", type=int, help="score at most this many tokens")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def read_text(path: str, flag: str) -> str:
    f = Path(path)
    if not f.exists():
        raise UserError(f"{flag} {path}: file not found")
    if not f.is_file():
        raise UserError(f"{flag} {path}: not a file; give a UTF-8 text file")
    data = f.read_bytes()
    if b"\0" in data:
        raise UserError(f"{flag} {path}: looks binary (NUL bytes); give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{flag} {path}: not UTF-8 (byte {e.start}); convert it to UTF-8")
    if not text.strip():
        raise UserError(f"{flag} {path}: the file is empty")
    return text


def check_generation_flags(a):
    if a.max_new_tokens < 0:
        raise UserError(f"--max-new-tokens {a.max_new_tokens}: must be >= 0")
    if not 0 <= a.temperature < math.inf:
        raise UserError(f"--temperature {a.temperature}: must be a number >= 0 (0 = greedy)")
    if a.top_k < 0:
        raise UserError(f"--top-k {a.top_k}: must be >= 0 (0 = no limit)")
    if not 0 < a.top_p <= 1:
        raise UserError(f"--top-p {a.top_p}: must be in (0, 1]")
    if a.seed is not None and not -2**63 <= a.seed < 2**64:
        raise UserError(f"--seed {a.seed}: must fit in 64 bits")
    if a.system and not a.chat:
        raise UserError("--system needs --chat")


def load_engine(a):
    from tinfinite.engine import Engine
    model = a.model
    if model is None:
        from weights.fetch import ensure_default_model
        model = ensure_default_model()
    return Engine.load(model, dtype=a.dtype, device=a.device, quantize=a.quantize,
                       n_global=a.n_global, n_local=a.n_local, attention=a.attention,
                       chunk_size=a.chunk_size)


def run_generate(a):
    check_generation_flags(a)
    prompt = read_text(a.prompt, "--prompt") if a.prompt else a.prompt_text
    if not prompt.strip():
        raise UserError("--prompt-text: the prompt is empty")
    engine = load_engine(a)
    try:
        for piece in engine.generate(prompt, chat=a.chat, system=a.system, stop=a.stop,
                                     max_new_tokens=a.max_new_tokens, temperature=a.temperature,
                                     top_k=a.top_k, top_p=a.top_p, seed=a.seed,
                                     ignore_eos=a.ignore_eos):
            sys.stdout.write(piece)
            sys.stdout.flush()  # each piece as it is made, so Ctrl-C loses nothing printed
    finally:
        print(flush=True)  # end the text, also after Ctrl-C or an error
    # Only after success: an error must stay the one line on stderr.
    s = engine.stats
    print(f"[prompt {s.prompt_tokens} tokens | prefill {s.prefill_tps:.1f} tok/s | "
          f"decode {s.new_tokens} tokens, {s.decode_tps:.1f} tok/s]", file=sys.stderr)


def run_perplexity(a):
    if a.max_tokens is not None and a.max_tokens < 2:
        raise UserError(f"--max-tokens {a.max_tokens}: must be >= 2")
    text = "".join(read_text(f, "--file") for f in a.file)
    engine = load_engine(a)
    ids = engine.tokenizer.encode(text)[:a.max_tokens]
    if len(ids) < 2:
        raise UserError(f"--file {' '.join(a.file)}: only {len(ids)} token(s); perplexity needs "
                        f"at least 2")
    t0 = time.perf_counter()
    score = engine.perplexity(ids)
    seconds = time.perf_counter() - t0
    result = {"tokens": score.tokens, "nll": score.nll, "ppl": score.ppl,
              "attention": a.attention, "n_local": engine.n_local, "n_global": engine.n_global,
              "seconds": round(seconds, 2)}
    if a.json:
        print(json.dumps(result))
    else:
        print(f"tokens {score.tokens}  nll {score.nll:.2f}  ppl {score.ppl:.4f}  "
              f"({score.tokens / seconds:.0f} tok/s)")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command, parser = (run_perplexity, perplexity_parser()) if argv[:1] == ["perplexity"] \
        else (run_generate, generate_parser())
    a = parser.parse_args(argv[1:] if command is run_perplexity else argv)
    try:
        command(a)
    except UserError as e:
        if a.debug:
            raise
        print(f"tinfinite: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ntinfinite: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly like other Unix tools, and send
        # the rest of stdout, including Python's flush at exit, to /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed this way
    return 0


if __name__ == "__main__":
    sys.exit(main())
