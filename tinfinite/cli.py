"""tinfinite command line (`tinfinite` once installed, `python main.py` in a checkout): generate text, or measure perplexity, with LM-Infinite attention.

A thin layer over tinfinite.engine: parse flags, call the API, turn user errors into one line.
"""
import argparse
import errno
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from tinfinite import settings
from tinfinite.errors import UserError

# The program's name in usage lines: `tinfinite` once installed, `main.py` in a checkout.
PROG = "tinfinite" if Path(sys.argv[0]).name == "tinfinite" else "main.py"
EXAMPLES = """examples:
  python main.py --prompt-text "What is the capital of France?" --chat
  python main.py --model path/to/llama --prompt book.txt --max-new-tokens 200
  python main.py perplexity --file book.txt --max-tokens 32768 --json
  python main.py perplexity --file a.txt b.txt --report-every 4096 --attention window
  python main.py passkey --lengths 4096 16384 --trials 5 --top-k-middle 5
  python main.py serve --port 8000
"""


def start_distances(text: str) -> str | int:
    """--start-distances: a rule's name, or an integer distance (settings.start_distances)."""
    try:
        return settings.start_distances(int(text) if text.isdigit() else text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).split(": ", 1)[1])


def model_flags(p: argparse.ArgumentParser):
    p.add_argument("--model", help="Hugging Face Llama folder (default: SmolLM2-135M-Instruct, "
                                   "fetched on first use into a checkout's weights/, else "
                                   "~/.cache/tinfinite, or $TINFINITE_WEIGHTS)")
    p.add_argument("--dtype", default=settings.DTYPE,
                   help=f"{', '.join(settings.DTYPES)}. auto (default): the checkpoint's own "
                        f"dtype (config.json's torch_dtype) where the device computes in it "
                        f"natively, so nothing is rounded or emulated, else float32")
    p.add_argument("--device", default=settings.DEVICE,
                   help=f"{', '.join(settings.DEVICES)} or cuda:N ({settings.DEVICE})")
    p.add_argument("--quantize", choices=settings.QUANTIZE[1:],
                   help="weight-only quantised matmuls: faster decoding, less memory, slightly "
                        "different output (int4: CPU only)")
    p.add_argument("--attention", default=settings.ATTENTION, choices=settings.ATTENTIONS,
                   help="lambda: LM-Infinite (default); full: vanilla causal, growing cache; "
                        "window: sliding window without starting tokens (the paper's baseline)")
    p.add_argument("--n-local", type=int, default=settings.N_LOCAL,
                   help="window of recent tokens (default: the model's pre-training length)")
    p.add_argument("--n-global", type=int,
                   help=f"starting tokens always attended (lambda: {settings.N_GLOBAL}; "
                        f"the paper: 10)")
    p.add_argument("--top-k-middle", type=int, default=settings.TOP_K_MIDDLE, metavar="K",
                   help="also attend, from the last row of each call, to the K best middle "
                        "tokens per head (the paper's retrieval variant). Memory then GROWS "
                        "with the input: every token's key and value is kept, "
                        "2 x layers x kv_heads x head_dim x --kv-dtype bytes per token (46 KB "
                        "for the default model on the CPU), in a buffer that doubles as it "
                        "fills. Off (0) by default")
    p.add_argument("--top-k-from-layer", type=int, default=settings.TOP_K_FROM_LAYER,
                   help=f"first layer (from 0) that uses --top-k-middle "
                        f"({settings.TOP_K_FROM_LAYER})")
    p.add_argument("--top-k-block", type=int, default=settings.TOP_K_BLOCK, metavar="N",
                   help="choose the --top-k-middle picks by blocks of N tokens: score each "
                        "block's mean key, then the tokens of the best 2 x K blocks only "
                        "(faster on long inputs; memory as --top-k-middle). 0 (default): "
                        "score every middle token")
    p.add_argument("--top-k-offload", metavar="DIR",
                   help="keep --top-k-middle's growing keys and values in a file in DIR, "
                        "memory-mapped, instead of RAM (for inputs larger than RAM; best with "
                        "--top-k-block). The file is removed at once and needs no cleaning")
    p.add_argument("--start-distances", default=settings.START_DISTANCE, type=start_distances,
                   metavar="{capped,ceiling,spread,N}",
                   help="where a query sees the starting tokens beyond its window: capped "
                        "(default: all at --n-local, but at most half the trained length), "
                        "ceiling (the paper: all at --n-local), spread (token g at "
                        "n_local - 1 - g) or N (all at distance N)")
    p.add_argument("--kv-dtype", default=settings.KV_DTYPE, choices=settings.KV_DTYPES,
                   help="dtype of the KV cache, in which attention runs (default auto: "
                        "float32 on the CPU, where attention is faster in it; the model's "
                        "dtype elsewhere)")
    p.add_argument("--chunk-size", type=int, default=settings.CHUNK_SIZE,
                   help=f"prefill chunk in tokens ({settings.CHUNK_SIZE})")
    p.add_argument("--threads", type=int, metavar="N",
                   help="compute threads (default: the cores that other processes leave "
                        "free while the model loads, from /proc/stat; at least 1, at most "
                        "torch's default: a thread per core, or OMP_NUM_THREADS)")
    p.add_argument("--compile", action="store_true", default=settings.COMPILE,
                   help="decode through torch.compile (CPU only; needs g++): faster tokens "
                        "after about a minute of compiling at the first one (docs/results.md)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate text with a Llama model far past its training length "
                    f"(LM-Infinite). Subcommands: `{PROG} perplexity -h`, "
                    f"`{PROG} passkey -h`, `{PROG} serve -h`.")
    model_flags(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="file holding the prompt (UTF-8 text)")
    src.add_argument("--prompt-text", help="the prompt itself")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--system", help="system message for --chat")
    p.add_argument("--max-new-tokens", type=int, default=settings.MAX_NEW_TOKENS,
                   help=f"({settings.MAX_NEW_TOKENS}; 0 = prefill only)")
    p.add_argument("--temperature", type=float, default=settings.TEMPERATURE,
                   help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=settings.TOP_K,
                   help="sample from the k likeliest (0 = all)")
    p.add_argument("--top-p", type=float, default=settings.TOP_P,
                   help="nucleus sampling mass (1 = all)")
    p.add_argument("--seed", type=int, default=settings.SEED, help="random seed for sampling")
    p.add_argument("--stop", action="append", default=[], help="stop before this text (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="always make --max-new-tokens tokens")
    return p


def perplexity_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} perplexity",
                                description="Stream text files through the model and report "
                                            "token count, total NLL and perplexity.")
    model_flags(p)
    p.add_argument("--file", nargs="+", required=True, help="UTF-8 text file(s), concatenated")
    p.add_argument("--max-tokens", type=int, help="score at most this many tokens")
    p.add_argument("--report-every", type=int, metavar="N",
                   help="report cumulative and per-bucket perplexity every N tokens as it "
                        "streams (buckets of N positions)")
    p.add_argument("--json", action="store_true", help="print one JSON object (with the "
                                                       "buckets); reports go to stderr")
    return p


