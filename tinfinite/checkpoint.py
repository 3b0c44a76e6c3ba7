"""Load a Hugging Face Llama folder: config.json + safetensors (single or sharded) -> Llama.

Strict: every tensor the model needs must be there with its exact shape, and nothing else.
Only safetensors are read; a model folder is untrusted input, so pickle is never touched.
Weights go from the file straight into the model's own tensors, at their final dtype and
device, so loading peaks at the model's final size: no tensor is ever held twice.
"""
import functools
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from tinfinite import settings
from tinfinite.config import ModelConfig, as_json, load_config
from tinfinite.errors import UserError
from tinfinite.model import Llama

# safetensors' names of the dtypes a checkpoint may store (settings.TORCH_DTYPES: ours)
FILE_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
INDEX = "model.safetensors.index.json"
# A tensor that needs converting (another dtype or device) is read in blocks of rows of at
# most this many bytes: the only buffer loading needs.
BLOCK_BYTES = 32 * 2**20


# Checkpoint tensors that the model fuses into one matrix: (fused module, its position in it).
FUSED = {"self_attn.q_proj": ("self_attn.qkv_proj", 0), "self_attn.k_proj": ("self_attn.qkv_proj", 1),
         "self_attn.v_proj": ("self_attn.qkv_proj", 2),
         "mlp.gate_proj": ("mlp.gate_up_proj", 0), "mlp.up_proj": ("mlp.gate_up_proj", 1)}


def checkpoint_layout(cfg: ModelConfig) -> dict[str, tuple[str, int, tuple]]:
    """The one name table: checkpoint tensor -> (model parameter, first row, shape)."""
    D, hd = cfg.dim, cfg.head_dim
    q, kv, hidden = cfg.n_heads * hd, cfg.n_kv_heads * hd, cfg.hidden_dim
    rows = {"self_attn.qkv_proj": [(q, 0), (kv, q), (kv, q + kv)],
            "mlp.gate_up_proj": [(hidden, 0), (hidden, hidden)]}
    table = {"model.embed_tokens.weight": ("embed_tokens.weight", 0, (cfg.vocab_size, D)),
             "model.norm.weight": ("norm.weight", 0, (D,))}
    if not cfg.tie_embeddings:
        table["lm_head.weight"] = ("lm_head.weight", 0, (cfg.vocab_size, D))
    for i in range(cfg.n_layers):
        for name, shape in (("input_layernorm", (D,)), ("post_attention_layernorm", (D,)),
                            ("self_attn.o_proj", (D, q)), ("mlp.down_proj", (D, hidden))):
            table[f"model.layers.{i}.{name}.weight"] = (f"layers.{i}.{name}.weight", 0, shape)
        for name, (fused, k) in FUSED.items():
            n, first = rows[fused][k]
            table[f"model.layers.{i}.{name}.weight"] = (f"layers.{i}.{fused}.weight", first, (n, D))
    return table


