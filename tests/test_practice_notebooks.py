"""The practice notebooks (chXX/practice.ipynb): as committed, every blank's check says "not
implemented yet" (nbval reruns them and compares); filled with the answers below, every check says
the code is right. The answers live here, not in the notebooks, so a learner meets the blanks."""

from __future__ import annotations

import contextlib
import io
import json
import re
import textwrap

import pytest

from tests.notebook_code import REPO

BLANK = re.compile(
    r"^(?P<indent>[ \t]*)# YOUR CODE HERE\n(?P=indent)raise NotImplementedError$", re.M
)
CHECK_CALL = re.compile(r"^check\.\w+\(\w+\)$")

# The body of each blank, in the order the blanks appear in the notebook.
ANSWERS = {
    "ch02/practice.ipynb": [
        """
        for i in range(0, len(token_ids) - max_length, stride):
            self.input_ids.append(torch.tensor(token_ids[i : i + max_length]))
            self.target_ids.append(torch.tensor(token_ids[i + 1 : i + max_length + 1]))
        """,
    ],
    "ch03/practice.ipynb": [
        """
        queries, keys, values = self.W_query(x), self.W_key(x), self.W_value(x)
        scores = queries @ keys.transpose(1, 2)
        scores = scores.masked_fill(self.mask[:num_tokens, :num_tokens], -torch.inf)
        weights = self.dropout(torch.softmax(scores / keys.shape[-1] ** 0.5, dim=-1))
        return weights @ values
        """,
        """
        def split(t):
            return t.view(b, num_tokens, self.num_heads, self.head_dim).transpose(1, 2)

        queries, keys, values = split(self.W_query(x)), split(self.W_key(x)), split(self.W_value(x))
        scores = queries @ keys.transpose(2, 3)
        scores = scores.masked_fill(self.mask[:num_tokens, :num_tokens], -torch.inf)
        weights = self.dropout(torch.softmax(scores / self.head_dim**0.5, dim=-1))
        context = (weights @ values).transpose(1, 2).contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context)
        """,
    ],
    "ch04/practice.ipynb": [
        """
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return self.scale * (x - mean) / torch.sqrt(var + self.eps) + self.shift
        """,
        """
        x = x + self.drop_shortcut(self.att(self.norm1(x)))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))
        """,
    ],
    "ch05/practice.ipynb": [
        """
        logits = model(input_batch.to(device))
        return F.cross_entropy(logits.flatten(0, 1), target_batch.to(device).flatten())
        """,
        """
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        kept = logits.masked_fill(logits < kth_largest, -torch.inf)
        probs = torch.softmax(kept / temperature, dim=-1)
        return torch.multinomial(probs, num_samples=1)
        """,
    ],
    "ch06/practice.ipynb": [
        """
        logits = model(input_batch.to(device))[:, -1, :]
        return F.cross_entropy(logits, target_batch.to(device))
        """,
    ],
    "ch07/practice.ipynb": [
        """
        longest = max(len(item) for item in batch) + 1
        inputs, targets = [], []
        for item in batch:
            padded = torch.tensor(item + [pad_token_id] * (longest - len(item)))
            target = padded[1:].clone()
            target[len(item) :] = ignore_index  # keeps target[len(item) - 1], the first pad
            inputs.append(padded[:-1][:allowed_max_length])
            targets.append(target[:allowed_max_length])
        return torch.stack(inputs).to(device), torch.stack(targets).to(device)
        """,
    ],
}
NOTEBOOKS = sorted(ANSWERS)
# The PyTorch primer (met before chapter 2) has blanks and checks built the same way.
PRIMER = "ch02/pytorch-primer.ipynb"
ANSWERS[PRIMER] = [
    """
    return torch.tensor(rows)
    """,
    """
    return x / x.sum(dim=-1, keepdim=True)
    """,
    """
    loss = ((x @ w - y) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        w -= lr * w.grad
    w.grad = None
    """,
    """
    self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
    """,
    """
    total = 0.0
    for inputs, targets in loader:
        loss = F.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total / len(loader)
    """,
    """
    torch.save(model.state_dict(), path)
    """,
    """
    model.load_state_dict(torch.load(path, weights_only=True))
    return model
    """,
    """
    model.to(device)
    return model(batch.to(device))
    """,
    """
    b, num_tokens, d = x.shape
    return x.view(b, num_tokens, num_heads, d // num_heads).transpose(1, 2)
    """,
    """
    return torch.softmax(scores.masked_fill(pad_mask, -torch.inf), dim=-1)
    """,
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs[torch.arange(len(targets)), targets].mean()
    """,
    """
    ones = torch.ones(context_length, context_length, dtype=torch.bool)
    self.register_buffer("mask", torch.triu(ones, diagonal=1), persistent=False)
    """,
]
WITH_BLANKS = [*NOTEBOOKS, PRIMER]


def code_cells(notebook: str) -> list[dict]:
    cells = json.loads((REPO / notebook).read_text(encoding="utf-8"))["cells"]
    return [cell for cell in cells if cell["cell_type"] == "code"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def fill_blanks(sources: list[str], answers: list[str]) -> list[str]:
    """The cells' sources with the blanks, in order, replaced by the answers (each indented as
    its blank's `# YOUR CODE HERE`). Fails unless there is exactly one answer per blank."""
    remaining = [textwrap.dedent(answer).strip("\n") for answer in answers]

    def answer(match: re.Match) -> str:
        assert remaining, "more blanks than answers"
        return textwrap.indent(remaining.pop(0), match["indent"])

    filled = [BLANK.sub(answer, text) for text in sources]
    assert remaining == [], f"{len(remaining)} answers left over: fewer blanks than answers"
    return filled


def run_cells(sources: list[str], name: str) -> str:
    """Execute the cells one after the other in one namespace, as a kernel would; their output."""
    namespace: dict = {"__name__": "__main__"}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for index, text in enumerate(sources):
            exec(compile(text, f"<{name} cell {index}>", "exec"), namespace)
    return printed.getvalue()


def test_filling_replaces_each_blank_with_its_answer_indented():
    sources = ["def f():\n    # YOUR CODE HERE\n    raise NotImplementedError", "f()"]
    assert fill_blanks(sources, ["\n    return 1\n    "]) == ["def f():\n    return 1", "f()"]
    with pytest.raises(AssertionError, match="more blanks"):
        fill_blanks(sources * 2, ["return 1"])
    with pytest.raises(AssertionError, match="left over"):
        fill_blanks(sources, ["return 1", "return 2"])


def test_every_practice_notebook_has_its_answers():
    assert sorted(str(p.relative_to(REPO)) for p in REPO.glob("ch0*/practice.ipynb")) == NOTEBOOKS
    assert NOTEBOOKS == [f"ch0{n}/practice.ipynb" for n in range(2, 8)]
    assert (REPO / PRIMER).is_file() and len(ANSWERS[PRIMER]) == 12


@pytest.mark.parametrize("notebook", WITH_BLANKS)
def test_as_committed_every_check_says_not_implemented_yet(notebook):
    cells = code_cells(notebook)
    blanks = sum(len(BLANK.findall(source(c))) for c in cells)
    checks = [c for c in cells if CHECK_CALL.match(source(c).strip())]
    assert blanks == len(checks) == len(ANSWERS[notebook]) >= 1
    for cell in checks:
        outputs = cell["outputs"]
        assert [o["output_type"] for o in outputs] == ["stream"], source(cell)
        text = "".join(outputs[0]["text"])
        assert text.startswith("… ") and "not implemented yet" in text, text
        assert "Traceback" not in text


@pytest.mark.parametrize("notebook", WITH_BLANKS)
def test_filled_with_the_answers_every_check_says_right(notebook):
    sources = fill_blanks([source(c) for c in code_cells(notebook)], ANSWERS[notebook])
    assert not any(BLANK.search(text) for text in sources)
    printed = run_cells(sources, notebook).splitlines()
    verdicts = [line for line in printed if line[:2] in ("✓ ", "✗ ", "… ")]
    assert len(verdicts) == len(ANSWERS[notebook]), printed
    assert all(line.startswith("✓ ") and ": right. " in line for line in verdicts), verdicts


def test_a_wrong_answer_is_reported_in_the_notebook_too():
    notebook = "ch03/practice.ipynb"
    wrong = ANSWERS[notebook][0].replace("-torch.inf", "0.0")  # future scores 0, not -inf
    sources = fill_blanks([source(c) for c in code_cells(notebook)], [wrong, ANSWERS[notebook][1]])
    printed = run_cells(sources, notebook)
    assert "✗ causal attention: position 0 can see position 1" in printed
    assert "future scores are set to 0 instead of -inf" in printed
    assert "✓ multi-head attention: right." in printed


def test_a_wrong_answer_is_reported_in_the_primer_too():
    wrong = ANSWERS[PRIMER][1].replace(", keepdim=True", "")  # the sums lose their dimension
    answers = [ANSWERS[PRIMER][0], wrong, *ANSWERS[PRIMER][2:]]
    sources = fill_blanks([source(c) for c in code_cells(PRIMER)], answers)
    printed = run_cells(sources, PRIMER)
    assert "✗ rows that sum to one: the sums lost their dimension" in printed
    assert printed.count("✓ ") == len(ANSWERS[PRIMER]) - 1
