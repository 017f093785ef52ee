"""Loading a Hugging Face model.safetensors into OpenDecoderModel in little memory
(ch05/open-models/low-memory-loading.ipynb teaches it; ch05/open-models/benchmark_loading.py
measures it at Llama 3.2 1B's size).

Four ways, each a function (path, cfg) -> model in eval mode, from the most memory to the least
(LOADING_WAYS); every one checks the file as load_hf_weights does (names, shapes, a tied head):

- load_naive: the model built as usual (randomly initialised), the whole file read into a dict
  and copied in. Holds the model and a second copy of it.
- load_meta_assign: the model built on the meta device (shapes without memory, nothing
  initialised); the file's tensors become its parameters (load_state_dict(assign=True)).
  Holds one copy.
- load_one_at_a_time: the model's memory allocated but not initialised; each tensor read from
  the memory-mapped file, copied in and let go before the next. Holds the model and one tensor.
- load_into_bf16: load_one_at_a_time into a bfloat16 model: half the bytes.

measure_loading runs ways in fresh processes and reports the peak resident memory of each
(Linux, with shared.memory's counter), its times and its logits; loading_table prints them.

load_into_empty is load_one_at_a_time's way for any OpenDecoderModel class and any mapping of
Hugging Face names to tensors: a SafetensorsFile, or a ShardedSafetensors over the files that
a sharded checkpoint's model.safetensors.index.json names (shard_names, shard_files to fetch
them). OLMo 3 and Qwen3-MoE load their published checkpoints with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from shared.data import CorruptDataError, DataFile, written_atomically
from shared.gpt2_weights import check_safetensors
from shared.memory import (
    CPU_PEAK_COUNTER,
    MEASURE_ENV,
    as_dtype,
    bytes_in_use,
    format_bytes,
    reset_peak,
)
from shared.open_models import OpenDecoderModel, hf_key_mapping, load_hf_weights

# --- saving -------------------------------------------------------------------------------------


def save_hf_checkpoint(model: OpenDecoderModel, path: str | Path, metadata: dict | None = None):
    """Write model's parameters to path as a Hugging Face-layout model.safetensors (the names of
    hf_key_mapping; a tied head stored once, as the embedding, as Hugging Face stores it), with
    optional text metadata ({str: str}). Written to a temporary file and renamed into place, so
    an interrupted save never leaves a half-written file under path."""
    params = dict(model.named_parameters())
    tensors = {hf: params[course].contiguous() for course, hf in hf_key_mapping(model).items()}
    with written_atomically(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def _config_text(cfg: dict) -> str:
    """cfg as JSON text (a dtype by its name), the same for equal configs."""
    named = {**cfg, "dtype": str(cfg["dtype"]).removeprefix("torch.")} if "dtype" in cfg else cfg
    return json.dumps(named, sort_keys=True)


def _config_from_text(text: str) -> dict:
    cfg = json.loads(text)
    if "dtype" in cfg:
        cfg["dtype"] = as_dtype(cfg["dtype"])
    return cfg


def save_random_checkpoint(cfg: dict, path: str | Path, seed: int = 0) -> bool:
    """Save OpenDecoderModel(cfg), randomly initialised after torch.manual_seed(seed), to path
    (save_hf_checkpoint), unless the file there was saved for the same cfg and seed (its
    metadata says so). Returns whether it wrote the file."""
    path = Path(path)
    wanted = {"course_config": _config_text(cfg), "seed": str(seed)}
    try:
        check_safetensors(path)
        with safe_open(path, "pt") as f:
            if f.metadata() == wanted:
                return False
    except (OSError, ValueError):
        pass  # missing or unreadable: write it
    torch.manual_seed(seed)
    save_hf_checkpoint(OpenDecoderModel(cfg), path, wanted)
    return True


# --- reading ------------------------------------------------------------------------------------


class SafetensorsFile(Mapping):
    """The tensors of a safetensors file by name, each read only when asked for.

    Each access maps the file (safe_open), takes the one tensor and closes the file, so the
    tensor's pages stay resident only while the returned tensor lives. (Pages read through one
    safe_open handle stay resident until the handle closes: reading every tensor through one
    handle would end with the whole file resident.) Raises shared.data.CorruptDataError naming
    the file when it is not a safetensors file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        check_safetensors(self.path)
        with safe_open(self.path, "pt") as f:
            self._names = list(f.keys())

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._names:
            raise KeyError(name)
        with safe_open(self.path, "pt") as f:
            return f.get_tensor(name)

    def shape_of(self, name: str) -> torch.Size:
        """The shape of self[name], read from the file's header (no values read)."""
        if name not in self._names:
            raise KeyError(name)
        with safe_open(self.path, "pt") as f:
            return torch.Size(f.get_slice(name).get_shape())

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class ShardedSafetensors(Mapping):
    """The tensors of a checkpoint split over several safetensors files, by name, each read
    from its file only when asked for (a SafetensorsFile per file). Raises ValueError naming a
    tensor that two files both hold."""

    def __init__(self, paths: Iterable[str | Path]):
        self._file_of: dict[str, SafetensorsFile] = {}
        for path in paths:
            shard = SafetensorsFile(path)
            for name in shard:
                if name in self._file_of:
                    raise ValueError(f"{name} is in more than one file (again in {shard.path})")
                self._file_of[name] = shard

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._file_of[name][name]

    def shape_of(self, name: str) -> torch.Size:
        """The shape of self[name], from its file's header."""
        return self._file_of[name].shape_of(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._file_of)

    def __len__(self) -> int:
        return len(self._file_of)


