"""shared.classification: spam data, SpamDataset, the classifier, accuracy, loss, training."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from shared.classification import (
    PAD_TOKEN_ID,
    SpamDataset,
    calc_accuracy_loader,
    calc_classification_loss_batch,
    calc_classification_loss_loader,
    classify_review,
    convert_to_classifier,
    create_balanced_dataset,
    create_spam_loaders,
    evaluate_classifier,
    load_classifier,
    load_sms_spam,
    prepare_spam_splits,
    random_split,
    save_classifier,
    train_classifier_simple,
)
from shared.gpt import GPTModel
from shared.pretraining import save_checkpoint
from shared.tokenizers import gpt2_tokenizer
from tests.conftest import TINY
from tests.notebook_code import notebook_definitions

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = {**TINY, "n_layers": 3, "qkv_bias": True}


def tiny_classifier(seed: int = 123, trainable_blocks=1, **overrides) -> GPTModel:
    torch.manual_seed(seed)
    model = GPTModel({**CONFIG, **overrides})
    return convert_to_classifier(model, num_classes=2, trainable_blocks=trainable_blocks)


def write_csv(path, rows) -> str:
    pd.DataFrame(rows, columns=["Label", "Text"]).to_csv(path, index=None)
    return str(path)


@pytest.fixture(scope="module")
def spam_df() -> pd.DataFrame:
    return load_sms_spam()


@pytest.fixture(scope="module")
def balanced(spam_df) -> pd.DataFrame:
    return create_balanced_dataset(spam_df)


# --- data: download, balance, split -----------------------------------------------------------


def test_load_sms_spam_counts(spam_df):
    assert list(spam_df.columns) == ["Label", "Text"]
    assert len(spam_df) == 5574
    assert spam_df["Label"].value_counts().to_dict() == {"ham": 4827, "spam": 747}
    # Quoting is off: a message with an unbalanced quote stays one message on one line.
    assert spam_df["Text"].str.contains('"').sum() > 0
    assert (spam_df["Text"].str.len() > 0).all()


def test_load_sms_spam_names_the_line_of_a_bad_label(tmp_path):
    path = tmp_path / "sms.tsv"
    path.write_text("ham\tHello there\nspam\tWIN NOW\nmaybe\tWho knows\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"sms\.tsv line 3: label 'maybe' is not one of ham, spam"):
        load_sms_spam(path)
    path.write_text("ham\tHello\n\nspam\tWIN\n", encoding="utf-8")  # a blank line is line 2
    with pytest.raises(ValueError, match="line 2: label ''"):
        load_sms_spam(path)
    path.write_text('ham\tHe said "hi\nspam\tNA\n', encoding="utf-8")
    df = load_sms_spam(path)
    assert df["Text"].tolist() == ['He said "hi', "NA"]  # no quoting, no NaN


def test_balanced_dataset(spam_df, balanced):
    assert balanced["Label"].value_counts().to_dict() == {"ham": 747, "spam": 747}
    # Every spam message is kept, and the ham rows are real rows of the original.
    assert set(balanced.index[balanced["Label"] == "spam"]) == set(
        spam_df.index[spam_df["Label"] == "spam"]
    )
    ham = balanced[balanced["Label"] == "ham"]
    assert ham.index.is_unique
    assert (spam_df.loc[ham.index, "Text"] == ham["Text"]).all()
    assert create_balanced_dataset(spam_df).equals(balanced)  # seeded
    assert not create_balanced_dataset(spam_df, seed=7).equals(balanced)
    with pytest.raises(ValueError, match="cannot undersample ham"):
        create_balanced_dataset(pd.DataFrame({"Label": ["spam", "spam", "ham"], "Text": "x"}))


def test_random_split_sizes_disjoint_and_seeded(balanced):
    tagged = balanced.assign(Id=balanced.index)  # the original row of each message
    train, val, test = random_split(tagged, 0.7, 0.1)
    assert (len(train), len(val), len(test)) == (1045, 149, 300)
    ids = [set(part["Id"]) for part in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert ids[0] | ids[1] | ids[2] == set(tagged["Id"])
    for part in (train, val, test):
        assert part.index.tolist() == list(range(len(part)))
    again = random_split(tagged, 0.7, 0.1)
    assert all(a.equals(b) for a, b in zip((train, val, test), again, strict=True))
    other = random_split(tagged, 0.7, 0.1, seed=1)
    assert set(other[0]["Id"]) != ids[0]
    for fractions in ((0.8, 0.3), (-0.1, 0.1)):
        with pytest.raises(ValueError, match="fractions"):
            random_split(tagged, *fractions)


def test_prepare_spam_splits(tmp_path):
    paths = prepare_spam_splits(tmp_path)
    assert [p.name for p in paths] == ["train.csv", "validation.csv", "test.csv"]
    parts = [pd.read_csv(p, keep_default_na=False) for p in paths]
    assert [len(part) for part in parts] == [1045, 149, 300]
    assert pd.concat(parts)["Label"].value_counts().to_dict() == {0: 747, 1: 747}
    balanced = create_balanced_dataset(load_sms_spam())
    balanced["Label"] = balanced["Label"].map({"ham": 0, "spam": 1})
    for part, expected in zip(parts, random_split(balanced, 0.7, 0.1), strict=True):
        assert part.equals(expected.reset_index(drop=True))


# --- SpamDataset --------------------------------------------------------------------------------


def test_spam_dataset_pads_to_the_longest_message(tmp_path):
    tokenizer = gpt2_tokenizer()
    texts = ["Hi", "Free entry in 2 a wkly comp to win", "Ok lar... Joking wif u oni..."]
    csv_file = write_csv(tmp_path / "d.csv", [(0, texts[0]), (1, texts[1]), (0, texts[2])])
    dataset = SpamDataset(csv_file, tokenizer)
    lengths = [len(tokenizer.encode(t)) for t in texts]
    assert dataset.max_length == max(lengths) and len(dataset) == 3
    for i, text in enumerate(texts):
        ids, label = dataset[i]
        assert ids.dtype == label.dtype == torch.long and ids.shape == (max(lengths),)
        assert ids[: lengths[i]].tolist() == tokenizer.encode(text)
        assert (ids[lengths[i] :] == PAD_TOKEN_ID).all()
        assert label.item() == [0, 1, 0][i]
    assert SpamDataset(csv_file, tokenizer, pad_token_id=0)[0][0][1:].eq(0).all()


def test_spam_dataset_truncates_to_max_length(tmp_path):
    tokenizer = gpt2_tokenizer()
    long_text = "URGENT! You have won a 1 week FREE membership in our prize jackpot"
    csv_file = write_csv(tmp_path / "d.csv", [(1, long_text), (0, "Ok")])
    dataset = SpamDataset(csv_file, tokenizer, max_length=5)
    assert dataset[0][0].tolist() == tokenizer.encode(long_text)[:5]
    assert dataset[1][0].tolist() == tokenizer.encode("Ok") + [PAD_TOKEN_ID] * 4
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        SpamDataset(csv_file, tokenizer, max_length=0)


def test_spam_dataset_odd_messages_and_label_names(tmp_path):
    tokenizer = gpt2_tokenizer()
    rows = [("ham", ""), ("spam", "Gewinn! Ça coûte 0€ 🎉🎉"), (1, "NA"), (0, "a <|endoftext|> b")]
    dataset = SpamDataset(write_csv(tmp_path / "d.csv", rows), tokenizer)
    assert [dataset[i][1].item() for i in range(4)] == [0, 1, 1, 0]
    assert dataset[0][0].eq(PAD_TOKEN_ID).all()  # the empty message is all padding
    emoji_ids = tokenizer.encode(rows[1][1])
    assert tokenizer.decode(dataset[1][0][: len(emoji_ids)].tolist()) == rows[1][1]
    assert dataset[2][0][: len(tokenizer.encode("NA"))].tolist() == tokenizer.encode("NA")
    # <|endoftext|> inside a message is ordinary text, not the special token.
    assert PAD_TOKEN_ID not in tokenizer.encode("a <|endoftext|> b", disallowed_special=())
    only_empty = SpamDataset(write_csv(tmp_path / "e.csv", [(0, "")]), tokenizer)
    assert only_empty.max_length == 1 and only_empty[0][0].tolist() == [PAD_TOKEN_ID]


def test_spam_dataset_names_the_line_of_a_bad_label(tmp_path):
    tokenizer = gpt2_tokenizer()
    csv_file = write_csv(tmp_path / "d.csv", [(0, "fine"), (1, "fine too"), ("eggs", "odd")])
    with pytest.raises(ValueError, match=r"d\.csv line 4: label 'eggs' is not one of"):
        SpamDataset(csv_file, tokenizer)
    (tmp_path / "cols.csv").write_text("Class,Message\n0,hi\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks the column"):
        SpamDataset(tmp_path / "cols.csv", tokenizer)
    (tmp_path / "empty.csv").write_text("Label,Text\n", encoding="utf-8")
    with pytest.raises(ValueError, match="holds no messages"):
        SpamDataset(tmp_path / "empty.csv", tokenizer)


def test_create_spam_loaders(tmp_path):
    rows = [(i % 2, f"message number {i} " * (i % 5 + 1)) for i in range(20)]
    paths = [
        write_csv(tmp_path / f"{n}.csv", rows[s])
        for n, s in (("train", slice(0, 12)), ("val", slice(12, 16)), ("test", slice(16, 20)))
    ]
    tokenizer = gpt2_tokenizer()
    train, val, test = create_spam_loaders(paths, tokenizer, batch_size=5)
    assert (len(train), len(val), len(test)) == (2, 1, 1)  # 12 // 5 with drop_last
    assert val.dataset.max_length == test.dataset.max_length == train.dataset.max_length
    first = [x for x, _ in create_spam_loaders(paths, tokenizer, batch_size=5)[0]]
    assert all(torch.equal(a, b) for (a, _), b in zip(train, first, strict=True))  # seeded
    train, _, _ = create_spam_loaders(paths, tokenizer, batch_size=5, max_length=3)
    assert next(iter(train))[0].shape == (5, 3)
    with pytest.raises(ValueError, match="fewer than batch_size=20"):
        create_spam_loaders(paths, tokenizer, batch_size=20)


# --- the classifier ----------------------------------------------------------------------------


def trainable_names(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_convert_to_classifier_freezes_all_but_the_last_block_norm_and_head():
    model = tiny_classifier()
    assert model.out_head.weight.shape == (2, CONFIG["emb_dim"]) and model.out_head.bias is not None
    expected = {
        name
        for name, _ in model.named_parameters()
        if name.startswith(("trf_blocks.2.", "final_norm.", "out_head."))
    }
    assert trainable_names(model) == expected
    assert "trf_blocks.2.att.W_query.weight" in expected and len(expected) == 16 + 2 + 2
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 2)
    # Gradients reach exactly the trainable parameters.
    model(torch.tensor([[1, 2, 3]]))[:, -1, :].sum().backward()
    assert {n for n, p in model.named_parameters() if p.grad is not None} == expected


@pytest.mark.parametrize(
    ("blocks", "prefixes"),
    [
        (0, ("final_norm.", "out_head.")),
        (2, ("trf_blocks.1.", "trf_blocks.2.", "final_norm.", "out_head.")),
    ],
)
def test_convert_to_classifier_trainable_blocks(blocks, prefixes):
    model = tiny_classifier(trainable_blocks=blocks)
    names = {name for name, _ in model.named_parameters()}
    assert trainable_names(model) == {n for n in names if n.startswith(prefixes)}


def test_convert_to_classifier_all_and_bad_values():
    model = tiny_classifier(trainable_blocks="all")
    assert trainable_names(model) == {name for name, _ in model.named_parameters()}
    for bad in (-1, 4, "last", 1.5):
        with pytest.raises(ValueError, match="trainable_blocks must be"):
            tiny_classifier(trainable_blocks=bad)


# --- accuracy and loss ---------------------------------------------------------------------------


class LastTokenVote(nn.Module):
    """A stand-in model: class logits at each position are a fixed function of the token id.

    Token t gets logits (0, 1) when t is odd and (1, 0) when even, so the prediction for a
    message is the parity of its last token.
    """

    def forward(self, idx):
        odd = (idx % 2).float()
        return torch.stack((1 - odd, odd), dim=-1)  # (b, n, 2)


def test_accuracy_equals_a_hand_count():
    inputs = torch.tensor([[4, 3], [2, 8], [1, 5], [6, 7], [9, 0]])  # predictions 1, 0, 1, 1, 0
    labels = torch.tensor([1, 1, 1, 0, 0])  # right: rows 0, 2, 4
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=2)
    model = LastTokenVote()
    assert calc_accuracy_loader(loader, model, "cpu") == pytest.approx(3 / 5)
    assert calc_accuracy_loader(loader, model, "cpu", num_batches=1) == pytest.approx(1 / 2)
    assert calc_accuracy_loader(loader, model, "cpu", num_batches=2) == pytest.approx(2 / 4)
    assert calc_accuracy_loader(loader, model, "cpu", num_batches=99) == pytest.approx(3 / 5)
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="num_batches must be >= 1"):
        calc_accuracy_loader(loader, model, "cpu", num_batches=0)
    empty = DataLoader(TensorDataset(inputs[:1], labels[:1]), batch_size=2, drop_last=True)
    with pytest.raises(ValueError, match="yields no batches"):
        calc_accuracy_loader(empty, model, "cpu")


def test_loss_is_cross_entropy_of_the_last_token():
    model = tiny_classifier()
    inputs = torch.randint(0, 50257, (4, 6), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 1, 0])
    logits = model(inputs)[:, -1, :]
    log_probs = logits - logits.exp().sum(-1, keepdim=True).log()
    expected = -log_probs[torch.arange(4), labels].mean()
    loss = calc_classification_loss_batch(inputs, labels, model, "cpu")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loader = DataLoader(TensorDataset(inputs, labels), batch_size=2)
    halves = [F.cross_entropy(logits[i : i + 2], labels[i : i + 2]).item() for i in range(0, 4, 2)]
    assert calc_classification_loss_loader(loader, model, "cpu") == pytest.approx(
        sum(halves) / 2, rel=1e-5
    )
    assert calc_classification_loss_loader(loader, model, "cpu", 1) == pytest.approx(halves[0])
    train_loss, val_loss = evaluate_classifier(model, loader, loader, "cpu", eval_iter=1)
    assert train_loss == val_loss == pytest.approx(halves[0], rel=1e-5) and model.training


def keyword_task(n: int, seed: int) -> TensorDataset:
    """Messages of 6 random tokens; class 1 exactly when token 42 occurs among them."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(100, 200, (n, 6), generator=g)
    labels = torch.arange(n) % 2
    positions = torch.randint(0, 5, (n,), generator=g)
    inputs[labels == 1, positions[labels == 1]] = 42
    return TensorDataset(inputs, labels)


