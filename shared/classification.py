"""Finetuning a GPT for classification (Chapter 6): spam data, dataset, accuracy, training loop.

Shapes: b = batch size, n = tokens per message after padding, d = emb_dim, C = number of classes.

A classifier is a GPTModel whose output layer maps d to C class scores instead of the vocabulary;
it is read at the last token, the only position whose causal attention has seen the whole message.

Naming: the classification losses are ``calc_classification_loss_batch`` and
``calc_classification_loss_loader``, so that they cannot be mistaken for shared.pretraining's
next-token ``calc_loss_batch`` and ``calc_loss_loader``. The chapter notebook builds them under the
book's names; tests check that both behave identically.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from shared.data import fetch, written_atomically
from shared.gpt import GPTModel
from shared.pretraining import load_model_checkpoint, read_checkpoint_extra, save_checkpoint

PAD_TOKEN_ID = 50256  # GPT-2's <|endoftext|>, used to pad messages to a common length
LABELS = {"ham": 0, "spam": 1}  # class names in the data file -> class index
SPLIT_FRACTIONS = (0.7, 0.1)  # train and validation fractions; the rest is the test set
# Finetuning defaults: the book's for GPT-2. The random stand-in of shared.gpt2_weights has no
# pretrained knowledge to protect; with the book's settings it ends around 90% test accuracy (89.7-91.7%
# over runs), with all weights trainable at 2e-4 at about 93% (see the Chapter 6 notebook).
FINETUNE_DEFAULTS = {
    "gpt2": {"trainable_blocks": 1, "learning_rate": 5e-5},
    "standin": {"trainable_blocks": "all", "learning_rate": 2e-4},
}


def _check_labels(labels: pd.Series, allowed: set[str], source: str, first_line: int) -> None:
    """Raise ValueError naming the first line (1-based) whose label is not in ``allowed``."""
    bad = ~labels.isin(allowed)
    if bad.any():
        row = int(bad.to_numpy().argmax())
        raise ValueError(
            f"{source} line {row + first_line}: label {labels.iloc[row]!r} is not one of "
            f"{', '.join(sorted(allowed))}"
        )


def load_sms_spam(path: str | Path | None = None) -> pd.DataFrame:
    """The SMS Spam Collection as a DataFrame with columns Label ("ham"/"spam") and Text.

    path: a tab-separated file with one ``label<TAB>text`` per line and no header; by default the
    UCI file, fetched (downloaded once, verified, cached) through shared.data.
    Quotes are ordinary characters (messages contain unbalanced quotes). Raises ValueError naming
    the line of the first label that is neither ham nor spam.
    """
    path = fetch("sms-spam-collection") if path is None else Path(path)
    df = pd.read_csv(
        path,
        sep="\t",
        header=None,
        names=["Label", "Text"],
        quoting=csv.QUOTE_NONE,
        dtype=str,
        keep_default_na=False,  # a message "NA" stays the text "NA"
        skip_blank_lines=False,  # keep row i on line i + 1, so errors name the right line
    )
    _check_labels(df["Label"], set(LABELS), Path(path).name, first_line=1)
    return df


def create_balanced_dataset(df: pd.DataFrame, seed: int = 123) -> pd.DataFrame:
    """Undersample "ham" to as many messages as there are "spam" messages.

    df: columns Label ("ham"/"spam") and Text. Returns the sampled ham rows followed by all spam
    rows (original index kept). ``seed`` makes the sample reproducible.
    """
    spam = df[df["Label"] == "spam"]
    ham = df[df["Label"] == "ham"]
    if len(ham) < len(spam):
        raise ValueError(f"cannot undersample ham: {len(ham)} ham but {len(spam)} spam messages")
    return pd.concat([ham.sample(len(spam), random_state=seed), spam])


def random_split(
    df: pd.DataFrame, train_frac: float, validation_frac: float, seed: int = 123
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Shuffle the rows (seeded) and cut them into train, validation and test DataFrames.

    The training set gets int(len(df) * train_frac) rows, validation int(len(df) * validation_frac),
    the test set the rest. Each part has a fresh 0..k-1 index.
    """
    if not (0 <= train_frac and 0 <= validation_frac and train_frac + validation_frac <= 1):
        raise ValueError(
            f"fractions must be >= 0 and sum to at most 1, got train_frac={train_frac}, "
            f"validation_frac={validation_frac}"
        )
    df = df.sample(frac=1, random_state=seed).reset_index(drop=True)
    train_end = int(len(df) * train_frac)
    validation_end = train_end + int(len(df) * validation_frac)
    return (
        df[:train_end],
        df[train_end:validation_end].reset_index(drop=True),
        df[validation_end:].reset_index(drop=True),
    )


