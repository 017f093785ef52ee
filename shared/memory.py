"""How much memory GPTModel needs to train and to generate, predicted by part and measured
(ch04/memory-planner.ipynb derives the counts step by step and checks them).

What the planner assumes, so that its numbers can be checked exactly:
- the whole model in one dtype (model.to(dtype)): weights, gradients, AdamW's two moments and
  every activation in float32, bfloat16 or float16. bf16 autocast (shared.speed's bf16 option)
  is not modelled: it keeps float32 weights, gradients and moments and mixes float32 and bf16
  activations;
- a training step as training_step runs it: zero_grad(set_to_none=True), forward, cross-entropy
  over every position, backward, AdamW step; the optimizer's state exists already (every step
  after the first);
- Chapter 4's code as it is (shared/gpt.py, shared/attention.py): attention materialises the
  (b, h, n, n) scores and weights; the layer norm and GELU are written out in tensor operations,
  each of which autograd keeps its inputs or outputs for; dropout keeps a mask when drop_rate > 0
  (on a CUDA device a mask of booleans, elsewhere a mask in the model's dtype, as PyTorch's
  dropout makes them);
- activation checkpointing per transformer block: torch.utils.checkpoint (use_reentrant=False)
  around each block keeps only the block's input and recomputes the rest in the backward pass.

Shapes: b = batch size, n = tokens per sequence, d = emb_dim, h = n_heads, L = n_layers,
V = vocab_size, C = context_length; s = bytes per number of the dtype.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from shared.gpt import GPTModel, dropout_rate

# The dtypes the planner knows, by the names a reader types (and the command line's short ones).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
INDEX_BYTES = 8  # token ids, positions and targets are int64


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """torch.float32, torch.bfloat16 or torch.float16, given as a dtype or by name ("float32",
    "bfloat16", "float16", or "fp32", "bf16", "fp16"); a ValueError naming the choices for
    anything else."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        if SHORT_NAMES.get(name, name) in DTYPES:
            return DTYPES[SHORT_NAMES.get(name, name)]
    raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")