def passkey_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} passkey",
                                description="Passkey retrieval (the paper's §5.2): a 5-digit "
                                            "key hidden at a random depth of filler text, "
                                            "asked for at the end; greedy, scored on the "
                                            "first integer generated.")
    model_flags(p)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096, 8192],
                   help="prompt lengths in tokens (2048 4096 8192)")
    p.add_argument("--trials", type=int, default=5, help="trials per length (5)")
    p.add_argument("--seed", type=int, default=0, help="picks depths and keys (0); the same "
                                                       "seed asks the same questions")
    p.add_argument("--min-depth", type=float, default=0.0,
                   help="depths are uniform in [--min-depth, --max-depth] (0 = first filler)")
    p.add_argument("--max-depth", type=float, default=1.0, help="(1 = just before the question)")
    p.add_argument("--truncate", action="store_true",
                   help="baseline: keep only the last --n-local tokens of each prompt")
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
    """Before the model loads: the API's own rules (settings.py), which generate() applies."""
    settings.sampling(a.max_new_tokens, a.temperature, a.top_k, a.top_p, a.seed)
    settings.chat_and_system(a.chat, a.system)


def load_engine(a):
    from tinfinite.engine import Engine
    model = a.model
    if model is None:
        from tinfinite.fetch import ensure_default_model
        model = ensure_default_model()
    return Engine.load(model, dtype=a.dtype, device=a.device, quantize=a.quantize,
                       n_global=a.n_global, n_local=a.n_local, attention=a.attention,
                       chunk_size=a.chunk_size, top_k_middle=a.top_k_middle,
                       top_k_from_layer=a.top_k_from_layer, top_k_block=a.top_k_block,
                       top_k_offload=a.top_k_offload,
                       threads=a.threads, compile=a.compile,
                       start_distances=a.start_distances, kv_dtype=a.kv_dtype)


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
          f"decode {s.new_tokens} tokens, {s.decode_tps:.1f} tok/s | {engine.dtype}]",
          file=sys.stderr)


