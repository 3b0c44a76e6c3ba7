"""Fuzz: random damage to a tiny model folder's JSON files never gets past the one-line error.

A fixed seed draws a few hundred mutations of config.json, generation_config.json,
tokenizer_config.json and model.safetensors.index.json (wrong types, missing keys, extreme
numbers, NaN and infinities, nested junk, broken JSON). Each runs the command line in-process
with --max-new-tokens 1: it either works (exit 0) or exits 1 with exactly one line on stderr
starting "tinfinite: error:". An exception that escapes fails the test, naming the mutation.
"""
import json
import random
import shutil

import pytest

from tests.tiny import tiny_llama
from tinfinite import cli

SEED, RUNS = 20261129, 300
FILES = ("config.json", "generation_config.json", "tokenizer_config.json",
         "model.safetensors.index.json")
TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant: {% endif %}")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    folder = tiny_llama(tmp_path_factory.mktemp("good") / "model", shards=2)
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": [1], "pad_token_id": 1, "temperature": 0.7}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": True,
         "chat_template": TEMPLATE, "model_max_length": 64}))
    return folder


def junk(rng: random.Random, depth: int = 0):
    """A JSON value of any type, some of them extreme."""
    choices = [None, True, False, 0, -1, 1, 2.5, -7.0, 10**30, -(10**30), 2**31, 2**63,
               float("nan"), float("inf"), float("-inf"), 1e-300, "", "576", "false", "llama",
               "x" * 1000, [], {}, [1, 2, 3]]
    if depth < 3:
        choices += [[junk(rng, depth + 1)], {"rope_type": junk(rng, depth + 1),
                                             "factor": junk(rng, depth + 1)}]
    return rng.choice(choices)


def mutate(rng: random.Random, doc):
    """doc with one random change (and a description of it), or broken text."""
    if rng.random() < 0.05:
        return "whole file replaced", junk(rng)
    node, path = doc, []
    while isinstance(node, dict) and node and rng.random() < 0.8:
        key = rng.choice(sorted(node))
        path.append(key)
        if not isinstance(node[key], dict) or rng.random() < 0.5:
            break
        node = node[key]
    if not path or not isinstance(node, dict):
        return "junk key added", {**doc, "junk": junk(rng)}
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key, old = path[-1], parent[path[-1]]
    what = rng.choice(["delete", "junk", "string", "scale", "negate", "nest"])
    if what == "delete":
        del parent[key]
    elif what == "junk":
        parent[key] = junk(rng)
    elif what == "string":
        parent[key] = str(old)
    elif what == "scale" and isinstance(old, (int, float)) and not isinstance(old, bool):
        parent[key] = old * rng.choice([0, 2, 10**6, 10**20, 0.5, 1e-9])
    elif what == "negate" and isinstance(old, (int, float)):
        parent[key] = -old
    else:
        parent[key] = {"value": old, "junk": junk(rng)}
    return f"{'.'.join(path)}: {what} -> {json.dumps(parent.get(key))[:80]}", doc


def test_damaged_json_is_one_line_or_works(good, tmp_path, capsys):
    work = shutil.copytree(good, tmp_path / "model")
    originals = {name: json.loads((good / name).read_text()) for name in FILES}
    rng = random.Random(SEED)
    outcomes = {0: 0, 1: 0}
    for run in range(RUNS):
        for name, doc in originals.items():
            (work / name).write_text(json.dumps(doc))
        name = rng.choice(FILES)
        what, doc = mutate(rng, json.loads(json.dumps(originals[name])))
        text = json.dumps(doc)  # allow_nan: NaN and Infinity, as Python writes them
        if rng.random() < 0.03:
            text, what = text[:rng.randrange(len(text))], "truncated"
        (work / name).write_text(text)
        argv = ["--model", str(work), "--prompt-text", "hello", "--max-new-tokens", "1",
                "--threads", "1", *(["--chat"] if rng.random() < 0.3 else [])]
        case = f"run {run}: {name} {what}"
        try:
            rc = cli.main(argv)
        except Exception as e:  # noqa: BLE001 (the failure being looked for)
            pytest.fail(f"{case}: {type(e).__name__}: {e} escaped")
        out, err = capsys.readouterr()
        assert rc in (0, 1), f"{case}: exit {rc}"
        outcomes[rc] += 1
        if rc == 1:
            assert err.startswith("tinfinite: error: ") and err.count("\n") == 1 and \
                err.endswith("\n"), f"{case}: {err!r}"
        else:
            assert out.endswith("\n"), case
    assert outcomes[0] > 20 and outcomes[1] > 20, outcomes  # both kinds of outcome were drawn