def shard_names(index_path: str | Path) -> list[str]:
    """The safetensors files a model.safetensors.index.json names (its weight_map's values),
    sorted, each once. Raises shared.data.CorruptDataError when it has no weight_map."""
    index = json.loads(Path(index_path).read_text(encoding="utf-8"))
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not weight_map:
        raise CorruptDataError(f"{Path(index_path).name}: no weight_map")
    return sorted(set(weight_map.values()))


def shard_files(index_path: str | Path, folder: str, url: str) -> list[DataFile]:
    """The files shard_names(index_path) names, as shared.data.DataFiles to fetch: each cached
    as folder/<name>, downloaded from url/<name>, checked to be a safetensors file."""
    return [
        DataFile(f"{folder}/{name}", f"{url}/{name}", check=check_safetensors)
        for name in shard_names(index_path)
    ]


# --- building on the meta device -----------------------------------------------------------------


def build_on_meta(
    cfg: dict, model_class: type[OpenDecoderModel] = OpenDecoderModel
) -> OpenDecoderModel:
    """model_class(cfg) on PyTorch's meta device: every parameter and buffer has its shape and
    dtype but no memory, and initialising them does nothing. Fast at any size.

    The non-persistent buffers (RoPE tables, causal mask) are meta too, and no checkpoint holds
    them: model.make_buffers(cfg) makes real ones on the CPU afterwards."""
    with torch.device("meta"):
        return model_class(cfg)


def tie_head(model: OpenDecoderModel, cfg: dict) -> None:
    """With cfg's tie_embeddings, make out_head.weight the tok_emb.weight Parameter again:
    load_state_dict(assign=True) and to_empty give each module a Parameter of its own."""
    if cfg["tie_embeddings"]:
        model.out_head.weight = model.tok_emb.weight


# --- the four ways ------------------------------------------------------------------------------


def load_naive(path: str | Path, cfg: dict) -> OpenDecoderModel:
    """The usual way: OpenDecoderModel(cfg) built and randomly initialised (numbers thrown away
    at once), the whole file read into a dict (safetensors' load_file) and copied in
    (load_hf_weights).

    Holds, at the end of the copy, the model and the dict: two copies of every weight. (The
    dict's tensors are the memory-mapped file: each becomes resident when the copy reads it,
    and stays until the dict is freed.) The random initialisation costs time as well.
    """
    check_safetensors(Path(path))
    model = OpenDecoderModel(cfg)
    load_hf_weights(model, load_file(path))
    return model.eval()


def load_meta_assign(path: str | Path, cfg: dict) -> OpenDecoderModel:
    """Built on the meta device, the file's tensors put in place of the parameters.

    build_on_meta allocates and initialises nothing. load_hf_weights checks the file against it
    (copying into a meta tensor does nothing), then load_state_dict(assign=True) makes each
    loaded tensor the parameter itself instead of copying it into one. Holds one copy of every
    weight: where the file has the model's dtype, the memory-mapped file itself, so loading
    reads nothing and each weight becomes resident when first used; in another dtype, a
    converted copy of each, and, until loading returns, the file's pages that the conversion
    read. The tied head and the buffers are then made right (tie_head,
    model.make_buffers).
    """
    check_safetensors(Path(path))
    model = build_on_meta(cfg)
    params = load_file(path)
    load_hf_weights(model, params)
    dtype = cfg.get("dtype") or torch.float32
    mapping = hf_key_mapping(model)
    state = {course: params[hf].to(dtype) for course, hf in mapping.items()}
    if "out_head.weight" not in mapping:  # tied: the state dict names the one tensor twice
        state["out_head.weight"] = state["tok_emb.weight"]
    model.load_state_dict(state, assign=True)
    tie_head(model, cfg)
    model.make_buffers(cfg)
    return model.eval()