def test_train_classifier_simple_learns_a_keyword_task(capsys):
    train_loader = DataLoader(
        keyword_task(96, 0), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    val_loader = DataLoader(keyword_task(32, 1), batch_size=8)
    model = tiny_classifier(trainable_blocks="all")
    before = calc_accuracy_loader(val_loader, model, "cpu")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    train_losses, val_losses, train_accs, val_accs, examples_seen = train_classifier_simple(
        model, train_loader, val_loader, optimizer, "cpu", num_epochs=4, eval_freq=5, eval_iter=2
    )
    assert examples_seen == 4 * 96
    assert len(train_losses) == len(val_losses) == 10  # steps 0, 5, ..., 45 of 48
    assert len(train_accs) == len(val_accs) == 4
    assert train_losses[-1] < train_losses[0] / 4
    assert before < 0.75 and calc_accuracy_loader(val_loader, model, "cpu") >= 0.9
    out = capsys.readouterr()
    assert "Ep 4 (Step 000045)" in out.out and "Validation accuracy:" in out.out
    assert "Training" in out.err  # the progress bar
    with pytest.raises(ValueError, match="eval_freq"):
        train_classifier_simple(model, train_loader, val_loader, optimizer, "cpu", 1, 0, 1)


# --- classify_review ------------------------------------------------------------------------------


def test_classify_review_matches_the_padded_input():
    model = tiny_classifier()
    tokenizer = gpt2_tokenizer()
    text = "Win a FREE trip now"
    ids = tokenizer.encode(text)
    for max_length, padded in ((None, ids), (10, ids + [PAD_TOKEN_ID] * (10 - len(ids)))):
        logits = model(torch.tensor([padded]))[0, -1]
        expected = "spam" if logits.argmax().item() == 1 else "not spam"
        assert classify_review(text, model, tokenizer, "cpu", max_length=max_length) == expected
    assert {
        classify_review(t, model, tokenizer, "cpu", max_length=m)
        for t in ("a", "b c", "FREE", "hey", "xyz!")
        for m in (None, 4, 12)
    } <= {"spam", "not spam"}


def test_classify_review_odd_and_long_messages():
    model = tiny_classifier()
    tokenizer = gpt2_tokenizer()
    empty_logits = model(torch.tensor([[PAD_TOKEN_ID] * 8]))[0, -1]
    expected = "spam" if empty_logits.argmax().item() == 1 else "not spam"
    assert classify_review("", model, tokenizer, "cpu", max_length=8) == expected
    for text in ("", "Grüße aus Köln, naïve café", "🎉🔥 WIN 💰💰", "<|endoftext|>"):
        for max_length in (None, 8, 500):  # 500 exceeds the 16-token context: cropped
            label = classify_review(text, model, tokenizer, "cpu", max_length=max_length)
            assert label in ("spam", "not spam")
    long_text = "free cash prize " * 40  # 120 tokens, far beyond the 16-token context
    first16 = tokenizer.encode(long_text)[:16]
    expected = "spam" if model(torch.tensor([first16]))[0, -1].argmax().item() == 1 else "not spam"
    assert classify_review(long_text, model, tokenizer, "cpu") == expected
    assert classify_review(long_text, model, tokenizer, "cpu", max_length=100) == expected


# --- saving and loading ----------------------------------------------------------------------------


def test_save_and_load_classifier(tmp_path):
    model = tiny_classifier(seed=5)
    path = save_classifier(tmp_path / "clf.pth", model, CONFIG, max_length=12, test_accuracy=0.9)
    loaded, extra = load_classifier(path)
    assert extra["max_length"] == 12 and extra["num_classes"] == 2 and extra["config"] == CONFIG
    assert extra["test_accuracy"] == 0.9 and not loaded.training
    x = torch.randint(0, 50257, (2, 7))
    model.eval()
    assert torch.equal(loaded(x), model(x))
    save_checkpoint(tmp_path / "plain.pth", model)
    with pytest.raises(ValueError, match="lacks config, num_classes, max_length"):
        load_classifier(tmp_path / "plain.pth")


# --- the notebook teaches the same code ----------------------------------------------------------


@pytest.fixture(scope="module")
def notebook():
    return notebook_definitions("ch06/ch06.ipynb")


def test_notebook_data_functions_match(notebook, spam_df):
    nb_balanced = notebook["create_balanced_dataset"](spam_df)
    assert nb_balanced.equals(create_balanced_dataset(spam_df))
    nb_parts = notebook["random_split"](nb_balanced, 0.7, 0.1)
    for a, b in zip(nb_parts, random_split(nb_balanced, 0.7, 0.1), strict=True):
        assert a.equals(b)


def test_notebook_dataset_matches(notebook, tmp_path):
    tokenizer = gpt2_tokenizer()
    rows = [(0, "Hi there"), (1, "WINNER!! claim your prize 🎉 now at www.example.com"), (0, "")]
    csv_file = write_csv(tmp_path / "d.csv", rows)
    for max_length in (None, 4):
        ours = SpamDataset(csv_file, tokenizer, max_length=max_length)
        theirs = notebook["SpamDataset"](csv_file, tokenizer, max_length=max_length)
        assert len(ours) == len(theirs) and ours.max_length == theirs.max_length
        for i in range(len(ours)):
            assert all(torch.equal(a, b) for a, b in zip(ours[i], theirs[i], strict=True))


def test_notebook_training_matches(notebook):
    train_loader = DataLoader(keyword_task(24, 0), batch_size=8)
    val_loader = DataLoader(keyword_task(16, 1), batch_size=8)
    results = []
    for train in (train_classifier_simple, notebook["train_classifier_simple"]):
        model = tiny_classifier(seed=3)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
        results.append(train(model, train_loader, val_loader, optimizer, "cpu", 2, 2, 1))
        results.append(model.out_head.weight.detach().clone())
    ours, our_head, theirs, their_head = results
    assert ours == theirs and torch.equal(our_head, their_head)
    model = tiny_classifier(seed=3)
    assert notebook["calc_accuracy_loader"](val_loader, model, "cpu") == calc_accuracy_loader(
        val_loader, model, "cpu"
    )
    assert notebook["calc_loss_loader"](val_loader, model, "cpu", 1) == (
        calc_classification_loss_loader(val_loader, model, "cpu", 1)
    )


def test_notebook_classify_review_matches(notebook):
    model = tiny_classifier(seed=9)
    tokenizer = gpt2_tokenizer()
    for text in ("Call now to claim", "see you at 5", "free " * 30, "", "🎉"):
        for max_length in (None, 6):
            assert notebook["classify_review"](
                text, model, tokenizer, "cpu", max_length=max_length
            ) == classify_review(text, model, tokenizer, "cpu", max_length=max_length)