def _check(cfg: dict, **sizes: int) -> None:
    """A ValueError unless every size is a whole number >= 1 and cfg describes a GPTModel."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    keys = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers")
    missing = [key for key in (*keys, "drop_rate", "qkv_bias") if key not in cfg]
    if missing:
        raise ValueError(f"the config lacks {', '.join(missing)}")
    for key in keys:
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"cfg[{key!r}] must be a whole number >= 1, got {cfg[key]!r}")
    if cfg["emb_dim"] % cfg["n_heads"]:
        raise ValueError(f"emb_dim ({cfg['emb_dim']}) must be divisible by n_heads")
    for where in ("emb", "attn", "shortcut"):
        rate = dropout_rate(cfg, where)
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < 1:
            raise ValueError(f"dropout rates must be numbers >= 0 and < 1, got {rate!r}")
    if sizes.get("num_tokens", 1) > cfg["context_length"]:
        raise ValueError(
            f"num_tokens ({sizes['num_tokens']}) exceeds the context_length "
            f"({cfg['context_length']})"
        )


def parameter_count(cfg: dict) -> int:
    """Numbers in GPTModel(cfg)'s parameters (its output head not tied to the token embedding):
    the embeddings (V + C) * d, L blocks of block_parameter_count, the final norm 2d, the head
    V * d."""
    d, vocab = cfg["emb_dim"], cfg["vocab_size"]
    embeddings = (vocab + cfg["context_length"]) * d
    return embeddings + cfg["n_layers"] * block_parameter_count(cfg) + 2 * d + vocab * d


def block_parameter_count(cfg: dict) -> int:
    """Numbers in one transformer block's parameters: 12d^2 + 10d (+ 3d with qkv_bias): the
    query, key, value and output projections 4d^2 (+ d, the output's bias), the feed-forward
    8d^2 + 5d, the two layer norms 4d."""
    d = cfg["emb_dim"]
    return 12 * d * d + 10 * d + (3 * d if cfg["qkv_bias"] else 0)


def _parameter_tensors(cfg: dict) -> int:
    """How many parameter tensors GPTModel(cfg) has (AdamW keeps a step counter for each)."""
    per_block = (6 if cfg["qkv_bias"] else 3) + 2 + 4 + 4  # q/k/v, out_proj, ff, two norms
    return 2 + cfg["n_layers"] * per_block + 2 + 1


def weight_bytes(cfg: dict, dtype: str | torch.dtype = torch.float32) -> int:
    """Bytes of GPTModel(cfg) in dtype: its parameters, and each block's causal mask, a buffer of
    C x C booleans that model.to(dtype) leaves as it is."""
    size = as_dtype(dtype).itemsize
    return parameter_count(cfg) * size + cfg["n_layers"] * cfg["context_length"] ** 2


def kv_cache_bytes(
    cfg: dict, batch_size: int, num_tokens: int, dtype: str | torch.dtype = torch.float32
) -> int:
    """Bytes of the keys and values cached for num_tokens positions of batch_size texts:
    2 (keys, values) * L * b * n * d * s (shared.kv_cache.KVCacheGPTModel's cache.nbytes)."""
    _check(cfg, batch_size=batch_size, num_tokens=num_tokens)
    size = as_dtype(dtype).itemsize
    return 2 * cfg["n_layers"] * batch_size * num_tokens * cfg["emb_dim"] * size


def _block_activations(cfg: dict, b: int, n: int, size: int, mask_size: int) -> dict[str, int]:
    """Bytes one transformer block keeps for the backward pass, by part (activation_bytes)."""
    bnd, scores = b * n * cfg["emb_dim"], b * cfg["n_heads"] * n * n
    attn_drop, shortcut_drop = dropout_rate(cfg, "attn") > 0, dropout_rate(cfg, "shortcut") > 0
    return {
        "layer norms": 2 * (3 * bnd + b * n) * size,
        "attention": (5 * bnd + scores * (1 + attn_drop)) * size,
        "feed-forward": 21 * bnd * size,
        "dropout masks": (attn_drop * scores + shortcut_drop * 2 * bnd) * mask_size,
    }


def activation_bytes(
    cfg: dict,
    batch_size: int,
    num_tokens: int,
    dtype: str | torch.dtype = torch.float32,
    checkpointing: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, int]:
    """Bytes that autograd keeps for the backward pass after the forward pass and the
    cross-entropy loss of b sequences of n tokens, by part (each tensor counted once; the
    weights, which autograd keeps too, are counted as weights):

    - token ids: the ids (b, n) and positions (n,) that the embeddings keep;
    - layer norms: each keeps its input, input - mean and the normalised input (b, n, d) and
      the standard deviation (b, n, 1);
    - attention: the input of the query/key/value layers, the queries, keys and values copied
      to (b * h, n, d / h) for the batched products, the softmax's output (b, h, n, n), the
      input of out_proj; with attention dropout, the dropped weights (b, h, n, n) too;
    - feed-forward: the first layer's input (b, n, d); GELU's input, its tanh, 0.5 * x and
      1 + tanh, and the second layer's input (b, n, 4d each);
    - dropout masks: after the embeddings (b, n, d), on the attention weights (b, h, n, n), before
      each shortcut (b, n, d), where that rate is > 0;
    - block inputs: with checkpointing, the input (b, n, d) each block keeps instead of its
      layer norms, attention, feed-forward and masks;
    - output head and loss: the head's input (b, n, d), the log-softmax (b, n, V), the targets
      (b, n) and the loss's total weight (one number).
    """
    _check(cfg, batch_size=batch_size, num_tokens=num_tokens)
    size = as_dtype(dtype).itemsize
    mask_size = 1 if torch.device(device).type == "cuda" else size  # booleans on CUDA
    b, n, L = batch_size, num_tokens, cfg["n_layers"]
    bnd = b * n * cfg["emb_dim"]
    block = _block_activations(cfg, b, n, size, mask_size)
    blocks = 0 if checkpointing else L  # the blocks whose insides are kept
    emb_drop = dropout_rate(cfg, "emb") > 0
    return {
        "token ids": (b * n + n) * INDEX_BYTES,
        "layer norms": blocks * block["layer norms"] + (3 * bnd + b * n) * size,
        "attention": blocks * block["attention"],
        "feed-forward": blocks * block["feed-forward"],
        "dropout masks": emb_drop * bnd * mask_size + blocks * block["dropout masks"],
        "block inputs": (L - blocks) * bnd * size,
        "output head and loss": (bnd + b * n * cfg["vocab_size"] + 1) * size + b * n * INDEX_BYTES,
    }


@dataclass(frozen=True)
class MemoryPlan:
    """Predicted memory of a training step or of a generation step, in bytes.

    parts: what is held, by part (weights, gradients, optimizer state, activations, KV cache);
    moments: the bytes in use at each moment where the peak can fall; peak: the largest.
    """

    parts: dict[str, int]
    moments: dict[str, int]

    @property
    def peak(self) -> int:
        return max(self.moments.values())

    @property
    def peak_moment(self) -> str:
        return max(self.moments, key=self.moments.__getitem__)


def training_memory(
    cfg: dict,
    batch_size: int,
    num_tokens: int,
    dtype: str | torch.dtype = torch.float32,
    checkpointing: bool = False,
    device: str | torch.device = "cpu",
) -> MemoryPlan:
    """The memory of one AdamW training step of GPTModel(cfg) (training_step) on batch_size
    sequences of num_tokens, all in dtype.

    parts: weights (weight_bytes), gradients (one per parameter), optimizer state (AdamW's two
    moments per parameter and a float32 step count per parameter tensor), activations (kept
    for the backward pass: activation_bytes).
    moments: the weights and the optimizer state are held throughout; on top of them
    - loss backward: every activation, and the gradients of the log-softmax and of the logits
      (b, n, V each);
    - top block backward: the first block the backward pass reaches, the others' activations
      and the head's gradients; inside the block, the most of: its feed-forward's backward (its
      activations, the incoming gradient, the second layer's weight gradient, two (b, n, 4d)
      gradients of GELU's product) and its attention's (its feed-forward's activations freed,
      the block's weight gradients so far, the gradient of the softmax's output and input,
      (b, h, n, n) each); with checkpointing its activations recomputed;
    - bottom block backward: the same at the last block, with the gradients of every one above;
    - optimizer step: every gradient, and AdamW's temporaries: on the CPU (one parameter at a
      time) two the size of the largest parameter, on CUDA (all at once, "foreach") one the
      size of all parameters.
    The peak is the largest moment. Measured peaks (measure_peak) come within TOLERANCE of it.
    """
    _check(cfg, batch_size=batch_size, num_tokens=num_tokens)
    size = as_dtype(dtype).itemsize
    on_cuda = torch.device(device).type == "cuda"
    mask_size = 1 if on_cuda else size  # dropout's masks: booleans on CUDA
    b, n, d, L, V = batch_size, num_tokens, cfg["emb_dim"], cfg["n_layers"], cfg["vocab_size"]
    bnd, scores = b * n * d, b * cfg["n_heads"] * n * n
    params = parameter_count(cfg) * size
    weights = weight_bytes(cfg, dtype)
    optimizer_state = 2 * params + 4 * _parameter_tensors(cfg)
    held = weights + optimizer_state
    kept = activation_bytes(cfg, b, n, dtype, checkpointing, device)
    activations = sum(kept.values())

    block_kept = sum(_block_activations(cfg, b, n, size, mask_size).values())
    block_peak = max(  # one block's backward pass, its own activations included
        block_kept + (9 * bnd + 4 * d * d + d) * size,  # at the feed-forward
        (10 * bnd + b * n + 3 * scores + 9 * d * d + 8 * d) * size,  # at the attention
    )
    embeddings = kept["token ids"] + (dropout_rate(cfg, "emb") > 0) * bnd * mask_size
    other_blocks = (L - 1) * (bnd * size if checkpointing else block_kept)
    head_grads = (V * d + 2 * d) * size
    largest_parameter = max(V * d, 4 * d * d) * size
    return MemoryPlan(
        parts={
            "weights": weights,
            "gradients": params,
            "optimizer state": optimizer_state,
            "activations": activations,
        },
        moments={
            "loss backward": held + activations + 2 * b * n * V * size,
            "top block backward": held + embeddings + other_blocks + head_grads + block_peak,
            "bottom block backward": held
            + embeddings
            + head_grads
            + (L - 1) * block_parameter_count(cfg) * size
            + block_peak,
            "optimizer step": held + params + (params if on_cuda else 2 * largest_parameter),
        },
    )


def inference_memory(
    cfg: dict,
    batch_size: int,
    num_tokens: int,
    dtype: str | torch.dtype = torch.float32,
    new_tokens: int | None = None,
) -> MemoryPlan:
    """The memory of generating with a KV cache (shared.kv_cache.KVCacheGPTModel) in dtype:
    the weights, the cache of num_tokens positions for batch_size texts, and the activations of
    one forward step over new_tokens of them without autograd (default num_tokens: the prompt
    in one step, the largest one). The activations are the most held at once of: attention
    (5 (b, t, d) and 3 (b, h, t, n): scores, masked scores, weights), feed-forward (18
    (b, t, d): input, norm, first layer's output and GELU's temporaries) and head (2 (b, t, d)
    and the logits (b, t, V)), with t = new_tokens.
    """
    new_tokens = num_tokens if new_tokens is None else new_tokens
    _check(cfg, batch_size=batch_size, num_tokens=num_tokens, new_tokens=new_tokens)
    if new_tokens > num_tokens:
        raise ValueError(f"new_tokens ({new_tokens}) exceeds num_tokens ({num_tokens})")
    size = as_dtype(dtype).itemsize
    b, t, n, d = batch_size, new_tokens, num_tokens, cfg["emb_dim"]
    btd = b * t * d
    step = max(
        5 * btd + 3 * b * cfg["n_heads"] * t * n, 18 * btd, 2 * btd + b * t * cfg["vocab_size"]
    )
    parts = {
        "weights": weight_bytes(cfg, dtype),
        "KV cache": kv_cache_bytes(cfg, b, n, dtype),
        "activations": step * size,
    }
    return MemoryPlan(parts=parts, moments={"forward step": sum(parts.values())})


def largest_batch_size(
    cfg: dict,
    memory_bytes: int,
    num_tokens: int,
    dtype: str | torch.dtype = torch.float32,
    checkpointing: bool = False,
    device: str | torch.device = "cuda",
    training: bool = True,
    limit: int = 4096,
) -> int:
    """The largest batch of num_tokens sequences whose planned peak (training_memory, or with
    training=False inference_memory) fits in memory_bytes; 0 when not even one fits. Searches
    up to limit."""
    if memory_bytes <= 0:
        raise ValueError(f"memory_bytes must be > 0, got {memory_bytes!r}")

    def fits(batch: int) -> bool:
        if training:
            plan = training_memory(cfg, batch, num_tokens, dtype, checkpointing, device)
        else:
            plan = inference_memory(cfg, batch, num_tokens, dtype)
        return plan.peak <= memory_bytes

    low, high = 0, limit  # fits(low) (or low == 0); the answer is at most high
    while low < high:
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def format_bytes(count: float) -> str:
    """A byte count as a reader reads it: "512 B", "3.0 KiB", "45.6 MiB", "1.23 GiB"."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(count) >= size:
            return f"{count / size:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{count:.0f} B"


# --- running and measuring ------------------------------------------------------------------


def forward_checkpointed(model: GPTModel, in_idx: torch.Tensor) -> torch.Tensor:
    """model(in_idx) with each transformer block under activation checkpointing: the block keeps
    only its input, and its forward pass runs again in the backward pass. (b, n) -> (b, n, V)."""
    x = model.embed(in_idx)
    for block in model.trf_blocks:
        x = checkpoint(block, x, use_reentrant=False)
    return model.out_head(model.final_norm(x))


def training_loss(
    model: GPTModel, in_idx: torch.Tensor, targets: torch.Tensor, checkpointing: bool = False
) -> torch.Tensor:
    """Cross-entropy of model's logits for in_idx (b, n) against targets (b, n): a scalar. The
    logits are freed on return, as in Chapter 5's calc_loss_batch."""
    logits = forward_checkpointed(model, in_idx) if checkpointing else model(in_idx)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def training_step(
    model: GPTModel,
    optimizer: torch.optim.Optimizer,
    in_idx: torch.Tensor,
    targets: torch.Tensor,
    checkpointing: bool = False,
) -> float:
    """One step as training_memory plans it: zero_grad(set_to_none=True), the loss (b, n ids
    against b, n targets), backward, optimizer step. Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = training_loss(model, in_idx, targets, checkpointing)
    loss.backward()
    optimizer.step()
    return loss.item()


def saved_tensor_bytes(
    model: GPTModel, in_idx: torch.Tensor, targets: torch.Tensor, checkpointing: bool = False
) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of training_loss, as
    torch.autograd.graph.saved_tensors_hooks sees them being saved: each storage counted once
    (views share one), the model's parameters and buffers left out (they are the weights)."""
    weights = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers())}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        training_loss(model, in_idx, targets, checkpointing)
    return sum(kept.values())


