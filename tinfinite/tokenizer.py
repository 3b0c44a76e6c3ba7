"""Text <-> token ids for a Hugging Face model folder, its chat template, and streaming decode.

Two backends, chosen by which file the folder has: `tokenizer.json` (the `tokenizers`
library, e.g. byte-level BPE) or `tokenizer.model` (sentencepiece). Both are plain data
formats; nothing here unpickles anything. The special-token facts (BOS, EOS, whether to
add BOS) live in the JSON files next to them and are read here, so the engine only ever
sees ids.
"""

import re
from array import array
from pathlib import Path

import sentencepiece
import tokenizers

from tinfinite import chat_template
from tinfinite.config import MAX_SIZE, Fields, read_json_object
from tinfinite.errors import UserError

REPLACEMENT_CHAR = "\ufffd"  # what a decoder prints for bytes that are not (yet) valid UTF-8


def _read_json(path: Path) -> Fields:
    """The file's JSON object, for typed reads ({} when the file is absent)."""
    return Fields(read_json_object(path) if path.is_file() else {}, path)


def _token_text(fields: Fields, key: str) -> str | None:
    """tokenizer_config.json writes special tokens as "<s>" or as {"content": "<s>", ...}."""
    token = fields.raw.get(key)
    text = token.get("content") if isinstance(token, dict) else token
    if text is not None and not isinstance(text, str):
        fields.refuse(key, 'a token: "<s>", {"content": "<s>"} or null')
    return text


def _token_ids(fields: Fields, key: str, vocab_size: int | None, many: bool) -> list[int]:
    """A field holding a token id (or, if many, a list of ids) or null; ids below vocab_size."""
    value = fields.raw.get(key)
    ids = value if many and isinstance(value, list) else [] if value is None else [value]
    most = MAX_SIZE if vocab_size is None else vocab_size - 1
    for token_id in ids:
        if type(token_id) is not int or not 0 <= token_id <= most:
            within = f" below config.json's vocab_size {vocab_size}" if vocab_size else ""
            fields.refuse(key, f"a token id (an integer >= 0{within})"
                               f"{', a list of ids' if many else ''} or null")
    return ids


class _HFBackend:
    """tokenizer.json through the `tokenizers` library."""

    def __init__(self, path: Path):
        try:
            self.tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception for bad files
            raise UserError(f"{path} cannot be read as a tokenizer ({e}); re-download it") from None
        self.path = path
        self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
        self.n_ids = max(self.tok.get_vocab(with_added_tokens=True).values(), default=-1) + 1

    def encode(self, text: str) -> list[int]:
        # Special tokens written in the text (e.g. "<|im_start|>" from a chat template) are
        # matched by the library; the post-processor is off because BOS is added by Tokenizer.
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tok.id_to_token(token_id)

    def post_processor_adds(self, token_id: int) -> bool:
        """Whether the file's post-processor puts token_id in front of every encoding."""
        with_specials = self.tok.encode("a", add_special_tokens=True).ids
        without = self.tok.encode("a", add_special_tokens=False).ids
        return with_specials[:1] == [token_id] and without[:1] != [token_id]


class _SPBackend:
    """tokenizer.model through `sentencepiece` (a protobuf, not a pickle)."""

    def __init__(self, path: Path):
        try:
            self.sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise UserError(f"{path} cannot be read as a sentencepiece model ({e}); re-download it") from None
        self.path = path
        self.vocab_size = self.n_ids = self.sp.get_piece_size()
        # sentencepiece would spell "<s>" in a chat prompt as '<', 's', '>': split the text on
        # the control pieces first, as Hugging Face's slow Llama tokenizer does.
        controls = [self.sp.id_to_piece(i) for i in range(self.vocab_size) if self.sp.is_control(i)]
        controls.sort(key=len, reverse=True)  # longest first, so "</s>" wins over a prefix
        self.specials = {piece: self.sp.piece_to_id(piece) for piece in controls}
        self.split = re.compile("(" + "|".join(map(re.escape, controls)) + ")") if controls else None

    def encode(self, text: str) -> list[int]:
        parts = self.split.split(text) if self.split else [text]
        ids = []
        for part in parts:
            if part in self.specials:
                ids.append(self.specials[part])
            elif part:
                ids.extend(self.sp.encode(part))
        return ids

    def decode(self, ids: list[int]) -> str:
        # Control pieces (BOS/EOS) decode to "". Ids past the vocabulary (a model's padded
        # embedding rows) would make sentencepiece raise, so they are dropped like specials.
        return self.sp.decode([i for i in ids if 0 <= i < self.vocab_size])

    def token_to_id(self, token: str) -> int | None:
        token_id = self.sp.piece_to_id(token)
        # piece_to_id answers the <unk> id for any piece it does not know.
        return token_id if self.sp.id_to_piece(token_id) == token else None

    def id_to_token(self, token_id: int) -> str | None:
        return self.sp.id_to_piece(token_id) if 0 <= token_id < self.vocab_size else None