def run_perplexity(a):
    from tqdm import tqdm

    from tinfinite.evaluate import perplexity_by_position
    if a.max_tokens is not None and a.max_tokens < 2:
        raise UserError(f"--max-tokens {a.max_tokens}: must be >= 2")
    if a.report_every is not None and a.report_every < 1:
        raise UserError(f"--report-every {a.report_every}: must be >= 1")
    text = "".join(read_text(f, "--file") for f in a.file)
    engine = load_engine(a)
    ids = engine.tokenizer.encode_long(text, a.max_tokens)
    del text  # a 1M-token run keeps only the ids (4 bytes each)
    if len(ids) < 2:
        raise UserError(f"--file {' '.join(a.file)}: only {len(ids)} token(s); perplexity needs "
                        f"at least 2")
    report = sys.stderr if a.json else sys.stdout
    bar = tqdm(total=len(ids) - 1, unit="tok", unit_scale=True, file=sys.stderr,
               disable=not sys.stderr.isatty())  # a progress bar on a terminal only

    def on_bucket(b, buckets):
        total = buckets.upto(b)
        tqdm.write(f"tokens {total.end:>9}  ppl {total.ppl:9.4f}  |  [{b.start}, {b.end}) "
                   f"ppl {b.ppl:9.4f}", file=report)  # above the bar, which is redrawn

    t0 = time.perf_counter()
    with bar:
        buckets = perplexity_by_position(
            engine, ids, a.report_every or len(ids), on_bucket if a.report_every else None,
            lambda done, total: bar.update(done - bar.n))
    seconds = time.perf_counter() - t0
    total = buckets.total
    result = {"tokens": total.tokens, "nll": total.nll, "ppl": total.ppl,
              "attention": a.attention, "n_local": engine.n_local, "n_global": engine.n_global,
              "top_k_middle": engine.top_k_middle, "top_k_block": engine.top_k_block,
              "start_distances": engine.start_distances, "dtype": engine.dtype,
              "kv_dtype": str(engine.kv_dtype).removeprefix("torch."),
              "seconds": round(seconds, 2), "tokens_per_second": round(total.tokens / seconds, 1),
              "peak_rss_mb": round(peak_rss_mb(), 1),
              "buckets": [b.as_dict() for b in buckets.all()]}
    device = engine.model.embed_tokens.weight.device
    if device.type == "cuda":  # the device's memory is what a GPU run keeps bounded
        import torch
        result["peak_device_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    if a.json:
        print(json.dumps(result))
    else:
        print(f"tokens {total.tokens}  nll {total.nll:.2f}  ppl {total.ppl:.4f}  "
              f"({total.tokens / seconds:.0f} tok/s, peak RSS {result['peak_rss_mb']:.0f} MB)")


def run_passkey(a):
    from tinfinite.evaluate import passkey_trials, run_passkeys, summarise
    if a.trials < 1:
        raise UserError(f"--trials {a.trials}: must be >= 1")
    if not 0 <= a.min_depth <= a.max_depth <= 1:
        raise UserError(f"--min-depth {a.min_depth} --max-depth {a.max_depth}: need "
                        f"0 <= min <= max <= 1")
    if min(a.lengths) < 64:
        raise UserError(f"--lengths {min(a.lengths)}: a passkey prompt needs >= 64 tokens")
    if max(a.lengths) > settings.MAX_PASSKEY_LENGTH:
        raise UserError(f"--lengths {max(a.lengths)}: at most {settings.MAX_PASSKEY_LENGTH} "
                        f"tokens")
    engine = load_engine(a)

    def report(r):
        print(f"length {r['length']:>7}  depth {r['depth']:.2f}  key {r['key']}  answer "
              f"{r['answer']}  {'ok' if r['correct'] else 'WRONG'}  (key {r['key_distance']} "
              f"tokens from the end{', in window' if r['key_in_window'] else ''})",
              file=sys.stderr if a.json else sys.stdout, flush=True)
    trials = passkey_trials(a.lengths, a.trials, a.seed, (a.min_depth, a.max_depth))
    results = run_passkeys(engine, trials, truncate=a.truncate, on_result=report)
    summary = summarise(results)
    if a.json:
        print(json.dumps({"attention": a.attention, "n_local": engine.n_local,
                          "n_global": engine.n_global, "top_k_middle": engine.top_k_middle,
                          "top_k_block": engine.top_k_block,
                          "start_distances": engine.start_distances,
                          "truncate": a.truncate, "dtype": engine.dtype,
                          "kv_dtype": str(engine.kv_dtype).removeprefix("torch."), "seed": a.seed,
                          **summary, "trials": results}))
    else:
        for n, acc in summary["accuracy"].items():
            print(f"length {n:>7}: accuracy {acc:.2f}")


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} serve",
                                description="Serve the model over HTTP with OpenAI's API "
                                            "(/v1/models, /v1/chat/completions, "
                                            "/v1/completions), one request at a time.")
    model_flags(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: "
                                                       "this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (8000)")
    return p


