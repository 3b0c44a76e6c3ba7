"""The architecture of a Llama checkpoint, read from its Hugging Face `config.json`.

Only what the weights fix lives here. Runtime choices (window, starting tokens, dtype,
device, chunk size) are passed where the cache and engine are set up.
"""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from tinfinite.errors import UserError

# RoPE scaling types (docs/design.md §1): the ones rope.py implements, and the ones it refuses.
SUPPORTED_ROPE = ("default", "linear", "llama3")
KNOWN_ROPE = SUPPORTED_ROPE + ("dynamic", "yarn", "longrope", "su", "mrope", "proportional")
MAX_SIZE = 2**31 - 1  # sizes and token ids: int32, as token-id arrays hold them
MAX_LAYERS = 4096  # far above any Llama (405B: 126); keeps absurd counts from being built
REQUIRED = object()  # a field without a default


@dataclass
class ModelConfig:
    vocab_size: int
    dim: int                    # hidden_size
    n_layers: int
    n_heads: int
    n_kv_heads: int             # < n_heads: grouped-query attention
    hidden_dim: int             # intermediate_size of the SwiGLU MLP
    max_position_embeddings: int  # the length it was trained on: LM-Infinite's L
    head_dim: int = 0           # 0: dim // n_heads
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict = field(default_factory=dict)  # {"rope_type": ..., "factor": ..., ...}
    tie_embeddings: bool = False
    torch_dtype: str = "float32"  # what the checkpoint stores

    def __post_init__(self):
        # A zero or negative size would only fail later, deep inside torch, with a traceback.
        for name, value in (("vocab_size", self.vocab_size), ("hidden_size", self.dim),
                            ("num_hidden_layers", self.n_layers),
                            ("num_attention_heads", self.n_heads),
                            ("num_key_value_heads", self.n_kv_heads),
                            ("intermediate_size", self.hidden_dim),
                            ("max_position_embeddings", self.max_position_embeddings)):
            if value < 1:
                raise UserError(f"{name} {value} must be >= 1")
        if not self.head_dim and self.dim % self.n_heads:
            raise UserError(f"hidden_size {self.dim} is not a multiple of num_attention_heads "
                            f"{self.n_heads} and no head_dim is given")
        self.head_dim = self.head_dim or self.dim // self.n_heads
        if self.head_dim <= 0 or self.head_dim % 2:
            raise UserError(f"head_dim {self.head_dim} must be even and positive (RoPE rotates pairs)")
        if self.n_heads % self.n_kv_heads:
            raise UserError(f"num_attention_heads {self.n_heads} is not a multiple "
                            f"of num_key_value_heads {self.n_kv_heads}")
        if not self.rope_theta > 0:
            raise UserError(f"rope_theta {self.rope_theta} must be > 0")

    @property
    def rope_type(self) -> str:
        return self.rope_scaling.get("rope_type", "default")


def load_config(folder: str | Path) -> ModelConfig:
    """Read `folder/config.json` into a ModelConfig; refuse what the engine cannot run."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; a model folder needs the config.json of a "
                        f"Hugging Face Llama checkpoint")
    return config_from_dict(read_json_object(path), path)


def read_json_object(path: Path) -> dict:
    """The JSON object in a model folder's file; anything else is a one-line UserError."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError; nesting
        raise UserError(f"{path}: not valid JSON ({type(e).__name__}: {e}); fix or "
                        f"re-download it") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object, not {as_json(raw)}; fix or "
                        f"re-download it")
    return raw


