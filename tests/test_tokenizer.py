"""Tokenizer specification, on tiny tokenizers trained here (no network, no real model).

Both backends are covered: a byte-level BPE tokenizer.json built with `tokenizers`, and a
sentencepiece BPE tokenizer.model with byte fallback. Expectations are computed from the
underlying libraries, so a wrong special id, a doubled BOS or a broken stream shows up.
"""

import json

import pytest
import sentencepiece
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from tinfinite.errors import UserError
from tinfinite.tokenizer import StreamDecoder, TextStream, Tokenizer

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
# Training text: the llama, the kanji 本/語 and ï never occur in it, so in TEXT they must be
# spelled as several byte tokens, which is what the streaming tests need.
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world, hello again; the café was full.",
    "A small engine reads a model folder and writes text.",
    "日本 is written with two characters 😀 and a smile.",
] * 20
TEXT = "Hello wörld 🦙 日本語 naïve café! 😀 The end."
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_json(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")


def build_bpe(folder, with_post_processor=True):
    """A byte-level BPE tokenizer.json whose post-processor (optionally) prepends <s>."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    if with_post_processor:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return tok


@pytest.fixture
def bpe_folder(tmp_path):
    folder = tmp_path / "bpe"
    build_bpe(folder)
    write_json(folder / "tokenizer_config.json",
               {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": CHATML})
    return folder


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A sentencepiece BPE model with byte fallback, trained once for the module."""
    work = tmp_path_factory.mktemp("sp_train")
    (work / "corpus.txt").write_text("\n".join(CORPUS), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "m"), vocab_size=400,
        model_type="bpe", byte_fallback=True, normalization_rule_name="identity", minloglevel=2)
    return work / "m.model"


@pytest.fixture
def sp_folder(tmp_path, sp_model):
    folder = tmp_path / "sp"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(sp_model.read_bytes())
    return folder


# ---- byte-level BPE (tokenizer.json) ----

def test_bpe_round_trip_and_one_bos(bpe_folder):
    raw = tokenizers.Tokenizer.from_file(str(bpe_folder / "tokenizer.json"))
    tok = Tokenizer.from_folder(bpe_folder)
    bos = raw.token_to_id("<s>")
    assert tok.bos_id == bos
    assert tok.add_bos  # the post-processor adds <s>, so the folder wants it
    assert tok.vocab_size == raw.get_vocab_size(with_added_tokens=True)

    ids = tok.encode(TEXT)
    assert ids == [bos] + raw.encode(TEXT, add_special_tokens=False).ids  # BOS once, not twice
    assert tok.decode(ids) == TEXT
    assert tok.encode(TEXT, add_bos=False) == ids[1:]
    # A prompt that already spells out the BOS (as chat templates do) keeps a single one.
    assert tok.encode("<s>" + TEXT) == ids


def test_bpe_add_bos_follows_config_then_post_processor(tmp_path):
    folder = tmp_path / "plain"
    raw = build_bpe(folder, with_post_processor=False)
    write_json(folder / "tokenizer_config.json", {"bos_token": "<s>"})
    tok = Tokenizer.from_folder(folder)
    assert tok.bos_id == raw.token_to_id("<s>")
    assert not tok.add_bos  # nothing in the folder asks for BOS
    assert tok.encode(TEXT) == raw.encode(TEXT).ids
    assert tok.encode(TEXT, add_bos=True)[0] == tok.bos_id

    write_json(folder / "tokenizer_config.json", {"bos_token": "<s>", "add_bos_token": True})
    assert Tokenizer.from_folder(folder).encode(TEXT)[0] == tok.bos_id


def test_eos_ids_are_the_union_of_all_files(bpe_folder):
    raw = tokenizers.Tokenizer.from_file(str(bpe_folder / "tokenizer.json"))
    eos, im_end, im_start = (raw.token_to_id(t) for t in ("</s>", "<|im_end|>", "<|im_start|>"))
    write_json(bpe_folder / "generation_config.json", {"eos_token_id": [im_end, eos]})
    write_json(bpe_folder / "config.json", {"eos_token_id": im_start, "bos_token_id": eos})
    tok = Tokenizer.from_folder(bpe_folder)
    # generation_config first, then config.json, then tokenizer_config's </s> (already there).
    assert tok.eos_ids == [im_end, eos, im_start]
    assert tok.bos_id == raw.token_to_id("<s>")  # tokenizer_config's bos_token wins


def test_chat_template_renders_messages(bpe_folder):
    tok = Tokenizer.from_folder(bpe_folder)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🦙"}]
    expected = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert tok.has_chat_template
    assert tok.chat_prompt(messages) == expected + "<|im_start|>assistant\n"
    assert tok.chat_prompt(messages, add_generation_prompt=False) == expected
    # Special tokens written by the template become single ids.
    ids = tok.encode(tok.chat_prompt(messages), add_bos=False)
    assert ids.count(tok.backend.token_to_id("<|im_start|>")) == 3


def test_chat_template_sources_and_helpers(bpe_folder):
    template = "{{ bos_token }}{% for m in messages %}{{ m | tojson }}{% endfor %}{{ eos_token }}"
    write_json(bpe_folder / "tokenizer_config.json", {
        "bos_token": "<s>", "eos_token": "</s>",
        "chat_template": [{"name": "tool_use", "template": "wrong"},
                          {"name": "default", "template": template}]})
    messages = [{"role": "user", "content": "café"}]
    tok = Tokenizer.from_folder(bpe_folder)
    assert tok.chat_prompt(messages) == "<s>" + json.dumps(messages[0], ensure_ascii=False) + "</s>"
    assert tok.encode(tok.chat_prompt(messages)).count(tok.bos_id) == 1

    # chat_template.jinja takes precedence over tokenizer_config.json.
    (bpe_folder / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}"
        "{{ messages[0]['content'] }}", encoding="utf-8")
    tok = Tokenizer.from_folder(bpe_folder)
    assert tok.chat_prompt(messages) == "café"
    with pytest.raises(UserError, match="user first"):
        tok.chat_prompt([{"role": "assistant", "content": "x"}])