def prepare_spam_splits(out_dir: str | Path, seed: int = 123) -> tuple[Path, Path, Path]:
    """The chapter's data pipeline: load, balance, label ham=0/spam=1, split 70/10/20, save.

    Writes train.csv, validation.csv and test.csv (columns Label, Text) into ``out_dir`` and
    returns their paths. With the UCI data and the default seed: 1,045 / 149 / 300 messages.
    Each file is written to a temporary name and renamed into place, so a reader (another
    notebook using the same folder) never sees a half-written file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    balanced = create_balanced_dataset(load_sms_spam(), seed=seed)
    balanced["Label"] = balanced["Label"].map(LABELS)
    paths = tuple(out_dir / f"{name}.csv" for name in ("train", "validation", "test"))
    for part, path in zip(random_split(balanced, *SPLIT_FRACTIONS, seed=seed), paths, strict=True):
        with written_atomically(path) as tmp:
            part.to_csv(tmp, index=None)
    return paths


class SpamDataset(Dataset):
    """Messages of a CSV file (columns Label, Text), tokenised and padded to one length.

    Labels may be 0/1 or ham/spam (ham=0, spam=1); any other label raises ValueError naming its
    line. Each message becomes its token ids, cut to ``max_length`` tokens when longer, then
    padded on the right with ``pad_token_id`` to ``max_length``. With max_length=None it is the
    longest message's length (at least 1, so that an empty message still has a token to read).
    ``<|endoftext|>`` inside a message is encoded as ordinary text.
    Items: (input_ids (max_length,) int64, label () int64).
    """

    def __init__(self, csv_file, tokenizer, max_length=None, pad_token_id=PAD_TOKEN_ID):
        self.data = pd.read_csv(csv_file, dtype=str, keep_default_na=False)
        missing = {"Label", "Text"} - set(self.data.columns)
        if missing:
            raise ValueError(f"{csv_file} lacks the column(s) {', '.join(sorted(missing))}")
        if len(self.data) == 0:
            raise ValueError(f"{csv_file} holds no messages")
        allowed = {"0", "1", *LABELS}
        _check_labels(self.data["Label"], allowed, str(csv_file), first_line=2)  # line 1: header
        self.labels = [int(LABELS.get(label, label)) for label in self.data["Label"]]

        self.encoded_texts = [
            tokenizer.encode(text, disallowed_special=()) for text in self.data["Text"]
        ]
        if max_length is None:
            max_length = max(1, max(len(ids) for ids in self.encoded_texts))
        elif max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = max_length
        self.encoded_texts = [
            ids[:max_length] + [pad_token_id] * (max_length - len(ids[:max_length]))
            for ids in self.encoded_texts
        ]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.tensor(self.encoded_texts[index], dtype=torch.long),
            torch.tensor(self.labels[index], dtype=torch.long),
        )

    def __len__(self) -> int:
        return len(self.data)


def convert_to_classifier(
    model: nn.Module, num_classes: int = 2, trainable_blocks: int | str = 1
) -> nn.Module:
    """Turn a GPTModel into a classifier in place and choose what finetuning may change.

    Replaces ``out_head`` with a fresh nn.Linear(d, num_classes) (on the model's device; seed
    torch beforehand for a reproducible head). trainable_blocks: an int k freezes everything except
    the last k transformer blocks, the final layer norm and the new head (k=0: norm and head
    only); "all" leaves every parameter trainable. Returns the model:
    token ids (b, n) -> class logits (b, n, num_classes).
    """
    n_blocks = len(model.trf_blocks)
    if trainable_blocks != "all" and not (
        isinstance(trainable_blocks, int) and 0 <= trainable_blocks <= n_blocks
    ):
        raise ValueError(
            f'trainable_blocks must be "all" or an int from 0 to {n_blocks}, got {trainable_blocks!r}'
        )
    weight = model.final_norm.scale
    model.out_head = nn.Linear(weight.shape[0], num_classes).to(weight.device, weight.dtype)
    if trainable_blocks == "all":
        model.requires_grad_(True)
        return model
    model.requires_grad_(False)
    for block in model.trf_blocks[n_blocks - trainable_blocks :]:
        block.requires_grad_(True)
    model.final_norm.requires_grad_(True)
    model.out_head.requires_grad_(True)
    return model


def _batches_to_use(data_loader, num_batches) -> int:
    """How many batches a *_loader function reads: all, or the first num_batches (>= 1)."""
    if len(data_loader) == 0:
        raise ValueError(
            "the data loader yields no batches (fewer examples than one batch with "
            "drop_last=True?); use more data or a smaller batch_size"
        )
    if num_batches is None:
        return len(data_loader)
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    return min(num_batches, len(data_loader))


def calc_accuracy_loader(data_loader, model, device, num_batches=None) -> float:
    """Fraction of examples whose last-token logits pick their label (argmax over classes).

    data_loader yields (input_ids (b, n), labels (b,)); only the first num_batches batches are
    used when given. Runs in eval mode without gradients and restores the model's mode.
    """
    num_batches = _batches_to_use(data_loader, num_batches)
    was_training = model.training
    model.eval()
    correct, seen = 0, 0
    with torch.no_grad():
        for i, (input_batch, target_batch) in enumerate(data_loader):
            if i == num_batches:
                break
            logits = model(input_batch.to(device))[:, -1, :]  # (b, C): the last token only
            predictions = torch.argmax(logits, dim=-1)
            correct += (predictions == target_batch.to(device)).sum().item()
            seen += predictions.shape[0]
    model.train(was_training)
    return correct / seen


def calc_classification_loss_batch(input_batch, target_batch, model, device) -> torch.Tensor:
    """Cross-entropy of the last token's class logits: input (b, n), labels (b,) -> scalar."""
    logits = model(input_batch.to(device))[:, -1, :]
    return nn.functional.cross_entropy(logits, target_batch.to(device))


