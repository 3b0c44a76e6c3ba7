"""The Python API as a specification: every bad argument is refused at the call with a message
that names the parameter as Python spells it; the command line shares its defaults and its
rules (and says its flags instead); dtype "auto"; calls from several threads take turns; a run
that cannot fit in memory is refused before it allocates. Tiny random models (tests/tiny.py).
"""
import gc
import inspect
import math
import shutil
import threading
import time

import pytest
import torch

from tests.tiny import tiny_llama
from tinfinite import cli, memory, settings
from tinfinite.engine import Engine
from tinfinite.errors import UserError

PROMPTS = ("The quick brown fox", "A small engine reads a model folder")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def llm(folder):
    return Engine.load(folder, n_local=24, chunk_size=8)


def refused(call, message: str, param: str):
    """call() raises UserError whose one line starts with message and whose param is param."""
    with pytest.raises(UserError) as e:
        call()
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)
    assert e.value.param == param
    return str(e.value)


# --- Engine and Engine.load ---------------------------------------------------------------------

@pytest.mark.parametrize("options, message, param", [
    (dict(n_global=-3), "n_global=-3: must be an integer >= 0", "n_global"),
    (dict(n_global=True), "n_global=True: must be an integer >= 0", "n_global"),
    (dict(n_global=2.0), "n_global=2.0: must be an integer >= 0", "n_global"),
    (dict(n_local=0), "n_local=0: must be an integer >= 1", "n_local"),
    (dict(n_local="8"), "n_local='8': must be an integer >= 1", "n_local"),
    (dict(chunk_size=0), "chunk_size=0: must be an integer >= 1", "chunk_size"),
    (dict(chunk_size=None), "chunk_size=None: must be an integer >= 1", "chunk_size"),
    (dict(top_k_middle=-1), "top_k_middle=-1: must be an integer >= 0", "top_k_middle"),
    (dict(top_k_from_layer=-1), "top_k_from_layer=-1: must be an integer >= 0",
     "top_k_from_layer"),
    (dict(attention="sparse"), "attention='sparse': choose one of lambda, full, window",
     "attention"),
    (dict(attention="window", n_global=4), "n_global=4: attention='window' has no starting tokens",
     "n_global"),
    (dict(attention="full", n_local=8), "attention='full' sees every token: it takes no n_local",
     "attention"),
    (dict(attention="full", top_k_middle=2), "attention='full' sees every token", "attention"),
    (dict(start_distances="far"), "start_distances='far': choose one of capped, ceiling, spread, or "
     "an integer distance >= 1", "start_distances"),
    (dict(start_distances=0), "start_distances=0: choose one of capped, ceiling, spread, or an "
     "integer distance >= 1", "start_distances"),
    (dict(start_distances=True), "start_distances=True: choose one", "start_distances"),
    (dict(top_k_block=16), "top_k_block=16: applies to top_k_middle's picks", "top_k_block"),
    (dict(top_k_block=-1, top_k_middle=2), "top_k_block=-1: must be an integer >= 0",
     "top_k_block"),
    (dict(top_k_offload="/no/such/folder", top_k_middle=2),
     "top_k_offload='/no/such/folder': not a folder this process can write into",
     "top_k_offload"),
    (dict(top_k_offload=3, top_k_middle=2), "top_k_offload=3: must be a folder path",
     "top_k_offload"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_engine_refuses_a_bad_setting_naming_it(llm, options, message, param):
    refused(lambda: Engine(llm.model, llm.tokenizer, **options), message, param)


@pytest.mark.parametrize("options, message, param", [
    (dict(dtype="int8"), "dtype='int8': choose one of auto, float32, bfloat16, float16", "dtype"),
    (dict(dtype=torch.float32), "dtype=torch.float32: choose one of auto", "dtype"),
    (dict(device="tpu"), "device='tpu': unknown device; use cpu, cuda or mps", "device"),
    (dict(device="cpu:x"), "device='cpu:x': not a device name", "device"),
    (dict(device=0), "device=0: must be a string such as 'cpu'", "device"),
    (dict(quantize="int2"), "quantize='int2': choose one of None, int8, int4", "quantize"),
    (dict(chunk_size=-8), "chunk_size=-8: must be an integer >= 1", "chunk_size"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_load_refuses_a_bad_setting_naming_it(folder, options, message, param):
    refused(lambda: Engine.load(folder, **options), message, param)


def test_load_refuses_a_folder_that_is_not_a_path():
    refused(lambda: Engine.load(3), "model_dir=3: must be a folder path (str or Path)",
            "model_dir")


def test_load_refuses_a_folder_that_is_not_there_or_a_file(folder, tmp_path):
    refused(lambda: Engine.load(tmp_path / "nowhere"),
            f"model_dir={str(tmp_path / 'nowhere')!r}: model folder not found", "model_dir")
    refused(lambda: Engine.load(folder / "config.json"),
            f"model_dir={str(folder / 'config.json')!r}: is a file; give the model's folder",
            "model_dir")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_load_refuses_a_device_that_is_not_here(folder):
    refused(lambda: Engine.load(folder, device="cuda"),
            "device='cuda': no CUDA device is available here; use device='cpu'", "device")


# --- generate, generate_ids and the scoring calls ----------------------------------------------

SAMPLING = [
    (dict(max_new_tokens=-1), "max_new_tokens=-1: must be an integer >= 0", "max_new_tokens"),
    (dict(max_new_tokens=2.0), "max_new_tokens=2.0: must be an integer >= 0", "max_new_tokens"),
    (dict(max_new_tokens=None), "max_new_tokens=None: must be an integer >= 0", "max_new_tokens"),
    (dict(temperature=-0.5), "temperature=-0.5: must be a finite number >= 0", "temperature"),
    (dict(temperature=math.nan), "temperature=nan: must be a finite number >= 0", "temperature"),
    (dict(temperature=math.inf), "temperature=inf: must be a finite number >= 0", "temperature"),
    (dict(temperature="hot"), "temperature='hot': must be a finite number >= 0", "temperature"),
    (dict(temperature=True), "temperature=True: must be a finite number >= 0", "temperature"),
    (dict(top_k=-1), "top_k=-1: must be an integer >= 0", "top_k"),
    (dict(top_k=1.5), "top_k=1.5: must be an integer >= 0", "top_k"),
    (dict(top_p=0), "top_p=0: must be a number in (0, 1]", "top_p"),
    (dict(top_p=1.5), "top_p=1.5: must be a number in (0, 1]", "top_p"),
    (dict(top_p=math.nan), "top_p=nan: must be a number in (0, 1]", "top_p"),
    (dict(seed=2**64), f"seed={2**64}: must be None or an integer that fits in 64 bits", "seed"),
    (dict(seed=-2**63 - 1), f"seed={-2**63 - 1}: must be None or an integer that fits", "seed"),
    (dict(seed="7"), "seed='7': must be None or an integer that fits in 64 bits", "seed"),
    (dict(seed=True), "seed=True: must be None or an integer", "seed"),
    (dict(ignore_eos=1), "ignore_eos=1: must be True or False", "ignore_eos"),
    (dict(resume="no"), "resume='no': must be True or False", "resume"),
]


@pytest.mark.parametrize("options, message, param", SAMPLING + [
    (dict(chat="yes"), "chat='yes': must be True or False", "chat"),
    (dict(system="Be brief."), "system needs chat=True", "system"),
    (dict(system=3, chat=True), "system=3: must be a string", "system"),
    (dict(chat=True), "chat=True: the model in", "chat"),  # the tiny model has no chat template
    (dict(stop=["a", 3]), "stop: item 1 is 3, not a string", "stop"),
    (dict(stop=5), "stop=5: must be a string or a list of strings", "stop"),
], ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_generate_refuses_a_bad_argument_at_the_call(llm, options, message, param):
    refused(lambda: llm.generate(PROMPTS[0], **options), message, param)  # not iterated


@pytest.mark.parametrize("options, message, param", SAMPLING,
                         ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_generate_ids_refuses_a_bad_argument_at_the_call(llm, options, message, param):
    refused(lambda: llm.generate_ids([1, 2, 3], **options), message, param)


@pytest.mark.parametrize("prompt", [b"hello", None, 42, ["hello"]])
def test_a_prompt_must_be_a_string(llm, prompt):
    refused(lambda: llm.generate(prompt), f"prompt={prompt!r}: must be a string", "prompt")
    refused(lambda: llm.prompt_ids(prompt), f"prompt={prompt!r}: must be a string", "prompt")
    refused(lambda: llm.score(prompt), f"text={prompt!r}: must be a string", "text")


@pytest.mark.parametrize("ids, message", [
    ("hello", "ids='hello': must be a sequence of token ids (ints)"),
    (None, "ids=None: must be a sequence of token ids (ints)"),
    ([1, "a"], "ids: item 1 is 'a', not a token id (an int)"),
    ([1, 2.0], "ids: item 1 is 2.0, not a token id (an int)"),
    ([True], "ids: item 0 is True, not a token id (an int)"),
    ([1, 99999], "ids: token 99999 is outside the vocabulary (0..{last})"),
    ([-1], "ids: token -1 is outside the vocabulary (0..{last})"),
])
def test_ids_must_be_token_ids_of_the_vocabulary(llm, ids, message):
    message = message.format(last=llm.model.cfg.vocab_size - 1)
    for call in (llm.generate_ids, llm.perplexity, llm.token_nlls, llm.prefill):
        refused(lambda: call(ids), message, "ids")


def test_empty_ids_are_an_empty_prompt(llm):
    refused(lambda: list(llm.generate_ids([])), "ids=[]: the prompt is empty", "ids")


def test_ids_may_be_a_tensor_tuple_or_range(llm):
    ids = [5, 6, 7, 8, 9]
    want = list(llm.generate_ids(ids, max_new_tokens=4, ignore_eos=True))
    for same in (torch.tensor(ids), tuple(ids), range(5, 10)):
        assert list(llm.generate_ids(same, max_new_tokens=4, ignore_eos=True)) == want


def test_max_new_tokens_zero_makes_nothing(llm):
    assert list(llm.generate_ids([5, 6, 7], max_new_tokens=0)) == []
    assert "".join(llm.generate(PROMPTS[0], max_new_tokens=0)) == ""


def test_a_stop_string_is_one_stop_string(llm):
    full = "".join(llm.generate(PROMPTS[0], max_new_tokens=30, ignore_eos=True))
    stop = full[len(full) // 2:len(full) // 2 + 2]
    cut = "".join(llm.generate(PROMPTS[0], max_new_tokens=30, ignore_eos=True, stop=stop))
    assert cut == full[:full.find(stop)]
    assert cut == "".join(llm.generate(PROMPTS[0], max_new_tokens=30, ignore_eos=True,
                                       stop=[stop]))


# --- the command line: the same rules and defaults, in its own words ---------------------------

def test_the_cli_says_the_flag_for_the_same_mistake(llm, folder, capsys):
    refused(lambda: Engine(llm.model, llm.tokenizer, n_global=-3),
            "n_global=-3: must be an integer >= 0", "n_global")
    assert cli.main(["--model", str(folder), "--prompt-text", "hi", "--n-global", "-3"]) == 1
    assert capsys.readouterr().err == "tinfinite: error: --n-global -3: must be an integer >= 0\n"


@pytest.mark.parametrize("api, flags", [
    ("n_global=-3: must be an integer >= 0", "--n-global -3: must be an integer >= 0"),
    ("dtype='int8': choose one of auto", "--dtype int8: choose one of auto"),
    ("system needs chat=True", "--system needs --chat"),
    ("attention='full' sees every token: it takes no n_local or top_k_middle",
     "--attention full sees every token: it takes no --n-local or --top-k-middle"),
    ("device='cuda': no CUDA device; use device='cpu'", "--device cuda: no CUDA device; use --device cpu"),
    ("model_dir=3: must be a folder path", "--model 3: must be a folder path"),
])
def test_cli_flag_message(api, flags):
    assert cli.flag_message(UserError(api, "x")) == flags
    assert cli.flag_message(UserError(api)) == api  # no param: not an API argument's message


def api_defaults() -> dict:
    defaults = {}
    for call in (Engine.__init__, Engine.load, Engine.generate, Engine.generate_ids):
        for name, p in inspect.signature(call).parameters.items():
            if p.default is not p.empty:
                defaults[name] = p.default
    return defaults


@pytest.mark.parametrize("argv", [["--prompt-text", "x"], ["perplexity", "--file", "x"],
                                  ["passkey"]])
def test_cli_defaults_are_the_api_defaults(argv):
    parser = {"perplexity": cli.perplexity_parser, "passkey": cli.passkey_parser}.get(
        argv[0], cli.generate_parser)()
    a = vars(parser.parse_args(argv[1:] if argv[0] in ("perplexity", "passkey") else argv))
    api = api_defaults()
    # passkey's --seed picks its questions (default 0), not a generation's sampling
    shared = [name for name in a if name in api and (name, argv[0]) != ("seed", "passkey")]
    assert {"dtype", "device", "quantize", "attention", "n_local", "n_global", "chunk_size",
            "top_k_middle", "top_k_from_layer", "top_k_block", "top_k_offload",
            "start_distances"} <= set(shared)
    for name in shared:
        assert list(a[name]) == list(api[name]) if name == "stop" else a[name] == api[name], name
        assert name in cli.PARAMS, name  # its errors are said with its flag


def test_start_distances_reach_the_cache(llm):
    """The engine hands start_distances to its cache: past the window "spread" and a distance
    of 5 score differently from the paper's ceiling, and "capped" is the ceiling for a window
    of at most half the trained length (24 of 64); inside it all are vanilla attention."""
    ids = llm.tokenizer.encode(" ".join(PROMPTS * 4))
    assert len(ids) > 2 * 24 and llm.model.cfg.max_position_embeddings == 64
    rules = (*settings.START_DISTANCES, 5)
    ppl = {d: Engine(llm.model, llm.tokenizer, n_local=24, n_global=4, chunk_size=8,
                     start_distances=d).perplexity(ids).ppl for d in rules}
    assert len({ppl["ceiling"], ppl["spread"], ppl[5]}) == 3
    assert ppl["capped"] == ppl["ceiling"]
    short = {d: Engine(llm.model, llm.tokenizer, n_local=24, n_global=4, chunk_size=8,
                       start_distances=d).perplexity(ids[:24]).ppl for d in rules}
    assert len(set(short.values())) == 1


def test_defaults_are_the_settings():
    api = api_defaults()
    assert (api["attention"], api["chunk_size"], api["top_k_from_layer"], api["dtype"],
            api["max_new_tokens"]) == ("lambda", 256, 4, "auto", 256)
    assert settings.N_GLOBAL == 64 and settings.ATTENTIONS == ("lambda", "full", "window")


def test_help_says_what_dtype_auto_means(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "auto (default): the checkpoint's own dtype" in out and "natively" in out


# --- dtype "auto" ------------------------------------------------------------------------------

@pytest.mark.parametrize("stored, native, chosen", [
    ("float32", True, "float32"),      # the default model's config: nothing changes
    ("bfloat16", True, "bfloat16"),
    ("bfloat16", False, "float32"),    # a CPU without bf16 kernels would emulate it
    ("float16", False, "float32"),     # float16 on a CPU
    ("float64", True, "float32"),      # not a dtype the engine runs
])
def test_dtype_auto_is_the_checkpoints_where_it_runs_natively(tmp_path, monkeypatch, stored,
                                                              native, chosen):
    folder = tiny_llama(tmp_path / "m", torch_dtype=stored)
    monkeypatch.setattr(settings, "runs_natively", lambda dtype, device: native)
    engine = Engine.load(folder)
    assert engine.dtype == chosen
    assert engine.model.embed_tokens.weight.dtype == getattr(torch, chosen)
    assert Engine.load(folder, dtype="float32").dtype == "float32"  # asked for: as asked


def test_which_dtypes_run_natively(monkeypatch):
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    assert all(settings.runs_natively("float32", d) for d in (cpu, cuda, mps))
    assert not settings.runs_natively("float16", cpu)
    assert settings.runs_natively("bfloat16", cpu) == torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert settings.runs_natively("bfloat16", mps) and settings.runs_natively("float16", mps)
    for bf16 in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
        assert settings.runs_natively("bfloat16", cuda) == bf16
        assert settings.runs_natively("float16", cuda)


def test_the_cli_reports_the_dtype_it_chose(folder, capsys):
    assert cli.main(["--model", str(folder), "--prompt-text", "hi", "--max-new-tokens", "2"]) == 0
    assert "| float32]" in capsys.readouterr().err


def test_the_cache_is_float32_on_the_cpu_unless_told(tmp_path):
    """kv_dtype "auto": float32 keys and values on the CPU even for a bfloat16 model (torch's
    attention is faster in it there); asked for, as asked. Either way the model runs in its
    own dtype, and the two caches give nearly, not exactly, the same logits."""
    folder = tiny_llama(tmp_path / "m", torch_dtype="bfloat16")
    where = dict(dtype="bfloat16", n_local=24, chunk_size=8)
    auto, told = Engine.load(folder, **where), Engine.load(folder, kv_dtype="bfloat16", **where)
    assert auto.dtype == told.dtype == "bfloat16"
    assert auto.cache.keys.dtype == auto.cache.values.dtype == torch.float32
    assert told.cache.keys.dtype == told.cache.values.dtype == torch.bfloat16
    ids = list(range(3, 70))                     # past the window of 24
    a, b = auto.prefill(ids).float(), told.prefill(ids).float()
    assert not torch.equal(a, b)
    assert torch.allclose(a, b, atol=0.05 * a.abs().max().item()), (a - b).abs().max()
    refused(lambda: Engine.load(folder, kv_dtype="int8"), "kv_dtype='int8': choose one of",
            "kv_dtype")


# --- calls take turns --------------------------------------------------------------------------

def greedy(llm, prompt, pause=0.0) -> str:
    text = ""
    for piece in llm.generate(prompt, max_new_tokens=24, ignore_eos=True):
        text += piece
        time.sleep(pause)  # hold the generator open while the other thread wants the engine
    return text


def test_two_threads_each_get_their_own_text(llm):
    alone = {p: greedy(llm, p) for p in PROMPTS}
    assert alone[PROMPTS[0]] != alone[PROMPTS[1]]
    for _ in range(3):
        got, start = {}, threading.Barrier(len(PROMPTS))

        def run(prompt):
            start.wait()
            got[prompt] = greedy(llm, prompt, pause=0.001)

        threads = [threading.Thread(target=run, args=(p,)) for p in PROMPTS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert got == alone


def test_a_thread_waits_for_another_threads_unfinished_generator(llm):
    ids = [5, 6, 7, 8, 9]
    want = list(llm.generate_ids(ids, max_new_tokens=6, ignore_eos=True))
    first = llm.generate_ids([9, 8, 7], max_new_tokens=6, ignore_eos=True)
    next(first)                                  # holds the engine from here
    got = []
    other = threading.Thread(target=lambda: got.append(llm.perplexity(ids).nll))
    other.start()
    other.join(timeout=0.5)
    assert other.is_alive() and not got          # waiting
    rest = list(first)                           # finishing releases it
    other.join(timeout=60)
    assert got and len(rest) == 5
    assert list(llm.generate_ids(ids, max_new_tokens=6, ignore_eos=True)) == want


def test_the_same_thread_with_an_unfinished_generator_is_told_not_to_wait(llm):
    pieces = llm.generate(PROMPTS[0], max_new_tokens=8, ignore_eos=True)
    next(pieces)
    busy = "the engine is busy with an unfinished generate() in this thread; finish or close it"
    for call in (lambda: llm.generate(PROMPTS[1]), lambda: llm.generate_ids([1, 2]),
                 lambda: llm.score("hello"), lambda: llm.perplexity([1, 2, 3]),
                 lambda: llm.token_nlls([1, 2]), lambda: llm.prefill([1, 2])):
        with pytest.raises(UserError, match=busy.replace("(", r"\(").replace(")", r"\)")):
            call()
    pieces.close()                               # closing releases the engine
    assert llm.score("hello").tokens > 0


def test_an_abandoned_generator_releases_the_engine(llm):
    pieces = llm.generate(PROMPTS[0], max_new_tokens=8, ignore_eos=True)
    next(pieces)
    del pieces
    gc.collect()
    done = []
    other = threading.Thread(target=lambda: done.append(llm.score("hello")))
    other.start()
    other.join(timeout=60)
    assert done
    never_started = llm.generate(PROMPTS[0])     # holds nothing until its first next()
    assert llm.score("hello").tokens > 0
    del never_started


def test_a_prompt_starts_with_one_call_over_the_window(llm):
    """Inside the window the rule is causal attention, so a prompt's first call into an empty
    cache takes up to the window (n_local = 24 here) with the kernel's causal flag and no
    mask; the rest, and a resumed prompt, goes in chunks (chunk_size = 8)."""
    calls = []
    hook = llm.model.register_forward_pre_hook(lambda model, args: calls.append(args[0].shape[1]))
    try:
        llm.prefill(list(range(3, 13)))
        assert calls == [10] and llm.cache.causal and llm.cache.mask is None
        llm.prefill(list(range(3, 23)), resume=True)
        assert calls == [10, 8, 8, 4] and not llm.cache.causal
        calls.clear()
        llm.prefill(list(range(3, 43)))
        assert calls == [24, 8, 8]
    finally:
        hook.remove()


# --- memory: refused before allocating ---------------------------------------------------------

def fake_free(monkeypatch, free: int):
    monkeypatch.setattr(memory, "available_bytes", lambda device: free)


def test_the_estimate_counts_every_item(llm):
    cfg = llm.model.cfg                          # 2 layers, 2 kv heads of 4 heads, head_dim 16
    slot = 2 * 2 * 2 * 16 * 4                    # K and V, every layer, float32
    ring, n_global, chunk, group = 64 + 8 - 1, 64, 8, 2
    per_token = (4 * cfg.hidden_dim + 8 * cfg.dim) * 4           # activations, float32 model
    need = memory.run_bytes(cfg, attention="lambda", n_local=64, n_global=n_global,
                            chunk_size=chunk, top_k_middle=3, itemsize=4, tokens=100)
    slots = ring + n_global + group * 3 + 3      # + spare slots: 144, 4 equal runs
    assert need == {
        "cache": slot * slots + 2 * 2 * n_global * 16 * 4 + 8 * ring,  # + start keys, positions
        "mask": 2 * group * chunk * slots * 4,                          # per head, wide chunk
        "logits": 2 * chunk * cfg.vocab_size * 4,                       # and the float32 copy
        "activations": 64 * per_token,                                  # a first call: the window
        "top-k keys/values": slot * 128 + slot * 64,                    # 16 -> 128, and the old half
    }
    by_blocks = memory.run_bytes(cfg, attention="lambda", n_local=64, n_global=n_global,
                                 chunk_size=chunk, top_k_middle=3, itemsize=4, tokens=100,
                                 top_k_block=4)
    assert by_blocks == {**need, "top-k block keys": slot // 2 * 32 + slot // 2 * 16}  # 25 -> 32
    full = memory.run_bytes(cfg, attention="full", n_local=64, n_global=0, chunk_size=chunk,
                            top_k_middle=0, itemsize=4, tokens=100)
    assert full == {"cache": slot * 128 + slot * 64 + 8 * 128, "mask": group * chunk * 128 * 4,
                    "logits": 2 * chunk * cfg.vocab_size * 4, "activations": 64 * per_token}
    short = memory.run_bytes(cfg, attention="lambda", n_local=64, n_global=n_global,
                             chunk_size=chunk, top_k_middle=0, itemsize=4, tokens=10)
    assert short["activations"] == 10 * per_token              # a prompt shorter than the window


def test_a_run_fits_exactly_in_what_is_free(llm, monkeypatch):
    options = dict(n_local=24, chunk_size=8, top_k_middle=2)
    need = memory.run_bytes(llm.model.cfg, attention="lambda", n_local=24, n_global=64,
                            chunk_size=8, top_k_middle=2, itemsize=4)
    fake_free(monkeypatch, sum(need.values()))
    engine = Engine(llm.model, llm.tokenizer, **options)
    assert "".join(engine.generate(PROMPTS[0], max_new_tokens=4)) is not None
    fake_free(monkeypatch, sum(need.values()) - 1)
    refused(lambda: Engine(llm.model, llm.tokenizer, **options), "n_local=24", "n_local")


def test_a_huge_chunk_size_is_refused(llm, monkeypatch):
    fake_free(monkeypatch, 2**30)
    message = refused(lambda: Engine(llm.model, llm.tokenizer, chunk_size=10**6),
                      "n_local=64, chunk_size=1000000: the run needs", "n_local")
    assert "but only 1.0 GiB is free; use a smaller n_local, chunk_size or top_k_middle, " \
           "or dtype='bfloat16'" in message


def test_a_huge_window_is_refused(llm, monkeypatch):
    fake_free(monkeypatch, 2**30)
    refused(lambda: Engine(llm.model, llm.tokenizer, n_local=10**9), "n_local=1000000000",
            "n_local")


def test_a_huge_top_k_middle_is_refused(llm, monkeypatch):
    fake_free(monkeypatch, 2**30)
    message = refused(lambda: Engine(llm.model, llm.tokenizer, top_k_middle=10**8), "n_local=64",
                      "n_local")
    assert "top_k_middle=100000000" in message


def test_top_k_middle_with_a_long_input_is_refused_before_it_grows(llm, monkeypatch):
    fake_free(monkeypatch, 256 * 2**20)
    engine = Engine(llm.model, llm.tokenizer, n_local=24, chunk_size=8, top_k_middle=2)
    assert engine.perplexity(list(range(5, 300))).tokens == 294   # short: fits
    before = memory.held_bytes(engine.cache)
    refused(lambda: engine.perplexity([5] * 10**6), "top_k_middle=2 for 1000000 tokens: the run "
            "needs", "top_k_middle")
    refused(lambda: list(engine.generate_ids([5] * 10**6, max_new_tokens=1)),
            "top_k_middle=2 for 1000000 tokens", "top_k_middle")
    assert memory.held_bytes(engine.cache) == before             # nothing grew


def test_full_attention_with_a_long_input_is_refused(llm, monkeypatch):
    fake_free(monkeypatch, 256 * 2**20)
    engine = Engine(llm.model, llm.tokenizer, attention="full", chunk_size=8)
    refused(lambda: engine.perplexity([5] * 10**6),
            "attention='full', chunk_size=8 for 1000000 tokens: the run needs", "attention")


def test_offloaded_top_k_needs_disk_not_memory(llm, tmp_path, monkeypatch):
    """With top_k_offload the growing keys and values are counted against the folder's free
    space, and a run they would not fit in is refused before it starts."""
    engine = Engine(llm.model, llm.tokenizer, n_local=24, chunk_size=8, top_k_middle=2,
                    top_k_offload=str(tmp_path))
    engine.perplexity(list(range(100)))  # fits
    full = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full._replace(free=1000))
    refused(lambda: engine.perplexity(list(range(100))),
            f"top_k_offload={str(tmp_path)!r}: 100 tokens need", "top_k_offload")