def load_model(folder: str | Path, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> Llama:
    folder = Path(folder)
    if folder.is_file():
        raise UserError(f"{folder}: is a file; --model takes the model's folder (with config.json)")
    if not folder.is_dir():
        raise UserError(f"{folder}: model folder not found; pass --model DIR with a Hugging Face "
                        f"Llama folder (config.json, *.safetensors, tokenizer)")
    cfg = load_config(folder)
    want = checkpoint_layout(cfg)
    # Every header is checked against config.json before anything is allocated, so a config
    # whose sizes the tensors do not have (a 2^31-token vocabulary, say) is refused, not built.
    files = {file: _check_file(file, names, cfg, want)
             for file, names in safetensors_files(folder).items()}
    missing = sorted(set(want).difference(*files.values()))
    if missing:
        raise UserError(f"{folder}: tensor {missing[0]} is missing"
                        f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                        f"the checkpoint does not match its config.json")

    with torch.device("meta"):
        model = Llama(cfg)
    model = _allocate(model, dtype, device)
    params = dict(model.named_parameters())
    for file, names in files.items():
        for name, fill in _read(file, names):
            param, first, shape = want[name]
            fill(params[param].data[first:first + shape[0]])  # its rows of a fused matrix
    return model.eval()


def _allocate(model: nn.Module, dtype: torch.dtype, device) -> nn.Module:
    """model.to(dtype).to_empty(device=device), by hand: each weight reserved once, at its
    final dtype, and not written (its pages become resident as the checkpoint fills them).
    to_empty itself would import sympy (empty_like of a meta tensor): +34 MB resident."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            setattr(module, name, nn.Parameter(torch.empty(p.shape, dtype=dtype, device=device),
                                               requires_grad=p.requires_grad))
    return model


def safetensors_files(folder: Path) -> dict[Path, list[str] | None]:
    """{file: the tensor names the index assigns to it, or None for "all of them"}."""
    index = folder / INDEX
    if index.is_file():
        try:
            raw = json.loads(index.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
            raise UserError(f"{index}: not valid JSON ({type(e).__name__}: {e}); "
                            f"re-download it") from None
        except OSError as e:
            raise UserError(f"{index}: cannot read ({e.strerror})") from None
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict):
            raise UserError(f"{index}: expected a JSON object with a \"weight_map\" object "
                            f"(tensor name -> file name); re-download it")
        files: dict[Path, list[str]] = {}
        for name, file in weight_map.items():  # JSON keys are strings
            if not isinstance(file, str) or Path(file).name != file:
                raise UserError(f"{index}: {as_json(file)} is not a file name in the model "
                                f"folder; re-download the model")
            files.setdefault(folder / file, []).append(name)
        for f in files:
            if not f.is_file():
                raise UserError(f"{f}: listed in {INDEX} but not found; re-download the model")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return {single: None}
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise UserError(f"{folder}: only pickle weights (*.bin/*.pt) found; tinfinite reads "
                        f"safetensors only (convert them, or download the safetensors version)")
    raise UserError(f"{folder}: no model.safetensors or {INDEX}; the model folder is incomplete")


def _check_file(file: Path, names, cfg: ModelConfig, want: dict) -> list[str]:
    """The tensor names of one safetensors file, after checking its header: every name is
    one the model has (and the index assigns to this file), with its shape and a dtype."""
    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            keys = list(f.keys())
            if names is not None and set(names) - set(keys):
                raise UserError(f"{file}: tensor {sorted(set(names) - set(keys))[0]} listed in "
                                f"{INDEX} is not in this file; re-download the model")
            for name in keys:
                if name not in want:
                    raise UserError(f"{file}: unexpected tensor {name}; not part of a Llama "
                                    f"with this config.json (tie_word_embeddings="
                                    f"{str(cfg.tie_embeddings).lower()})")
                if names is not None and name not in names:
                    raise UserError(f"{file}: holds tensor {name}, which {INDEX} assigns to "
                                    f"another file; re-download the model")
                sl = f.get_slice(name)
                shape, expected = list(sl.get_shape()), list(want[name][2])
                if shape != expected:
                    raise UserError(f"{file}: tensor {name} has shape {shape}, config.json "
                                    f"implies {expected}")
                if sl.get_dtype() not in FILE_DTYPES:
                    raise UserError(f"{file}: tensor {name} has dtype {sl.get_dtype()}; supported: "
                                    f"float32, bfloat16, float16")
            return keys
    except SafetensorError as e:  # what safetensors raises for any malformed file
        if _looks_pickled(file):
            raise UserError(f"{file}: is a pickle / torch.save file, not safetensors; refused, "
                            f"since unpickling can run code (convert it to safetensors)") from None
        raise UserError(f"{file}: not a valid safetensors file ({e}); re-download it") from None
    except OSError as e:
        raise UserError(f"{file}: cannot read ({e})") from None


def _read(file: Path, keys: list[str]):
    """Yield (name, fill) for the checked tensors `keys` of one safetensors file; fill(dest)
    reads the tensor into dest."""
    try:
        # Plain file reads, into the model's own tensor. f.get_tensor would map the whole
        # file into memory, and the mapped pages count as resident: the peak would be file +
        # weights. A copy of each tensor on its way would add the largest one (the
        # embedding: 0.4 GB for an 8B model).
        yield from _read_tensors(file, keys)
    except OSError as e:
        raise UserError(f"{file}: cannot read ({e})") from None


def _read_tensors(file: Path, keys: list[str]):
    """(name, fill) for keys; fill(dest) reads the tensor from the file's data section into
    dest, a tensor of its shape (header already checked).

    The format: 8 bytes little-endian header length, a JSON header {name: {dtype, shape,
    data_offsets: [begin, end]}}, then the data, offsets relative to its start."""
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        for name in keys:
            info = header[name]
            begin = 8 + n + info["data_offsets"][0]
            yield name, functools.partial(_fill, f, begin, settings.TORCH_DTYPES[FILE_DTYPES[info["dtype"]]])


def _fill(f, begin: int, dtype: torch.dtype, dest: torch.Tensor):
    """dest <- the tensor of `dtype` at byte `begin` of f. Read in place when dest is a CPU
    tensor of that dtype; else through a buffer, BLOCK_BYTES of rows at a time."""
    f.seek(begin)
    if not dest.numel():
        return
    if dest.device.type == "cpu" and dest.dtype == dtype and dest.is_contiguous():
        _read_exactly(f, dest.view(-1).view(torch.uint8).numpy())
        return
    rows = dest.view(len(dest), -1) if dest.dim() > 1 else dest.view(1, -1)  # (R, C)
    row_bytes = rows.shape[1] * dtype.itemsize
    step = max(1, BLOCK_BYTES // row_bytes)
    buffer = memoryview(bytearray(min(step, len(rows)) * row_bytes))
    for a in range(0, len(rows), step):
        block = buffer[:min(step, len(rows) - a) * row_bytes]
        _read_exactly(f, block)
        rows[a:a + step].copy_(torch.frombuffer(block, dtype=dtype).view(-1, rows.shape[1]))


def _read_exactly(f, into):
    if f.readinto(into) != into.nbytes:
        raise UserError(f"{f.name}: ends before its tensors do (a partial download?); "
                        f"re-download it")


def _looks_pickled(file: Path) -> bool:
    """Pickle protocol 2-5 starts with 0x80 and the protocol; torch.save writes a zip of pickles.

    Only used to word the error: nothing is ever unpickled, whatever the file holds."""
    try:
        with open(file, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return (len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5) or head == b"PK\x03\x04"
