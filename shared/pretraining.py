"""Pretraining of Chapter 5: the loss, the training loop, decoding strategies and checkpoints.

Shapes: b = batch size, n = number of tokens, V = vocab_size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from matplotlib.ticker import MaxNLocator
from torch import nn
from tqdm import tqdm

from shared.checkpoints import (  # noqa: F401  the chapter's checkpoints, kept in their own module
    load_checkpoint,
    load_model_checkpoint,
    read_checkpoint_extra,
    save_checkpoint,
)
from shared.tokenizers import END_OF_TEXT


def text_to_token_ids(text: str, tokenizer) -> torch.Tensor:
    """Encode text (``<|endoftext|>`` allowed) into a batch of one: LongTensor (1, n)."""
    encoded = tokenizer.encode(text, allowed_special={END_OF_TEXT})
    return torch.tensor(encoded, dtype=torch.long).unsqueeze(0)


def token_ids_to_text(token_ids: torch.Tensor, tokenizer) -> str:
    """Decode token ids of shape (n,) or (1, n) back into text."""
    if token_ids.dim() == 2:
        if token_ids.shape[0] != 1:
            raise ValueError(
                f"token_ids has shape {tuple(token_ids.shape)}; pass one sequence, "
                "(n,) or (1, n), or decode the rows of a batch one by one"
            )
        token_ids = token_ids[0]
    elif token_ids.dim() != 1:
        raise ValueError(f"token_ids must be (n,) or (1, n), got {tuple(token_ids.shape)}")
    return tokenizer.decode(token_ids.tolist())


def calc_loss_batch(
    input_batch: torch.Tensor, target_batch: torch.Tensor, model: nn.Module, device
) -> torch.Tensor:
    """Mean cross-entropy of the model's next-token predictions for one batch.

    input_batch, target_batch: (b, n) token ids; targets equal to -100 are ignored.
    Returns a scalar tensor (with gradient when the model is trained).
    """
    input_batch = input_batch.to(device)
    target_batch = target_batch.to(device)
    logits = model(input_batch)  # (b, n, V)
    return F.cross_entropy(logits.flatten(0, 1), target_batch.flatten())


def calc_loss_loader(
    data_loader, model: nn.Module, device, num_batches: int | None = None
) -> float:
    """Average calc_loss_batch over the first num_batches batches (all when None) of a loader.

    Raises ValueError when the loader yields no batch, instead of returning nan.
    """
    if len(data_loader) == 0:
        raise ValueError(
            "the data loader yields no batches (too little text for one batch, e.g. with "
            "drop_last=True); use more text, a smaller batch_size or a shorter context"
        )
    if num_batches is None:
        num_batches = len(data_loader)
    else:
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        num_batches = min(num_batches, len(data_loader))
    total = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i >= num_batches:
            break
        total += calc_loss_batch(input_batch, target_batch, model, device).item()
    return total / num_batches


def evaluate_model(
    model: nn.Module, train_loader, val_loader, device, eval_iter: int
) -> tuple[float, float]:
    """Training and validation loss over eval_iter batches each, in eval mode without gradients.

    The model is put back into training mode afterwards.
    """
    model.eval()
    with torch.no_grad():
        train_loss = calc_loss_loader(train_loader, model, device, num_batches=eval_iter)
        val_loss = calc_loss_loader(val_loader, model, device, num_batches=eval_iter)
    model.train()
    return train_loss, val_loss


def generate_and_print_sample(model: nn.Module, tokenizer, device, start_context: str) -> str:
    """Greedily continue start_context by 50 tokens, print the text on one line and return it."""
    model.eval()
    context_size = model.context_length  # GPTModel and the open models both have it
    encoded = text_to_token_ids(start_context, tokenizer).to(device)
    with torch.no_grad():
        token_ids = generate(model, encoded, max_new_tokens=50, context_size=context_size)
    text = token_ids_to_text(token_ids.cpu(), tokenizer).replace("\n", " ")
    tqdm.write(text)
    model.train()
    return text


def evaluate_and_print(
    model: nn.Module,
    train_loader,
    val_loader,
    device,
    eval_iter: int,
    epoch: int,
    step: int,
    show: bool = True,
) -> tuple[float, float]:
    """evaluate_model, printing the losses as "Ep 1 (Step 000000): Train loss ..., Val loss ..."
    (epoch counted from 0, shown from 1; show=False prints nothing). Returns (train, val)."""
    train_loss, val_loss = evaluate_model(model, train_loader, val_loader, device, eval_iter)
    if show:
        tqdm.write(
            f"Ep {epoch + 1} (Step {step:06d}): "
            f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}"
        )
    return train_loss, val_loss


def check_training_args(train_loader, eval_freq: int, eval_iter: int) -> None:
    """A clear error for evaluation settings below 1 and for a loader with no batches."""
    if eval_freq < 1 or eval_iter < 1:
        raise ValueError(f"eval_freq ({eval_freq}) and eval_iter ({eval_iter}) must be >= 1")
    if len(train_loader) == 0:
        raise ValueError("the training loader yields no batches; there is nothing to train on")


def train_model_simple(
    model: nn.Module,
    train_loader,
    val_loader,
    optimizer: torch.optim.Optimizer,
    device,
    num_epochs: int,
    eval_freq: int,
    eval_iter: int,
    start_context: str | None,
    tokenizer,
) -> tuple[list[float], list[float], list[int]]:
    """Train for num_epochs over train_loader, minimising calc_loss_batch: the book's loop.

    Every eval_freq optimizer steps (starting with the first) it evaluates on eval_iter batches
    of each loader and prints the losses; after each epoch it prints a greedy continuation of
    start_context (None: no sample, which saves 50 forward passes per epoch). A tqdm bar counts
    the steps. Returns (train_losses, val_losses, track_tokens_seen), one entry per evaluation.
    shared.speed.train_model is this loop with bf16, torch.compile, gradient accumulation, a
    learning-rate schedule, clipping and data parallelism.
    """
    check_training_args(train_loader, eval_freq, eval_iter)
    train_losses, val_losses, track_tokens_seen = [], [], []
    tokens_seen, global_step = 0, 0

    model.train()
    with tqdm(total=num_epochs * len(train_loader), desc="Training", unit="step") as bar:
        for epoch in range(num_epochs):
            for input_batch, target_batch in train_loader:
                optimizer.zero_grad()  # reset the gradients of the previous batch
                loss = calc_loss_batch(input_batch, target_batch, model, device)
                loss.backward()  # gradients of the loss
                optimizer.step()  # update the weights with them
                tokens_seen += input_batch.numel()

                if global_step % eval_freq == 0:
                    losses = evaluate_and_print(
                        model, train_loader, val_loader, device, eval_iter, epoch, global_step
                    )
                    train_losses.append(losses[0])
                    val_losses.append(losses[1])
                    track_tokens_seen.append(tokens_seen)
                global_step += 1
                bar.update(1)
            if start_context is not None:
                generate_and_print_sample(model, tokenizer, device, start_context)
    return train_losses, val_losses, track_tokens_seen


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    use_cache: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Extend the token ids idx (b, n) by up to max_new_tokens tokens.

    The model sees the last context_size tokens. temperature 0 picks the most likely token
    (greedy); temperature > 0 samples from softmax(logits / temperature), restricted to the
    top_k most likely tokens when top_k is given (the others get logit -inf). When eos_id is
    produced, generation stops and eos_id is not appended; in a batch, generation stops once
    every row has produced it, and rows that finished earlier are padded with eos_id.
    Returns (b, n + m) with m <= max_new_tokens. Runs without gradients; the caller chooses
    eval or train mode.

    use_cache=True (a model with new_cache(), such as shared.kv_cache.KVCacheGPTModel) gives the
    same tokens faster: the keys and values of tokens already seen are kept in a cache made for
    this call, so each step only processes the newest token. Once the window of context_size
    tokens is full it slides, which shifts every token's absolute position, so from then on a
    new cache is filled from the window at each step.

    generator: the random numbers for sampling (None: PyTorch's global ones, which
    torch.manual_seed sets); one per request keeps concurrent requests reproducible.
    generate_tokens yields the same new tokens one step at a time.
    """
    settings = dict(temperature=temperature, top_k=top_k, eos_id=eos_id, use_cache=use_cache)
    steps = list(
        generate_tokens(model, idx, max_new_tokens, context_size, **settings, generator=generator)
    )
    return torch.cat([idx, *steps], dim=1) if steps else idx