def _chat_template(folder: Path, tok_config: Fields) -> tuple[str | None, Path]:
    """The folder's chat template text (None if it has none) and the file it came from."""
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        try:
            return jinja_file.read_text(encoding="utf-8"), jinja_file
        except (UnicodeDecodeError, OSError) as e:
            raise UserError(f"{jinja_file}: cannot read it as UTF-8 text ({e}); fix or "
                            f"re-download it") from None
    template = tok_config.raw.get("chat_template")
    if isinstance(template, list):  # several named templates: plain chat uses "default"
        if not all(isinstance(t, dict) and isinstance(t.get("name"), str)
                   and isinstance(t.get("template"), str) for t in template):
            tok_config.refuse("chat_template", 'a list of {"name": ..., "template": ...}')
        template = {t["name"]: t["template"] for t in template}.get("default")
    elif template is not None and not isinstance(template, str):
        tok_config.refuse("chat_template", "a string, a list of named templates, or null")
    return template, tok_config.path


class Tokenizer:
    """A model folder's tokenizer: encode/decode, special ids, and its chat template."""

    def __init__(self, backend, folder: Path, bos_id: int | None, eos_ids: list[int],
                 add_bos: bool, bos_token: str, eos_token: str,
                 chat_template: str | None, template_source: Path):
        self.backend = backend
        self.folder = folder
        self.bos_id = bos_id
        self.eos_ids = eos_ids
        self.add_bos = add_bos
        self.vocab_size = backend.vocab_size
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.chat_template = chat_template
        self.template_source = template_source

    @property
    def has_chat_template(self) -> bool:
        return self.chat_template is not None

    @classmethod
    def from_folder(cls, folder: str | Path, vocab_size: int | None = None) -> "Tokenizer":
        """The folder's tokenizer. vocab_size: the model's (config.json's), if known; every id
        the tokenizer makes, and every special id the files name, must then lie below it."""
        folder = Path(folder)
        if (folder / "tokenizer.json").is_file():
            backend = _HFBackend(folder / "tokenizer.json")
        elif (folder / "tokenizer.model").is_file():
            backend = _SPBackend(folder / "tokenizer.model")
        else:
            raise UserError(f"{folder} has no tokenizer.json or tokenizer.model; "
                            "copy the model's tokenizer files into it")
        if vocab_size is not None and backend.n_ids > vocab_size:
            raise UserError(f"{backend.path}: has token ids up to {backend.n_ids - 1}, but "
                            f"config.json's vocab_size is {vocab_size} (the model has no "
                            f"embeddings past it); use the tokenizer that came with the model")
        tok_config = _read_json(folder / "tokenizer_config.json")
        config = _read_json(folder / "config.json")
        gen_config = _read_json(folder / "generation_config.json")
        is_sp = isinstance(backend, _SPBackend)

        # BOS: the named token of tokenizer_config.json, else the ids of the model configs.
        bos_text = _token_text(tok_config, "bos_token")
        bos_id = backend.token_to_id(bos_text) if bos_text else None
        for fallback in (_token_ids(f, "bos_token_id", vocab_size, many=False)
                         for f in (config, gen_config)):
            if bos_id is None and fallback:
                bos_id = fallback[0]
        if bos_id is None and is_sp and backend.sp.bos_id() >= 0:
            bos_id = backend.sp.bos_id()

        # EOS: every id any file names, since chat models often end turns on a second token
        # (e.g. <|eot_id|> besides <|end_of_text|>) listed only in generation_config.json.
        eos_ids = [*_token_ids(gen_config, "eos_token_id", vocab_size, many=True),
                   *_token_ids(config, "eos_token_id", vocab_size, many=True)]
        eos_text = _token_text(tok_config, "eos_token")
        if eos_text and backend.token_to_id(eos_text) is not None:
            eos_ids.append(backend.token_to_id(eos_text))
        if not eos_ids and is_sp and backend.sp.eos_id() >= 0:
            eos_ids.append(backend.sp.eos_id())
        eos_ids = list(dict.fromkeys(eos_ids))

        add_bos = tok_config.flag("add_bos_token", None)
        if add_bos is None:
            # sentencepiece Llamas were trained with BOS; a tokenizer.json says it by adding it
            add_bos = is_sp or (bos_id is not None and backend.post_processor_adds(bos_id))
        add_bos = add_bos and bos_id is not None

        template, source = _chat_template(folder, tok_config)
        return cls(backend, folder, bos_id, eos_ids, add_bos,
                   bos_token=bos_text or cls._name_of(backend, bos_id),
                   eos_token=eos_text or cls._name_of(backend, eos_ids[0] if eos_ids else None),
                   chat_template=template, template_source=source)

    @staticmethod
    def _name_of(backend, token_id: int | None) -> str:
        return (backend.id_to_token(token_id) or "") if token_id is not None else ""

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of text; BOS in front if asked (default: the folder's choice), never twice."""
        ids = self.backend.encode(text)
        add_bos = self.add_bos if add_bos is None else add_bos
        # A chat template usually writes the BOS text itself; the backend has already
        # turned it into the BOS id, so adding another would give the model "<s><s>".
        if add_bos and self.bos_id is not None and ids[:1] != [self.bos_id]:
            ids = [self.bos_id] + ids
        return ids

    def encode_long(self, text: str, max_tokens: int | None = None,
                    piece_chars: int = 1 << 16) -> array:
        """encode() for book-length text, in pieces cut where the tokenizer cuts anyway
        (_cut), into a compact int32 array: encoding a whole book at once holds hundreds
        of MB of library state; this holds one piece's. Stops after max_tokens.
        sentencepiece marks the start of every text it encodes, so it gets the whole text."""
        if not isinstance(self.backend, _HFBackend):
            piece_chars = len(text)
        ids, start = array("i"), 0
        while start < len(text) and (max_tokens is None or len(ids) < max_tokens):
            end = len(text) if len(text) - start <= piece_chars else \
                _cut(text, start, start + piece_chars)
            ids.extend(self.encode(text[start:end], add_bos=None if start == 0 else False))
            start = end
        return ids[:max_tokens]

    def decode(self, ids: list[int]) -> str:
        """Text of ids, special tokens left out."""
        return self.backend.decode(list(ids))

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The folder's chat template rendered for messages ([{"role": ..., "content": ...}])."""
        if self.chat_template is None:
            raise UserError(f"the model in {self.folder} has no chat template "
                            "(no chat_template.jinja or tokenizer_config.json chat_template); drop --chat")
        # The template is untrusted input from the model folder: sandboxed, with limits.
        return chat_template.render(self.chat_template, self.template_source,
                                    messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos_token, eos_token=self.eos_token)


def _cut(text: str, start: int, limit: int) -> int:
    """Where to end a piece in (start, limit]: after the last lone newline between two
    non-space characters, else before the last space between two word characters (a word
    takes its leading space), else at limit. Byte-level BPE pre-tokenizers cut there too."""
    for pattern in (r"(?<=\S)\n(?=\S)", r"(?<=\w)(?= \w)"):
        cuts = [m.end() for m in re.finditer(pattern, text[start:limit])]
        if cuts and cuts[-1] > 0:
            return start + cuts[-1]
    return limit


class StreamDecoder:
    """Turns a stream of token ids into text pieces without ever emitting broken UTF-8.

    Decoding tokens one at a time is wrong twice over: a byte-level BPE token can hold half
    of an emoji (the decoder prints U+FFFD for it), and a sentencepiece decoder drops the
    "▁" space of whatever token comes first. So each step decodes a small window that starts
    with the last printed tokens, and prints only what the new tokens added to its text;
    text that still ends in U+FFFD waits for the bytes that complete it. The window is cut
    after every print, so each token costs O(1) amortised, whatever the length of the stream.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.window: list[int] = []  # [already printed context | not yet printed]
        self.printed = 0             # window[:printed] is the context
        self.printed_text = ""       # decode(window[:printed])

    def push(self, token_id: int) -> str:
        """New printable text after token_id (maybe "")."""
        self.window.append(token_id)
        text = self.tokenizer.decode(self.window)
        if len(text) <= len(self.printed_text) or text.endswith(REPLACEMENT_CHAR):
            return ""  # a special token, or a character still split across tokens
        new = text[len(self.printed_text):]
        # The tokens just printed become the context for the next ones.
        self.window = self.window[self.printed:]
        self.printed = len(self.window)
        self.printed_text = self.tokenizer.decode(self.window)
        return new

    def flush(self) -> str:
        """Whatever remains at the end of the stream (bytes that never completed included)."""
        new = self.tokenizer.decode(self.window)[len(self.printed_text):]
        self.window, self.printed, self.printed_text = [], 0, ""
        return new


class TextStream:
    """Token ids -> text pieces as they are made, ending before the first stop string.

    Text that might still be the start of a stop string is held back until the next tokens
    tell; `stopped` turns True when a stop string has appeared (it and what follows are cut)."""

    def __init__(self, tokenizer: Tokenizer, stops: list[str] = ()):
        self.decoder = StreamDecoder(tokenizer)
        self.stops = [s for s in stops if s]
        self.held = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """The text that token_id makes certain (maybe "")."""
        text = self.held + self.decoder.push(token_id)
        cut = self._first_stop(text)
        if cut is not None:
            self.stopped, self.held = True, ""
            return text[:cut]
        keep = max((n for s in self.stops for n in range(1, len(s)) if text.endswith(s[:n])),
                   default=0)  # the longest end of the text that begins some stop string
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep]

    def flush(self) -> str:
        """At the end of the stream: the held text (cut before a stop string, if one formed)."""
        text, self.held = self.held + self.decoder.flush(), ""
        cut = self._first_stop(text)
        self.stopped = self.stopped or cut is not None
        return text if cut is None else text[:cut]

    def _first_stop(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        return min(hits) if hits else None