def calc_classification_loss_loader(data_loader, model, device, num_batches=None) -> float:
    """Mean of calc_classification_loss_batch over the first num_batches batches (default all)."""
    num_batches = _batches_to_use(data_loader, num_batches)
    total = 0.0
    for i, (input_batch, target_batch) in enumerate(data_loader):
        if i == num_batches:
            break
        total += calc_classification_loss_batch(input_batch, target_batch, model, device).item()
    return total / num_batches


def evaluate_classifier(model, train_loader, val_loader, device, eval_iter) -> tuple[float, float]:
    """Training and validation loss over eval_iter batches each, in eval mode, without gradients."""
    model.eval()
    with torch.no_grad():
        train_loss = calc_classification_loss_loader(train_loader, model, device, eval_iter)
        val_loss = calc_classification_loss_loader(val_loader, model, device, eval_iter)
    model.train()
    return train_loss, val_loss


def train_classifier_simple(
    model, train_loader, val_loader, optimizer, device, num_epochs, eval_freq, eval_iter
):
    """Finetune a classifier; return train_losses, val_losses, train_accs, val_accs, examples_seen.

    Every eval_freq optimizer steps (from step 0) it records the training and validation loss
    over eval_iter batches; after each epoch, the training and validation accuracy over eval_iter
    batches. examples_seen is the number of training examples processed in total.
    """
    if eval_freq < 1 or eval_iter < 1:
        raise ValueError(f"eval_freq ({eval_freq}) and eval_iter ({eval_iter}) must be >= 1")
    if len(train_loader) == 0:
        raise ValueError("the training loader yields no batches; there is nothing to train on")
    train_losses, val_losses, train_accs, val_accs = [], [], [], []
    examples_seen, global_step = 0, -1
    # The progress bar redraws at most every 2 seconds, which keeps saved notebook outputs short.
    progress = tqdm(
        total=num_epochs * len(train_loader), desc="Training", unit="step", mininterval=2
    )
    with progress as bar:
        for epoch in range(num_epochs):
            model.train()
            for input_batch, target_batch in train_loader:
                optimizer.zero_grad()
                loss = calc_classification_loss_batch(input_batch, target_batch, model, device)
                loss.backward()
                optimizer.step()
                examples_seen += input_batch.shape[0]
                global_step += 1
                if global_step % eval_freq == 0:
                    train_loss, val_loss = evaluate_classifier(
                        model, train_loader, val_loader, device, eval_iter
                    )
                    train_losses.append(train_loss)
                    val_losses.append(val_loss)
                    tqdm.write(
                        f"Ep {epoch + 1} (Step {global_step:06d}): "
                        f"Train loss {train_loss:.3f}, Val loss {val_loss:.3f}"
                    )
                bar.update(1)
            train_accuracy = calc_accuracy_loader(train_loader, model, device, eval_iter)
            val_accuracy = calc_accuracy_loader(val_loader, model, device, eval_iter)
            tqdm.write(
                f"Training accuracy: {train_accuracy * 100:.2f}% | "
                f"Validation accuracy: {val_accuracy * 100:.2f}%"
            )
            train_accs.append(train_accuracy)
            val_accs.append(val_accuracy)
    return train_losses, val_losses, train_accs, val_accs, examples_seen