def load_into_empty(
    model_class: type[OpenDecoderModel], cfg: dict, params: Mapping[str, torch.Tensor]
) -> OpenDecoderModel:
    """model_class(cfg) with params (Hugging Face names -> tensors), in eval mode, its memory
    allocated but not initialised and each tensor copied in and let go before the next.

    build_on_meta, then to_empty gives every parameter memory as it is (no random numbers: all
    are overwritten), the head is tied again and the buffers made (model.make_buffers), and
    load_hf_weights checks params and copies each in, converting to the model's dtype. With
    params that read each tensor only when asked for (SafetensorsFile, ShardedSafetensors) it
    holds the model (each page resident once written) and the tensor being copied: at most the
    model and its largest tensor.
    """
    model = build_on_meta(cfg, model_class)
    model.to_empty(device="cpu")
    tie_head(model, cfg)  # before loading: hf_key_mapping expects a tied head once
    model.make_buffers(cfg)
    load_hf_weights(model, params)
    return model.eval()


def load_one_at_a_time(path: str | Path, cfg: dict) -> OpenDecoderModel:
    """Memory allocated for the model but not initialised; each tensor of the memory-mapped
    file copied in and let go before the next: load_into_empty from a SafetensorsFile, which
    maps the file for one tensor at a time. Holds at most the model and its largest tensor."""
    return load_into_empty(OpenDecoderModel, cfg, SafetensorsFile(path))


def load_into_bf16(path: str | Path, cfg: dict) -> OpenDecoderModel:
    """load_one_at_a_time into a bfloat16 model: 2 bytes a weight instead of float32's 4.

    Holds half the float32 model and the (float32) tensor being converted. bfloat16 keeps
    float32's range but 8 significant bits (each weight rounded to within 2^-9 of itself), so
    the logits come close to float32's but not equal (BF16_LOGITS_TOLERANCE).
    """
    return load_one_at_a_time(path, {**cfg, "dtype": torch.bfloat16})


LOADING_WAYS = {
    "naive": load_naive,
    "meta-assign": load_meta_assign,
    "one-at-a-time": load_one_at_a_time,
    "bf16": load_into_bf16,
}


# --- measuring ----------------------------------------------------------------------------------

# How close the logits of load_into_bf16 must come to float32's: the largest difference at most
# this share of the largest float32 logit. bfloat16 rounds each weight to within 2^-9 (0.2%) of
# itself; random models of Llama 3.2 1B's shape and of the notebook's 8-layer one came within
# 0.3% (benchmark_loading.py, low-memory-loading.ipynb), several times less.
BF16_LOGITS_TOLERANCE = 0.02


