"""ch05/bug-lab.ipynb trains a small GPT with one classic bug at a time. On shorter runs than the
notebook's, each bug must still show the symptoms the notebook expects of it, and the correct run
(trained straight through, or saved and reloaded halfway) must show none."""

from __future__ import annotations

import pytest
import torch

from tests.notebook_code import notebook_definitions

pytestmark = pytest.mark.usefixtures("one_thread")

TEST_STEPS = 80  # the notebook trains for 200; every symptom shows by 80


@pytest.fixture(scope="module")
def lab():
    return notebook_definitions("ch05/bug-lab.ipynb")


@pytest.fixture(scope="module")
def data(lab):
    return lab["load_verdict"]()


def short_run_symptoms(lab, data, recipe) -> tuple[dict, set[str]]:
    run = lab["train_run"](recipe, data, steps=TEST_STEPS, eval_freq=TEST_STEPS)
    measured = lab["diagnose"](run, data)
    return measured, lab["symptoms"](measured)


def test_each_bug_is_one_change_to_the_correct_recipe(lab):
    correct = lab["Recipe"]()._asdict()
    assert set(lab["BUGS"]) == set(lab["EXPECTED_SYMPTOMS"])
    assert len(lab["BUGS"]) == 8
    for name, bug in lab["BUGS"].items():
        changed = [key for key, value in bug._asdict().items() if value != correct[key]]
        assert len(changed) == 1, (name, changed)


def test_correct_run_shows_no_symptom(lab, data):
    # The correct recipe, saved and loaded back the correct way halfway (which the notebook's
    # correct run skips), so that the reload check is put to a correct run too.
    recipe = lab["Recipe"](reload=lab["load_into_same_model"])
    measured, found = short_run_symptoms(lab, data, recipe)
    assert found == set()
    assert measured["future_effect"] == 0.0
    assert measured["token_by_token"] == pytest.approx(measured["whole_windows"], abs=1e-4)
    assert measured["val_eval_mode"] == pytest.approx(measured["true_val"], abs=1e-6)
    assert measured["eval_difference"] == 0.0
    assert measured["reload_jump"] == pytest.approx(0.0, abs=1e-6)
    assert measured["train"] < measured["word_frequency_level"] - 1.5


@pytest.mark.parametrize(
    "bug",
    [
        "no causal mask",
        "targets not shifted",
        "padding counted in the loss",
        "learning rate too high",
        "dropout left on at evaluation",
        "no position embedding",
        "untied checkpoint, tied model",
        "softmax over the wrong dimension",
    ],
)
def test_bug_shows_its_symptoms(lab, data, bug):
    _, found = short_run_symptoms(lab, data, lab["BUGS"][bug])
    missing = lab["EXPECTED_SYMPTOMS"][bug] - found
    assert not missing, f"{bug}: expected {sorted(missing)} among {sorted(found)}"


def test_tied_model_loads_the_output_layer_into_its_embedding(lab, data):
    tokenizer = data[0]
    cfg = {**lab["LAB_CONFIG"], "vocab_size": tokenizer.vocab_size}
    torch.manual_seed(0)
    saved = lab["GPTModel"](cfg)
    checkpoint = {"model": saved.state_dict(), "optimizer": None}
    model, _ = lab["load_into_tied_model"](checkpoint, cfg, lab["Recipe"]())
    assert model.out_head.weight is model.tok_emb.weight
    assert torch.equal(model.tok_emb.weight, saved.out_head.weight)
    assert not torch.equal(model.tok_emb.weight, saved.tok_emb.weight)