def classify_review(
    text, model, tokenizer, device, max_length=None, pad_token_id=PAD_TOKEN_ID
) -> str:
    """Classify one message: "spam" or "not spam".

    The message is tokenised, cut to max_length tokens (and always to the model's context
    length), then padded to that length, as SpamDataset does for training. With max_length=None
    it is not padded; an empty message becomes a single pad token.
    """
    context_length = model.pos_emb.weight.shape[0]
    limit = context_length if max_length is None else min(max_length, context_length)
    input_ids = tokenizer.encode(text, disallowed_special=())[:limit]
    target_length = max(1, len(input_ids)) if max_length is None else limit
    input_ids += [pad_token_id] * (target_length - len(input_ids))

    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor(input_ids, device=device).unsqueeze(0))[:, -1, :]
    return "spam" if torch.argmax(logits, dim=-1).item() == LABELS["spam"] else "not spam"


def create_spam_loaders(
    csv_files, tokenizer, batch_size=8, max_length=None, num_workers=0, seed=123
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train, validation and test loaders over three CSV files (see SpamDataset).

    Validation and test messages are padded or cut to the training set's max_length. Only the
    training loader shuffles (seeded) and drops its last incomplete batch.
    """
    train_csv, val_csv, test_csv = csv_files
    train_dataset = SpamDataset(train_csv, tokenizer, max_length=max_length)
    val_dataset = SpamDataset(val_csv, tokenizer, max_length=train_dataset.max_length)
    test_dataset = SpamDataset(test_csv, tokenizer, max_length=train_dataset.max_length)
    if len(train_dataset) < batch_size:
        raise ValueError(
            f"{len(train_dataset)} training messages are fewer than batch_size={batch_size}, so "
            "the training loader (which drops its last incomplete batch) would yield no batch"
        )
    generator = torch.Generator().manual_seed(seed)
    return (
        DataLoader(
            train_dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=num_workers,
            generator=generator,
        ),
        DataLoader(val_dataset, batch_size=batch_size, num_workers=num_workers),
        DataLoader(test_dataset, batch_size=batch_size, num_workers=num_workers),
    )


def save_classifier(path, model, config: dict, max_length: int, **extra):
    """Save a classifier with what load_classifier needs to rebuild it; returns the path.

    config: the GPTModel config it was built from; max_length: the padded message length it was
    trained with. extra: more plain entries (e.g. accuracies). Written by
    shared.pretraining.save_checkpoint (atomic).
    """
    return save_checkpoint(
        path,
        model,
        config=config,
        num_classes=model.out_head.out_features,
        max_length=max_length,
        **extra,
    )


def load_classifier(path, device="cpu") -> tuple[GPTModel, dict]:
    """Rebuild a classifier saved by save_classifier: (model on device in eval mode, its extras).

    The extra entries include config, num_classes and max_length. Reads with
    torch.load(weights_only=True). Raises ValueError when the file lacks them.
    """
    extra = read_checkpoint_extra(path)
    missing = [key for key in ("config", "num_classes", "max_length") if key not in extra]
    if missing:
        raise ValueError(
            f"{path} is not a classifier saved by save_classifier: it lacks {', '.join(missing)}"
        )
    num_classes = extra["num_classes"]
    model, _ = load_model_checkpoint(
        path, lambda config: convert_to_classifier(GPTModel(config), num_classes)
    )
    return model.to(device).eval(), extra
