"""The architecture of a Llama checkpoint, read from its Hugging Face `config.json`.

Only what the weights fix lives here. Runtime choices (window, starting tokens, dtype,
device, chunk size) are passed where the cache and engine are set up.
"""
import json
from dataclasses import dataclass, field
from pathlib import Path

from tinfinite.errors import UserError

# RoPE scaling types (DESIGN.md §1): the ones rope.py implements, and the ones it refuses.
SUPPORTED_ROPE = ("default", "linear", "llama3")
KNOWN_ROPE = SUPPORTED_ROPE + ("dynamic", "yarn", "longrope", "su", "mrope", "proportional")


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
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); re-download the model folder")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object; re-download the model folder")
    return config_from_dict(raw, path)


def config_from_dict(raw: dict, path: Path | str = "config.json") -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type != "llama":
        archs = raw.get("architectures") or []
        raise UserError(f"{path}: model_type {model_type!r} ({', '.join(archs) or 'no architectures'}) "
                        f"is not supported; tinfinite runs Llama checkpoints (model_type \"llama\")")
    for flag in ("attention_bias", "mlp_bias"):
        if raw.get(flag):
            raise UserError(f"{path}: {flag}=true is not supported (Llama has no biases)")
    if raw.get("hidden_act", "silu") != "silu":
        raise UserError(f"{path}: hidden_act {raw['hidden_act']!r} is not supported (Llama uses silu)")

    # Newer configs nest RoPE under "rope_parameters"; older ones use rope_theta/rope_scaling.
    rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
    rope_type = rope.pop("rope_type", None) or rope.pop("type", None) or "default"
    theta = rope.pop("rope_theta", None) or raw.get("rope_theta", 10000.0)
    if rope_type not in SUPPORTED_ROPE:
        what = "is not supported" if rope_type in KNOWN_ROPE else "is unknown"
        raise UserError(f"{path}: RoPE scaling {rope_type!r} {what}; tinfinite supports "
                        f"{', '.join(SUPPORTED_ROPE)}")
    factor = rope.get("factor")
    if rope_type != "default" and not (isinstance(factor, (int, float)) and factor > 0):
        raise UserError(f"{path}: RoPE scaling {rope_type!r} needs a positive \"factor\", "
                        f"got {factor!r}; fix or re-download config.json")
    rope_scaling = {"rope_type": rope_type, **rope} if rope_type != "default" else {}

    try:
        return ModelConfig(
            vocab_size=int(raw["vocab_size"]),
            dim=int(raw["hidden_size"]),
            n_layers=int(raw["num_hidden_layers"]),
            n_heads=int(raw["num_attention_heads"]),
            n_kv_heads=int(raw["num_attention_heads"] if raw.get("num_key_value_heads") is None
                           else raw["num_key_value_heads"]),
            hidden_dim=int(raw["intermediate_size"]),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            head_dim=int(raw.get("head_dim") or 0),
            norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
            rope_theta=float(theta),
            rope_scaling=rope_scaling,
            tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
        )
    except KeyError as e:
        raise UserError(f"{path}: missing field {e.args[0]!r}; is this a Llama config.json?")
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: bad value ({e}); fix or re-download config.json")
    except UserError as e:  # from __post_init__, which does not know the file
        raise UserError(f"{path}: {e}") from None