def config_from_dict(raw: dict, path: Path | str = "config.json") -> ModelConfig:
    """A ModelConfig from config.json's object, every field it uses checked for type and range
    (fields it does not use are ignored)."""
    f = Fields(raw, path)
    model_type = raw.get("model_type")
    if model_type != "llama":
        archs = raw.get("architectures")
        archs = ", ".join(a for a in archs if isinstance(a, str)) if isinstance(archs, list) else ""
        raise UserError(f"{path}: model_type {as_json(model_type)} ({archs or 'no architectures'}) "
                        f"is not supported; tinfinite runs Llama checkpoints (model_type \"llama\")")
    for flag in ("attention_bias", "mlp_bias"):
        if f.flag(flag, False):
            raise UserError(f"{path}: {flag}=true is not supported (Llama has no biases)")
    if f.text("hidden_act", "silu") != "silu":
        raise UserError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported (Llama uses silu)")

    # Newer configs nest RoPE under "rope_parameters"; older ones use rope_theta/rope_scaling.
    rope = f.mapping("rope_parameters") if raw.get("rope_parameters") else f.mapping("rope_scaling")
    rope_type = rope.text("rope_type", None) or rope.text("type", None) or "default"
    theta = rope.number("rope_theta", None) or f.number("rope_theta", 10000.0)
    if rope_type not in SUPPORTED_ROPE:
        what = "is not supported" if rope_type in KNOWN_ROPE else "is unknown"
        raise UserError(f"{path}: RoPE scaling {rope_type!r} {what}; tinfinite supports "
                        f"{', '.join(SUPPORTED_ROPE)}")
    rope_scaling = {}
    if rope_type != "default":
        rope_scaling = {"rope_type": rope_type, "factor": rope.number("factor")}
    if rope_type == "llama3":  # rope.py's smooth ramp divides by high - low
        low, high = rope.number("low_freq_factor", 1.0), rope.number("high_freq_factor", 4.0)
        if not high > low:
            raise UserError(f"{path}: {rope.prefix}high_freq_factor {high} must be larger than "
                            f"low_freq_factor {low}; fix or re-download config.json")
        rope_scaling.update(low_freq_factor=low, high_freq_factor=high,
                            original_max_position_embeddings=rope.integer(
                                "original_max_position_embeddings", 8192))

    n_heads = f.integer("num_attention_heads")
    fields = dict(
        vocab_size=f.integer("vocab_size"),
        dim=f.integer("hidden_size"),
        n_layers=f.integer("num_hidden_layers", most=MAX_LAYERS),
        n_heads=n_heads,
        n_kv_heads=f.integer("num_key_value_heads", n_heads),
        hidden_dim=f.integer("intermediate_size"),
        max_position_embeddings=f.integer("max_position_embeddings", 2048),
        head_dim=f.integer("head_dim", 0),
        norm_eps=f.number("rms_norm_eps", 1e-5),
        rope_theta=theta,
        rope_scaling=rope_scaling,
        tie_embeddings=f.flag("tie_word_embeddings", False),
        torch_dtype=f.text("torch_dtype", None) or f.text("dtype", None) or "float32",
    )
    try:
        return ModelConfig(**fields)
    except UserError as e:  # from __post_init__, which does not know the file
        raise UserError(f"{path}: {e}") from None


def as_json(value) -> str:
    """value as the file writes it, cut short: how a refusal quotes a field."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Fields:
    """Typed reads from one JSON object of a model folder's file. A wrong type or a value out
    of range is a UserError naming the file and the field; null reads as absent; fields not
    read are ignored."""

    def __init__(self, raw, path, prefix: str = ""):
        self.raw, self.path, self.prefix = raw, path, prefix

    def get(self, key: str, default, expected: str):
        value = self.raw.get(key)
        if value is None and default is REQUIRED:
            raise UserError(f"{self.path}: {self.prefix}{key} is missing; expected {expected}")
        return value

    def refuse(self, key: str, expected: str):
        raise UserError(f"{self.path}: {self.prefix}{key} is {as_json(self.raw[key])}; "
                        f"expected {expected}")

    def integer(self, key: str, default=REQUIRED, least: int = 1, most: int = MAX_SIZE):
        expected = f"an integer from {least} to {most}"
        value = self.get(key, default, expected)
        if value is None:
            return default
        if type(value) is not int or not least <= value <= most:  # bool is an int in Python
            self.refuse(key, expected)
        return value

    def number(self, key: str, default=REQUIRED) -> float:
        """A finite number > 0."""
        value = self.get(key, default, "a positive number")
        if value is None:
            return default
        if type(value) not in (int, float) or not 0 < value < math.inf:
            self.refuse(key, "a positive number")
        return float(value)

    def flag(self, key: str, default=REQUIRED) -> bool:
        value = self.get(key, default, "true or false")
        if value is None:
            return default
        if type(value) is not bool:
            self.refuse(key, "true or false (not in quotes)")
        return value

    def text(self, key: str, default=REQUIRED) -> str:
        value = self.get(key, default, "a string")
        if value is None:
            return default
        if not isinstance(value, str):
            self.refuse(key, "a string")
        return value

    def mapping(self, key: str) -> "Fields":
        """The nested object at key ({} when absent)."""
        value = self.raw.get(key)
        if value is not None and not isinstance(value, dict):
            self.refuse(key, "an object or null")
        return Fields(value or {}, self.path, f"{self.prefix}{key}.")