# The measuring process's environment, so that its resident memory follows the tensors alive:
# glibc's allocator gives every block of 16 KiB or more pages of its own, returned to the system
# when freed (the test suite's setting in conftest.py keeps freed memory in the process instead,
# and so its peak can be far above the tensors'); Intel MKL, which computes float32 matrix
# products on x86 CPUs, frees its work buffers instead of keeping them for the next product
# (10-15 MiB kept otherwise); one thread, one set of buffers.
MEASURE_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=16384",
    "MKL_DISABLE_FAST_MM": "1",
    "OMP_NUM_THREADS": "1",
}


# How close measure_peak comes to training_memory's peak on the CPU in float32: within 2% of the
# prediction plus 2 MiB. Measured (ch04/memory-planner.ipynb, tests/test_memory.py): 0.5-1.3 MiB
# above it from tiny to medium models, the process's own small allocations (Python objects,
# autograd's graph, blocks under 16 KiB); the 2% covers the moments' approximations, which
# came within 1.5% of the tensor bytes PyTorch holds at the peak for the shapes tried.
TOLERANCE = (0.02, 2 * 2**20)


def within_tolerance(measured: int, predicted: int, tolerance: tuple = TOLERANCE) -> bool:
    """Whether measured bytes are within tolerance (share of predicted, bytes) of predicted."""
    share, slack = tolerance
    return abs(measured - predicted) <= share * predicted + slack


