"""One test per bad input: exit code 1, one line on stderr naming the file or flag, no traceback.

Each test breaks a copy of a good tiny model folder (or a flag) in a temp dir and runs
main.main in-process; an exception other than UserError would escape and fail the test.
"""
import json
import os
import pickle
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from tinfinite import cli as main
from tests.tiny import make_tiny_model, tiny_llama
from tinfinite.errors import UserError


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return tiny_llama(tmp_path_factory.mktemp("good"))


@pytest.fixture
def model(good, tmp_path):
    """A fresh copy of the good folder, to break."""
    return shutil.copytree(good, tmp_path / "model")


def fails(capsys, argv, *names) -> str:
    """Run the CLI, expect a user error; return its one line after checking it names `names`."""
    rc = main.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 1
    assert out.strip() == ""
    assert "Traceback" not in err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("tinfinite: error: ")
    for name in names:
        assert str(name) in err
    return err


def gen(model, *flags):
    return ["--model", model, "--prompt-text", "hello", "--max-new-tokens", 2, *flags]


def edit_config(model, **changes):
    cfg = json.loads((model / "config.json").read_text())
    cfg.update(changes)
    (model / "config.json").write_text(json.dumps(cfg))


def edit_tensors(model, change):
    """Rewrite model.safetensors with change(state dict) applied."""
    state = load_file(str(model / "model.safetensors"))  # memory-mapped: write a new file
    change(state)
    save_file(state, str(model / "new.safetensors"))
    os.replace(model / "new.safetensors", model / "model.safetensors")


# --- the model folder ------------------------------------------------------------------------

def test_model_folder_missing(capsys, tmp_path):
    fails(capsys, gen(tmp_path / "nowhere"), tmp_path / "nowhere", "--model")


def test_no_config_json(capsys, model):
    (model / "config.json").unlink()
    fails(capsys, gen(model), model / "config.json")


def test_config_not_json(capsys, model):
    (model / "config.json").write_text("{model_type: llama")
    fails(capsys, gen(model), model / "config.json", "not valid JSON")


def test_unsupported_architecture(capsys, model):
    edit_config(model, model_type="mistral", architectures=["MistralForCausalLM"])
    fails(capsys, gen(model), model / "config.json", "mistral", "not supported")


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 4.0},
                                     {"type": "dynamic", "factor": 2.0}])
def test_unsupported_rope_scaling(capsys, model, scaling):
    edit_config(model, rope_scaling=scaling)
    name = scaling.get("rope_type") or scaling["type"]
    fails(capsys, gen(model), model / "config.json", f"RoPE scaling '{name}' is not supported")


def test_rope_scaling_without_factor(capsys, model):
    edit_config(model, rope_scaling={"rope_type": "linear"})
    fails(capsys, gen(model), model / "config.json", "factor")


@pytest.mark.parametrize("field, value", [("vocab_size", -5), ("num_key_value_heads", 0),
                                          ("num_attention_heads", 0), ("hidden_size", "abc")])
def test_nonsensical_config_value(capsys, model, field, value):
    edit_config(model, **{field: value})
    fails(capsys, gen(model), model / "config.json")


