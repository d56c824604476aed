"""A tiny byte-level language model and a LoRA wrapper, shared by train.py and evaluate.py.

Everything here is plain PyTorch, so the examples download nothing when they run:

- Tokenizer: the UTF-8 bytes of the text (vocabulary of 256). No vocabulary file to ship.
- Model: a small GPT-style decoder (pre-norm transformer blocks, causal attention, learned
  positions, output layer tied to the byte embeddings), built from a ``ModelConfig``.
- LoRA: ``LoRALinear`` wraps an ``nn.Linear``, freezes it and learns a low-rank update
  ``W + (alpha / rank) * B @ A`` instead. ``add_lora`` puts it on the layers you name.
- Helpers both jobs need: the data split, the device, atomic file writes, scoring, generation.

Both jobs live in the same folder (the workdir Coop packs and ships), so both can
``import tinylm`` without installing anything.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import torch
except ImportError:  # say what to do, rather than only "No module named 'torch'"
    sys.exit(f"error: PyTorch is not installed for {sys.executable}: pip install torch (on the node that runs the job)")
from torch import nn
from torch.nn import functional as F

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE / "data"
# Where the checkpoints go when COOP_CHECKPOINT_DIR is not set (a local run without Coop).
# It is the same folder as checkpoint_dir in finetune.yaml and eval.yaml.
DEFAULT_CHECKPOINT_DIR = Path(tempfile.gettempdir()) / "coop-examples" / "lora-tiny"

# ---------------------------------------------------------------------------------------------
# Tokenizer and data
# ---------------------------------------------------------------------------------------------

VOCAB_SIZE = 256  # one token per byte value
RECORD_SEP = "\n\n"  # records (question and answer pairs) in target.txt are separated by a blank line
HELDOUT_EVERY = 10  # every 10th record of target.txt is held out for the eval, never trained on


def encode(text: str) -> torch.Tensor:
    """Text to a 1-D tensor of byte ids."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode(ids: Iterable[int]) -> str:
    """Byte ids back to text (a multi-byte character cut in half shows as U+FFFD)."""
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


def read_data(name: str) -> str:
    """A text file from data/ (shipped in the workdir)."""
    return (DATA_DIR / name).read_text(encoding="utf-8")


def split_records(text: str, every: int = HELDOUT_EVERY) -> tuple[list[str], list[str]]:
    """Split target.txt into (train, held-out) records: record i is held out when i % every == every - 1.

    A fixed rule, not a random one, so the fine-tune and the eval agree on the split without
    having to share anything but this function.
    """
    records = [r.strip() for r in text.split(RECORD_SEP) if r.strip()]
    train = [r for i, r in enumerate(records) if i % every != every - 1]
    heldout = [r for i, r in enumerate(records) if i % every == every - 1]
    return train, heldout


def join_records(records: list[str]) -> str:
    return RECORD_SEP.join(records) + RECORD_SEP


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The architecture. The defaults give about 1.3 M parameters."""

    vocab_size: int = VOCAB_SIZE
    context: int = 64  # longest sequence the model sees (learned positions); short trains fastest
    d_model: int = 160
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4


class Block(nn.Module):
    """One pre-norm transformer block: causal self-attention, then an MLP, each with a residual."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)  # queries, keys and values in one matmul
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.fc2 = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(width, dim=2)
        # (batch, length, width) -> (batch, heads, length, width / heads)
        q, k, v = (t.view(batch, length, self.n_heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, length, width))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyLM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Byte ids (batch, length) to next-byte logits (batch, length, vocab)."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.tok.weight.T  # output layer tied to the input embeddings

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats per byte) of predicting ``targets`` from ``idx``."""
        logits = self(idx)
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


def num_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------
# LoRA: low-rank adapters on frozen nn.Linear layers
# ---------------------------------------------------------------------------------------------


class LoRALinear(nn.Module):
    """``y = base(x) + (alpha / rank) * x @ A.T @ B.T`` with ``base`` frozen and only A and B trained.

    B starts at zero, so a freshly wrapped layer computes exactly what the base layer did; training
    moves it away from the base by a rank-``rank`` update. ``alpha / rank`` scales the update, so
    changing the rank does not change how big a learning rate you need.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # the init nn.Linear uses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale


DEFAULT_LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")  # every linear layer in every block


def add_lora(model: nn.Module, rank: int, alpha: float, targets: Iterable[str] = DEFAULT_LORA_TARGETS) -> list[str]:
    """Freeze the whole model, then wrap each nn.Linear whose attribute name is in ``targets``.

    Returns the dotted names of the wrapped layers. Only the LoRA A and B matrices are trainable.
    """
    targets = set(targets)
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in targets and isinstance(child, nn.Linear):
                setattr(parent, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    if not wrapped:
        raise ValueError(f"no nn.Linear named any of {sorted(targets)} in the model")
    return wrapped


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter: the LoRA A and B matrices (a few percent of the model)."""
    return {name: t.detach().cpu() for name, t in model.state_dict().items() if ".lora_" in name}


def load_lora_state_dict(model: nn.Module, adapter: dict[str, torch.Tensor]) -> None:
    """Put adapter weights (from ``lora_state_dict``) into a model that ``add_lora`` already wrapped."""
    missing, unexpected = model.load_state_dict(adapter, strict=False)
    missing = [name for name in missing if ".lora_" in name]
    if missing or unexpected:
        raise ValueError(f"adapter does not fit the model: missing {missing}, unexpected {unexpected}")


# ---------------------------------------------------------------------------------------------
# Device, files, scoring and generation
# ---------------------------------------------------------------------------------------------


def pick_device() -> torch.device:
    """The same script runs on a GPU node and on a CPU-only node."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on GPUs that support it (faster, same weights in fp32); plain fp32 on CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def checkpoint_dir(flag: str | None) -> Path:
    """--checkpoint-dir, else COOP_CHECKPOINT_DIR (set by Coop), else the demo's default."""
    chosen = flag or os.environ.get("COOP_CHECKPOINT_DIR") or DEFAULT_CHECKPOINT_DIR
    return Path(chosen).expanduser()


def atomic_save(obj: Any, path: Path) -> None:
    """Write with torch.save to a temp file in the same folder, then rename it over ``path``.

    A job killed mid-write (preemption, node loss) leaves the previous file intact and at worst a
    stray ``*.tmp`` file, never a half-written checkpoint under the real name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
    os.replace(tmp, path)  # atomic on POSIX within one filesystem


def atomic_write_text(text: str, path: Path) -> None:
    """The same for a text file (meta.json, score.json)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def load(path: Path) -> Any:
    """torch.load that only reads tensors and plain Python values (never runs pickled code)."""
    return torch.load(path, map_location="cpu", weights_only=True)


@torch.no_grad()
def mean_loss(model: TinyLM, ids: torch.Tensor, device: torch.device) -> float:
    """Mean loss in nats per byte over a whole text, in consecutive windows of the model's context."""
    model.eval()
    total, count = 0.0, 0
    step = model.cfg.context
    for start in range(0, len(ids) - 1, step):
        chunk = ids[start : start + step + 1].to(device)
        if len(chunk) < 2:
            break
        with autocast(device):
            logits = model(chunk[None, :-1])
        total += F.cross_entropy(logits.float()[0], chunk[1:], reduction="sum").item()
        count += len(chunk) - 1
    return total / count


@torch.no_grad()
def generate(model: TinyLM, prompt: str, device: torch.device, max_new: int = 120, stop: str = RECORD_SEP) -> str:
    """Greedy decoding (always the most likely next byte) until ``stop`` or ``max_new`` bytes."""
    model.eval()
    ids = encode(prompt).to(device)
    start = len(ids)
    stop_ids = list(stop.encode("utf-8"))
    for _ in range(max_new):
        with autocast(device):
            logits = model(ids[None, -model.cfg.context :])
        ids = torch.cat([ids, logits[0, -1].argmax().reshape(1)])
        if stop_ids and ids[-len(stop_ids) :].tolist() == stop_ids:
            ids = ids[: -len(stop_ids)]
            break
    return decode(ids[start:].tolist())