def measure_peak(
    cfg: dict,
    batch_size: int,
    num_tokens: int,
    dtype: str | torch.dtype = torch.float32,
    checkpointing: bool = False,
    device: str | torch.device = "cpu",
    training: bool = True,
) -> int:
    """The measured peak bytes of two training steps (training_step) of GPTModel(cfg) in dtype
    on batch_size sequences of num_tokens, or, with training=False, of one forward step over
    num_tokens with a KV cache (inference_memory's), run in a fresh Python process (measure_peaks).
    """
    return measure_peaks(
        [
            dict(
                cfg=cfg,
                batch_size=batch_size,
                num_tokens=num_tokens,
                dtype=dtype,
                checkpointing=checkpointing,
                device=device,
                training=training,
            )
        ]
    )[0]


def measure_peaks(runs: list[dict], env: dict[str, str] | None = None) -> list[int]:
    """measure_peak for each dict of its arguments in runs, one after another in one fresh
    Python process whose environment has MEASURE_ENV (or env) set: on CUDA the peak of
    torch.cuda.max_memory_allocated, on a Linux CPU the peak resident memory (VmHWM, reset
    before each run; a RuntimeError elsewhere), less what the process held before
    building the run's model. A small model runs first, so that no run counts the libraries
    loaded by the first step. A run may reuse memory that an earlier one freed: put small
    runs first."""
    specs = []
    for run in runs:
        run = {
            "dtype": torch.float32,
            "checkpointing": False,
            "device": "cpu",
            "training": True,
            **run,
        }
        _check(run["cfg"], batch_size=run["batch_size"], num_tokens=run["num_tokens"])
        run["dtype"] = str(as_dtype(run["dtype"])).removeprefix("torch.")
        run["device"] = str(run["device"])
        if not run["device"].startswith("cuda") and not os.path.exists(CPU_PEAK_COUNTER):
            raise RuntimeError(
                f"measuring the peak memory of a {run['device']} run needs a CUDA GPU or "
                f"Linux's resettable peak counter ({CPU_PEAK_COUNTER}); this machine has neither"
            )
        specs.append(run)
    code = "import sys; from shared.memory import _measure; print(*_measure(sys.argv[1]))"
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(specs)],
        capture_output=True,
        text=True,
        env={**os.environ, **(MEASURE_ENV if env is None else env)},
    )
    if result.returncode != 0:
        raise RuntimeError(f"the measuring process failed:\n{result.stderr[-2000:]}")
    return [int(word) for word in result.stdout.split()[-len(specs) :]]