def test_safetensors_truncated(capsys, model):
    st = model / "model.safetensors"
    st.write_bytes(st.read_bytes()[:st.stat().st_size // 2])
    fails(capsys, gen(model), st, "not a valid safetensors file")


@pytest.mark.parametrize("content", [
    struct.pack("<Q", 16) + b"not json at all!" + bytes(64),  # header is not JSON
    bytes(4096),                                               # a file of zeros
    b"",                                                       # empty
    struct.pack("<Q", 2**62) + b"{}",                          # header length absurd
], ids=["header-not-json", "zeros", "empty", "huge-header"])
def test_safetensors_corrupt_header(capsys, model, content):
    (model / "model.safetensors").write_bytes(content)
    fails(capsys, gen(model), model / "model.safetensors", "not a valid safetensors file")


def test_tensor_missing(capsys, model):
    edit_tensors(model, lambda s: s.pop("model.norm.weight"))
    fails(capsys, gen(model), model, "model.norm.weight", "missing")


def test_tensor_extra(capsys, model):
    edit_tensors(model, lambda s: s.update({"model.layers.7.extra": torch.zeros(2)}))
    fails(capsys, gen(model), model / "model.safetensors", "model.layers.7.extra", "unexpected")


def test_tensor_misshaped(capsys, model):
    edit_tensors(model, lambda s: s.update({"model.norm.weight": torch.zeros(3)}))
    fails(capsys, gen(model), model / "model.safetensors", "model.norm.weight", "[3]", "[64]")


@pytest.mark.parametrize("dtype, name", [(torch.int8, "I8"), (torch.float64, "F64")])
def test_tensor_unsupported_dtype(capsys, model, dtype, name):
    edit_tensors(model, lambda s: s.update({"model.norm.weight": s["model.norm.weight"].to(dtype)}))
    fails(capsys, gen(model), model / "model.safetensors", "model.norm.weight", name)


class Marker:
    """Unpickling this would run os.system and create a file: proof that pickle was loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_pickle_named_safetensors_is_never_unpickled(capsys, model, tmp_path):
    marker = tmp_path / "unpickled"
    (model / "model.safetensors").write_bytes(pickle.dumps({"model.norm.weight": Marker(marker)}))
    fails(capsys, gen(model), model / "model.safetensors", "is a pickle")
    assert not marker.exists()


def test_torch_save_named_safetensors_is_refused(capsys, model):
    state = {k: v.clone() for k, v in load_file(str(model / "model.safetensors")).items()}
    torch.save(state, str(model / "model.safetensors"))
    fails(capsys, gen(model), model / "model.safetensors", "is a pickle")


def test_only_pickle_weights(capsys, model):
    (model / "model.safetensors").rename(model / "pytorch_model.bin")
    fails(capsys, gen(model), model, "safetensors only")


def test_shard_listed_in_index_is_missing(capsys, model):
    (model / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}))
    fails(capsys, gen(model), model / "model-00002-of-00002.safetensors", "not found")


# --- every field read from the model folder's JSON: type and range ---------------------------

INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize("field, value, expected", [
    ("hidden_size", "576", "an integer"),
    ("num_hidden_layers", 2.5, "an integer"),
    ("num_hidden_layers", True, "an integer"),  # bool is an int in Python, not in JSON
    ("num_hidden_layers", 10**6, "to 4096"),
    ("vocab_size", 10**30, "an integer"),
    ("max_position_embeddings", 10**30, "an integer"),
    ("max_position_embeddings", -1, "an integer"),
    ("head_dim", "16", "an integer"),
    ("head_dim", 0, "an integer"),
    ("num_key_value_heads", [2], "an integer"),
    ("tie_word_embeddings", "false", "true or false"),
    ("attention_bias", "no", "true or false"),
    ("rms_norm_eps", 0, "a positive number"),
    ("rms_norm_eps", -1e-5, "a positive number"),
    ("rms_norm_eps", NAN, "a positive number"),
    ("rms_norm_eps", INF, "a positive number"),
    ("rope_theta", "1e4", "a positive number"),
    ("rope_scaling", "linear", "an object"),
    ("rope_scaling", [{"rope_type": "linear"}], "an object"),
    ("rope_scaling", {"rope_type": 3}, "rope_scaling.rope_type"),
    ("rope_scaling", {"rope_type": "linear", "factor": 0}, "rope_scaling.factor"),
    ("rope_scaling", {"rope_type": "linear", "factor": -2.0}, "rope_scaling.factor"),
    ("rope_scaling", {"rope_type": "linear", "factor": INF}, "rope_scaling.factor"),
    ("rope_scaling", {"rope_type": "linear", "factor": NAN}, "rope_scaling.factor"),
    ("rope_scaling", {"rope_type": "linear", "factor": "2"}, "rope_scaling.factor"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                      "high_freq_factor": 4.0}, "high_freq_factor"),
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0,
                      "original_max_position_embeddings": 8192.5}, "original_max_position"),
    ("rope_parameters", {"rope_type": "default", "rope_theta": -1}, "rope_parameters.rope_theta"),
    ("torch_dtype", 16, "a string"),
    ("model_type", ["llama"], "not supported"),
    ("architectures", "LlamaForCausalLM", "model_type"),  # with model_type missing: no crash
])
def test_config_field_of_wrong_type_or_range(capsys, model, field, value, expected):
    edit_config(model, **{field: value})
    if field == "architectures":
        edit_config(model, model_type=None)
    err = fails(capsys, gen(model), model / "config.json", expected)
    assert field in err or field == "architectures"


@pytest.mark.parametrize("field, value", [("vocab_size", 2**31 - 1), ("hidden_size", 2**30),
                                          ("intermediate_size", 2**31 - 1),
                                          ("num_hidden_layers", 4096)])
def test_extreme_sizes_are_refused_before_allocating(capsys, model, field, value):
    """The sizes are valid numbers, but the tensors say otherwise: refused from the headers,
    before the model is built (a 2^31 x 64 embedding would be 512 GiB)."""
    edit_config(model, **{field: value})
    fails(capsys, gen(model), "config.json")


@pytest.mark.parametrize("file, fields, expected", [
    ("generation_config.json", {"eos_token_id": "1"}, "eos_token_id"),
    ("generation_config.json", {"eos_token_id": [1, 2.0]}, "eos_token_id"),
    ("generation_config.json", {"eos_token_id": 10**6}, "below config.json's vocab_size"),
    ("generation_config.json", {"bos_token_id": -1}, "bos_token_id"),
    ("generation_config.json", {"bos_token_id": [0]}, "bos_token_id"),
    ("generation_config.json", [1, 2], "a JSON object"),
    ("config.json", {"bos_token_id": True}, "bos_token_id"),
    ("config.json", {"eos_token_id": 500}, "below config.json's vocab_size"),
    ("tokenizer_config.json", {"add_bos_token": "true"}, "add_bos_token"),
    ("tokenizer_config.json", {"bos_token": 5}, "bos_token"),
    ("tokenizer_config.json", {"eos_token": {"content": ["</s>"]}}, "eos_token"),
    ("tokenizer_config.json", {"chat_template": 5}, "chat_template"),
    ("tokenizer_config.json", {"chat_template": [{"name": "default"}]}, "chat_template"),
    ("tokenizer_config.json", "{}", "a JSON object"),
])
def test_tokenizer_field_of_wrong_type_or_range(capsys, model, file, fields, expected):
    path = model / file
    if isinstance(fields, dict):
        old = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps({**old, **fields}))
    else:
        path.write_text(json.dumps(fields))
    fails(capsys, gen(model), path, expected)


def test_tokenizer_larger_than_the_vocabulary(capsys, model):
    tokens = json.loads((model / "tokenizer.json").read_text())["model"]["vocab"]
    make_tiny_model(model, vocab_size=len(tokens) - 10, bos_token_id=0, eos_token_id=1)
    fails(capsys, gen(model), model / "tokenizer.json", f"ids up to {len(tokens) - 1}",
          f"vocab_size is {len(tokens) - 10}")


@pytest.mark.parametrize("index, expected", [
    ([], "a JSON object"),
    ({"weight_map": ["model.safetensors"]}, "weight_map"),
    ({"weight_map": {"model.norm.weight": 3}}, "3"),
    ({"weight_map": {"model.norm.weight": "../model.safetensors"}}, "a file name"),
], ids=["list", "map-is-list", "value-not-string", "path"])
def test_bad_safetensors_index(capsys, model, index, expected):
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    fails(capsys, gen(model), model / "model.safetensors.index.json", expected)


def test_tensor_in_a_shard_the_index_does_not_name_for_it(capsys, model):
    weight_map = {name: "model.safetensors" for name in load_file(model / "model.safetensors")}
    del weight_map["model.norm.weight"]
    weight_map["model.norm.weight"] = "other.safetensors"
    save_file({"model.norm.weight": torch.ones(64)}, str(model / "other.safetensors"))
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    fails(capsys, gen(model), model / "model.safetensors", "model.norm.weight",
          "model.safetensors.index.json", "another file")


def test_missing_tokenizer(capsys, model):
    (model / "tokenizer.json").unlink()
    fails(capsys, gen(model), model, "tokenizer.json")


# --- the prompt file -------------------------------------------------------------------------

@pytest.mark.parametrize("content, what", [
    (None, "file not found"),
    (b"", "empty"),
    (b" \n\t\n", "empty"),
    (bytes(range(256)), "binary"),
    ("café".encode("latin-1"), "not UTF-8"),
], ids=["missing", "empty", "blank", "binary", "latin-1"])
def test_bad_prompt_file(capsys, good, tmp_path, content, what):
    prompt = tmp_path / "prompt.txt"
    if content is not None:
        prompt.write_bytes(content)
    fails(capsys, ["--model", good, "--prompt", prompt], "--prompt", prompt, what)


def test_prompt_is_a_folder(capsys, good, tmp_path):
    fails(capsys, ["--model", good, "--prompt", tmp_path], "--prompt", "not a file")


def test_bad_perplexity_file(capsys, good, tmp_path):
    fails(capsys, ["perplexity", "--model", good, "--file", tmp_path / "nope.txt"],
          "--file", tmp_path / "nope.txt")


def test_perplexity_needs_two_tokens(capsys, good, tmp_path):
    (tmp_path / "one.txt").write_text("T", encoding="utf-8")
    fails(capsys, ["perplexity", "--model", good, "--file", tmp_path / "one.txt"], "--file")


# --- flags -----------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [
    ("--max-new-tokens", -1),
    ("--temperature", -0.5), ("--temperature", "nan"), ("--temperature", "inf"),
    ("--top-p", 0), ("--top-p", 1.5), ("--top-p", "nan"),
    ("--top-k", -1),
    ("--n-local", 0), ("--n-local", -8),
    ("--n-global", -1),
    ("--chunk-size", 0),
    ("--seed", 2**70),
    ("--dtype", "int8"),
    ("--device", "tpu"),
    ("--device", "cpu:x"),
])
def test_bad_flag(capsys, good, flag, value):
    fails(capsys, gen(good, flag, value), flag)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_not_there(capsys, good):
    fails(capsys, gen(good, "--device", "cuda"), "--device cuda", "--device cpu")


def test_window_larger_than_memory(capsys, good):
    # The cache of a 10^12-token window needs hundreds of TiB; refused before allocating.
    fails(capsys, gen(good, "--n-local", 10**12), "--n-local", "GiB")


def test_passkey_lengths_have_an_upper_bound(capsys, good):
    fails(capsys, ["passkey", "--model", good, "--lengths", 2**24 + 1], f"--lengths {2**24 + 1}",
          "at most")


def test_system_without_chat(capsys, good):
    fails(capsys, gen(good, "--system", "be brief"), "--system", "--chat")


def test_chat_without_template(capsys, good):
    fails(capsys, gen(good, "--chat"), "chat template", "--chat")


def test_argparse_errors_exit_2_with_usage(capsys, good):
    for argv in (gen(good, "--no-such-flag"), gen(good, "--top-k", "many")):
        with pytest.raises(SystemExit) as e:
            main.main([str(a) for a in argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: main.py") and "Traceback" not in err


def test_debug_shows_the_traceback(good, tmp_path):
    with pytest.raises(UserError):
        main.main(["--model", str(tmp_path / "nowhere"), "--prompt-text", "hi", "--debug"])


def test_model_path_that_is_a_file(capsys, good):
    fails(capsys, gen(good / "config.json"), "config.json")


def test_tiny_temperature_is_greedy_not_a_crash(capsys, good):
    greedy = main.main([str(a) for a in gen(good, "--max-new-tokens", 5)])
    greedy_out = capsys.readouterr().out
    assert main.main([str(a) for a in gen(good, "--max-new-tokens", 5, "--temperature", 1e-40,
                                          "--seed", 1)]) == greedy == 0
    assert capsys.readouterr().out == greedy_out



def test_float16_overflow_is_reported_not_printed(capsys, model):
    """Activations past float16's 65504: the logits turn NaN/inf, and the run says so."""
    weights = load_file(model / "model.safetensors")
    weights["model.embed_tokens.weight"] *= 1e6
    save_file(weights, str(model / "model.safetensors"))
    fails(capsys, gen(model, "--dtype", "float16"), "float16", "NaN")
    fails(capsys, ["perplexity", "--model", model, "--file", __file__, "--dtype", "float16"],
          "float16")
    assert main.main([str(a) for a in gen(model)]) == 0  # float32 copes with the same weights