def test_no_chat_template_is_a_user_error(tmp_path):
    folder = tmp_path / "nochat"
    build_bpe(folder)
    tok = Tokenizer.from_folder(folder)
    assert not tok.has_chat_template
    with pytest.raises(UserError, match="no chat template.*--chat"):
        tok.chat_prompt([{"role": "user", "content": "hi"}])


def test_chat_template_is_sandboxed(bpe_folder):
    (bpe_folder / "chat_template.jinja").write_text(
        "{{ messages.__class__.__mro__ }}", encoding="utf-8")
    with pytest.raises(UserError, match="chat_template.jinja"):
        Tokenizer.from_folder(bpe_folder).chat_prompt([])


# ---- sentencepiece (tokenizer.model) ----

def test_sentencepiece_round_trip_and_bos(sp_folder, sp_model):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
    tok = Tokenizer.from_folder(sp_folder)
    assert tok.bos_id == sp.bos_id() and tok.eos_ids == [sp.eos_id()]
    assert tok.add_bos and tok.vocab_size == sp.get_piece_size()

    ids = tok.encode(TEXT)
    assert ids == [sp.bos_id()] + sp.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert tok.encode(TEXT, add_bos=False) == ids[1:]
    # "<s>" written in the text is the BOS id, not '<', 's', '>' (and not a second BOS).
    assert tok.encode("<s>" + TEXT) == ids
    assert tok.encode(TEXT + "</s>", add_bos=False) == ids[1:] + [sp.eos_id()]


def test_sentencepiece_config_overrides(sp_folder, sp_model):
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sp_model))
    write_json(sp_folder / "tokenizer_config.json", {"add_bos_token": False, "eos_token": "<unk>"})
    write_json(sp_folder / "generation_config.json", {"eos_token_id": sp.eos_id()})
    tok = Tokenizer.from_folder(sp_folder)
    assert tok.encode(TEXT) == sp.encode(TEXT)
    assert tok.eos_ids == [sp.eos_id(), sp.unk_id()]


# ---- streaming ----

@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_stream_matches_batch_decode(kind, request):
    tok = Tokenizer.from_folder(request.getfixturevalue(f"{kind}_folder"))
    ids = tok.encode(TEXT)
    # The text must really split characters across tokens, or this test proves nothing.
    assert any("\ufffd" in tok.decode([i]) for i in ids)

    stream = StreamDecoder(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert not any("\ufffd" in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids) == TEXT


@pytest.mark.parametrize("kind", ["bpe", "sp"])
def test_stream_skips_specials_and_keeps_a_small_window(kind, request):
    tok = Tokenizer.from_folder(request.getfixturevalue(f"{kind}_folder"))
    text = " ".join([TEXT] * 40)
    eos = tok.backend.token_to_id("</s>")
    ids = tok.encode(text) + [eos]
    stream = StreamDecoder(tok)
    out, longest = [], 0
    for i in ids:
        out.append(stream.push(i))
        longest = max(longest, len(stream.window))
    out.append(stream.flush())
    assert "".join(out) == text
    assert longest <= 12  # a few tokens, not the whole history: O(1) per token


def test_text_stream_ends_before_a_stop_string_and_holds_back_its_start(bpe_folder):
    """What may begin a stop string is held back until the next tokens tell; the stop string
    and everything after it never come out."""
    tok = Tokenizer.from_folder(bpe_folder)
    text = "The quick brown fox jumps over the lazy dog."
    ids = tok.encode(text, add_bos=False)
    for stop, want in (("lazy", "The quick brown fox jumps over the "), ("fox", "The quick brown "),
                       ("cat", text), ("dog.", "The quick brown fox jumps over the lazy ")):
        stream = TextStream(tok, [stop, ""])
        out = ""
        for i in ids:
            piece = stream.push(i)
            assert stop not in out + piece
            out += piece
            if stream.stopped:
                break
        out += "" if stream.stopped else stream.flush()
        assert out == want, stop
        assert stream.stopped == (stop in text)


# ---- bad folders ----

def test_missing_tokenizer_names_the_folder(tmp_path):
    with pytest.raises(UserError, match=str(tmp_path)):
        Tokenizer.from_folder(tmp_path)


def test_broken_files_name_the_file(tmp_path, bpe_folder):
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="tokenizer.json"):
        Tokenizer.from_folder(tmp_path)
    (bpe_folder / "generation_config.json").write_text("{", encoding="utf-8")
    with pytest.raises(UserError, match="generation_config.json"):
        Tokenizer.from_folder(bpe_folder)


@pytest.mark.parametrize("kind", ["bpe_folder", "sp_folder"])
def test_long_text_in_pieces_encodes_as_a_whole(kind, request):
    """encode_long cuts book-length text into pieces; the ids must not notice the cuts."""
    tok = Tokenizer.from_folder(request.getfixturevalue(kind))
    lines = [" ".join(CORPUS[i:i + 3]) for i in range(0, 60, 3)]
    text = "\n".join(lines) + "\n\n  indented\n" + "word " * 200 + "\n" + TEXT
    for piece_chars in (50, 97, 400, 1 << 16):
        assert list(tok.encode_long(text, piece_chars=piece_chars)) == tok.encode(text)
    assert list(tok.encode_long(text, max_tokens=33, piece_chars=50)) == tok.encode(text)[:33]