CPU_PEAK_COUNTER = "/proc/self/clear_refs"  # Linux: writing "5" resets VmHWM, the peak


def _resident(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process in bytes (Linux)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak(device: torch.device) -> None:
    """Start counting the peak from now."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open(CPU_PEAK_COUNTER, "w", encoding="ascii") as clear:
            clear.write("5")  # resets VmHWM to the current resident memory


def bytes_in_use(device: torch.device, peak: bool) -> int:
    """Bytes in use on device now, or at the peak since reset_peak."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated)(device)
    return _resident("VmHWM" if peak else "VmRSS")


def _measure(specs_json: str) -> list[int]:
    """measure_peaks' work, in the fresh process: for each run build, run, return the peak."""
    torch.set_num_threads(1)

    def run(spec: dict, cfg: dict, b: int, n: int) -> int:
        device, dtype = torch.device(spec["device"]), as_dtype(spec["dtype"])
        torch.manual_seed(0)
        before = bytes_in_use(device, peak=False)
        if spec["training"]:
            model = GPTModel(cfg).to(device, dtype)
            optimizer = torch.optim.AdamW(model.parameters())
        else:
            from shared.kv_cache import KVCacheGPTModel

            model = KVCacheGPTModel(cfg).to(device, dtype).eval()
        ids = torch.randint(0, cfg["vocab_size"], (2, b, n), device=device)
        reset_peak(device)  # not before: converting the weights to dtype holds both copies
        if spec["training"]:
            for _ in range(2):
                training_step(model, optimizer, ids[0], ids[1], spec["checkpointing"])
        else:
            with torch.no_grad():
                model(ids[0], model.new_cache())
        return bytes_in_use(device, peak=True) - before

    peaks = []
    for spec in json.loads(specs_json):
        warm_up = {**spec["cfg"], "emb_dim": 8, "n_heads": 1, "n_layers": 1, "vocab_size": 16}
        run(spec, warm_up, 1, 2)
        peaks.append(run(spec, spec["cfg"], spec["batch_size"], spec["num_tokens"]))
    return peaks