def run_serve(a):
    try:
        from tinfinite.server import serve
    except ImportError as e:
        raise UserError(f"serve needs the server extra ({e.name} is missing): "
                        f"pip install 'tinfinite[server]'") from None
    if not 0 <= a.port < 65536:
        raise UserError(f"--port {a.port}: must be in 0-65535")
    from tinfinite.fetch import MODEL_NAME
    engine = load_engine(a)
    serve(engine, Path(a.model).resolve().name if a.model else MODEL_NAME, a.host, a.port)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux and macOS)."""
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


# The API parameters that flags set (UserError.param names one), and the flag of each where it
# is not "--" + the name with "-" for "_".
PARAMS = ("model_dir", "dtype", "device", "quantize", "threads", "attention", "n_local",
          "n_global", "chunk_size", "top_k_middle", "top_k_from_layer", "top_k_block",
          "top_k_offload", "start_distances", "kv_dtype", "compile",
          "prompt", "chat",
          "system", "stop", "max_new_tokens", "temperature", "top_k", "top_p", "seed",
          "ignore_eos")
FLAGS = {"model_dir": "--model", "prompt": "--prompt-text"}
SPOKEN = re.compile(r"\b(?P<name>%s)(?:=(?P<value>'[^']*'|\"[^\"]*\"|[^\s,:;)]+)|(?!\w))"
                    % "|".join(sorted(PARAMS, key=len, reverse=True)))


def flag(param: str) -> str:
    return FLAGS.get(param, "--" + param.replace("_", "-"))


def flag_message(e: UserError) -> str:
    """An API error in the command line's words: `n_global=-3` -> `--n-global -3`,
    `dtype='int8'` -> `--dtype int8`, `chat=True` -> `--chat`, and a parameter named alone
    (one with "_" in its name, or the first word) -> its flag. Other errors stay as they are."""
    if e.param is None:
        return str(e)

    def to_flag(m: re.Match) -> str:
        name, value = m["name"], m["value"]
        if value is None:
            return flag(name) if "_" in name or m.start() == 0 else name
        if value == "True":
            return flag(name)
        return f"{flag(name)} {value.strip(chr(39) + chr(34))}"

    return SPOKEN.sub(to_flag, str(e))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so the run ends like Ctrl-C."""


def _terminate(signum, frame):
    raise Terminated


# errno values only a write can give: reaching main, they come from stdout (every file
# tinfinite writes itself reports its own errors as UserError).
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _stdout_to_devnull():
    """The rest of stdout, including Python's flush at exit, goes nowhere (and cannot fail)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def run(command, a) -> int:
    """command(a), every way it can end turned into an exit code and at most one line."""
    try:
        command(a)
        sys.stdout.flush()  # here, so a full disk is reported like any error, not at exit
    except UserError as e:
        if a.debug:
            raise
        print(f"tinfinite: error: {flag_message(e)}", file=sys.stderr)
        return 1
    except Terminated:
        print("tinfinite: terminated", file=sys.stderr)
        return 143  # 128 + SIGTERM
    except KeyboardInterrupt:
        print("\ntinfinite: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly like other Unix tools.
        _stdout_to_devnull()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed this way
    except OSError as e:
        if e.errno not in WRITE_ERRORS or a.debug:
            raise
        print(f"tinfinite: error: cannot write the output ({e.strerror})", file=sys.stderr)
        _stdout_to_devnull()
        return 1
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = {"perplexity": (run_perplexity, perplexity_parser),
                "passkey": (run_passkey, passkey_parser), "serve": (run_serve, serve_parser)}
    if argv[:1] and argv[0] in commands:
        command, parser = commands[argv[0]][0], commands[argv[0]][1]()
        argv = argv[1:]
    else:
        command, parser = run_generate, generate_parser()
    a = parser.parse_args(argv)
    if threading.current_thread() is not threading.main_thread():
        return run(command, a)  # signal handlers can only be set in the main thread
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return run(command, a)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