@dataclass
class LoadingRun:
    """What measure_loading saw of one way, in its own process. Bytes are resident memory above
    what the process held before loading (Python, PyTorch, the prompt).

    peak_bytes: the most, from the start of loading to the end of the first forward pass (a
        memory-mapped weight becomes resident only when read);
    loaded_bytes: right after loading;
    model_bytes: the model's parameters and buffers (each tensor once);
    logits: (prompt_tokens, V) float32, of one forward pass over a random prompt.
    """

    way: str
    dtype: str
    peak_bytes: int
    loaded_bytes: int
    model_bytes: int
    load_seconds: float
    forward_seconds: float
    logits: torch.Tensor


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of model's parameters and buffers, memory shared by two of them counted once (on
    the meta device, where nothing has an address, each tensor counts)."""
    tensors = {
        id(t) if t.is_meta else t.data_ptr(): t.nbytes
        for t in (*model.parameters(), *model.buffers())
    }
    return sum(tensors.values())


def measure_loading(
    ways: list[str], path: str | Path, cfg: dict, prompt_tokens: int = 8
) -> list[LoadingRun]:
    """Load path (a model.safetensors for cfg) with each of ways (names in LOADING_WAYS), each in
    a fresh Python process with shared.memory.MEASURE_ENV's environment (memory freed goes back
    to the system, one thread), and run one forward pass over the same random prompt.

    Needs Linux's resettable peak counter (a RuntimeError elsewhere); raises ValueError for an
    unknown way, CorruptDataError for a file that is not safetensors.
    """
    unknown = [way for way in ways if way not in LOADING_WAYS]
    if unknown:
        raise ValueError(f"unknown way {unknown[0]!r}; choose from {', '.join(LOADING_WAYS)}")
    if not os.path.exists(CPU_PEAK_COUNTER):
        raise RuntimeError(
            f"measuring peak resident memory needs Linux's resettable counter "
            f"({CPU_PEAK_COUNTER}); this machine has none"
        )
    check_safetensors(Path(path))
    runs = []
    with tempfile.TemporaryDirectory() as folder:
        for way in ways:
            logits_path = Path(folder) / f"{way}.safetensors"
            spec = {
                "way": way,
                "path": str(path),
                "cfg": _config_text(cfg),
                "prompt_tokens": prompt_tokens,
                "logits_path": str(logits_path),
            }
            code = "import sys; from shared.weight_loading import _measure; _measure(sys.argv[1])"
            result = subprocess.run(
                [sys.executable, "-c", code, json.dumps(spec)],
                capture_output=True,
                text=True,
                env={**os.environ, **MEASURE_ENV},
            )
            if result.returncode != 0:
                raise RuntimeError(f"loading with {way!r} failed:\n{result.stderr[-2000:]}")
            figures = json.loads(result.stdout.splitlines()[-1])
            runs.append(LoadingRun(way=way, **figures, logits=load_file(logits_path)["logits"]))
    return runs


def _warm_up(way: str, cfg: dict) -> None:
    """Load a tiny model like cfg's with way and run it once, so that no measured run counts
    what a first use loads (PyTorch's meta-device support, matrix-product libraries)."""
    tiny = {**cfg, "vocab_size": 16, "emb_dim": 16, "hidden_dim": 16, "n_layers": 1}
    tiny.update(context_length=16, layer_types=None)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny.safetensors"
        save_hf_checkpoint(OpenDecoderModel(tiny), path)
        with torch.no_grad():
            LOADING_WAYS[way](path, tiny)(torch.zeros(1, 2, dtype=torch.long))


def _measure(spec_json: str) -> None:
    """measure_loading's work, in the fresh process: load, run, print the figures as JSON."""
    spec = json.loads(spec_json)
    cfg = _config_from_text(spec["cfg"])
    cpu = torch.device("cpu")
    _warm_up(spec["way"], cfg)
    prompt = torch.randint(
        0, cfg["vocab_size"], (1, spec["prompt_tokens"]), generator=torch.Generator().manual_seed(0)
    )
    before = bytes_in_use(cpu, peak=False)
    reset_peak(cpu)
    start = time.perf_counter()
    model = LOADING_WAYS[spec["way"]](spec["path"], cfg)
    load_seconds = time.perf_counter() - start
    loaded_bytes = bytes_in_use(cpu, peak=False) - before
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(prompt)[0]
    forward_seconds = time.perf_counter() - start
    peak_bytes = bytes_in_use(cpu, peak=True) - before
    save_file({"logits": logits.float().contiguous()}, spec["logits_path"])
    figures = {
        "dtype": str(model.tok_emb.weight.dtype).removeprefix("torch."),
        "peak_bytes": peak_bytes,
        "loaded_bytes": loaded_bytes,
        "model_bytes": model_bytes(model),
        "load_seconds": load_seconds,
        "forward_seconds": forward_seconds,
    }
    print(json.dumps(figures))


def logits_agreement(run: LoadingRun, reference: LoadingRun) -> str:
    """How run's logits compare with reference's (float32): "equal" (bit for bit), for a
    bfloat16 run "close (...)" within BF16_LOGITS_TOLERANCE, else "differ (...)"."""
    if torch.equal(run.logits, reference.logits):
        return "equal"
    largest = (run.logits - reference.logits).abs().max().item()
    share = largest / reference.logits.abs().max().item()
    close = run.dtype == "bfloat16" and share <= BF16_LOGITS_TOLERANCE
    return f"{'close' if close else 'differ'} (largest difference {share:.1%} of the largest)"


def loading_table(runs: list[LoadingRun]) -> str:
    """runs side by side, one line each (bytes as shared.memory.format_bytes writes them,
    seconds), their logits compared with the first run's (the naive way's, where it ran first)."""
    header = (
        f"{'way':14s} {'peak':>10s} {'after load':>10s} {'model':>10s} {'load s':>7s} "
        f"{'forward s':>9s}  logits vs {runs[0].way}"
    )
    lines = [header, "-" * len(header)]
    for run in runs:
        lines.append(
            f"{run.way:14s} {format_bytes(run.peak_bytes):>10s} "
            f"{format_bytes(run.loaded_bytes):>10s} {format_bytes(run.model_bytes):>10s} "
            f"{run.load_seconds:7.2f} {run.forward_seconds:9.2f}  "
            f"{logits_agreement(run, runs[0])}"
        )
    return "\n".join(lines)