def generate_tokens(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    use_cache: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """generate, one step at a time: yields each step's new token ids (b, 1), the tokens
    generate appends, for streaming them as they come. The settings are checked at the call,
    not at the first step. With use_cache each call has a cache of its own, so several
    generations may run on one model at once (interleaved, or in threads).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if use_cache and not hasattr(model, "new_cache"):
        raise TypeError(
            f"use_cache=True needs a model with a KV cache, got {type(model).__name__}; "
            "build shared.kv_cache.KVCacheGPTModel(cfg) and load the same state_dict"
        )
    return _generation_steps(
        model, idx, max_new_tokens, context_size, temperature, top_k, eos_id, use_cache, generator
    )


def _generation_steps(
    model, idx, max_new_tokens, context_size, temperature, top_k, eos_id, use_cache, generator
) -> Iterator[torch.Tensor]:
    """The loop of generate_tokens, after its checks."""
    finished = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
    cache = None
    for _ in range(max_new_tokens):
        if use_cache and (cache is None or cache.length >= context_size):
            cache = model.new_cache()  # the first step, or the window slid: refill from it
        logits = next_token_logits(model, idx, context_size, cache)
        idx_next = pick_next_token(logits, temperature, top_k, generator)
        if eos_id is not None:
            idx_next = idx_next.masked_fill(finished.unsqueeze(1), eos_id)
            finished |= idx_next.squeeze(1) == eos_id
            if finished.all():
                return
        yield idx_next
        idx = torch.cat((idx, idx_next), dim=1)


def next_token_logits(
    model: nn.Module, idx: torch.Tensor, context_size: int, cache=None
) -> torch.Tensor:
    """The model's logits (b, V) for the token after idx (b, n), without gradients. Without a
    cache the model sees the last context_size ids; with an empty cache it sees them too and
    fills the cache; with a filled one, idx continues the ids the cache has seen and only the
    newest is fed."""
    with torch.no_grad():
        if cache is None:
            return model(idx[:, -context_size:])[:, -1, :]
        new_ids = idx[:, -1:] if cache.length else idx[:, -context_size:]
        return model(new_ids, cache)[:, -1, :]


def pick_next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token ids (b, 1) from logits (b, V): the most likely (temperature 0) or a sample
    from softmax(logits / temperature) among the top_k most likely (all when top_k is None)."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (b, 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if temperature > 0.0:
        probs = torch.softmax(logits / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)  # (b, 1)
    return torch.argmax(logits, dim=-1, keepdim=True)  # (b, 1)


def plot_losses(
    epochs_seen: Iterable[float],
    tokens_seen: Iterable[int],
    train_losses: Iterable[float],
    val_losses: Iterable[float],
):
    """Plot training and validation loss against epochs, with tokens seen on a second x-axis.

    All four sequences have one entry per evaluation. Returns the matplotlib figure.
    """
    fig, ax1 = plt.subplots(figsize=(5, 3))
    ax1.plot(epochs_seen, train_losses, label="Training loss")
    ax1.plot(epochs_seen, val_losses, linestyle="-.", label="Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    ax1.legend(loc="upper right")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax1.twiny()  # same curves, measured in tokens instead of epochs
    ax2.plot(tokens_seen, train_losses, alpha=0)
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    return fig
