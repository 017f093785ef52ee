"""setup/execute_notebooks.py: progress bars are saved as a terminal shows them when they end."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "setup" / "execute_notebooks.py"
spec = importlib.util.spec_from_file_location("execute_notebooks", SCRIPT)
execute_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute_notebooks)


def stream(name, text):
    return {"name": name, "output_type": "stream", "text": text}


def test_final_screen_text_keeps_the_last_redraw_of_each_line():
    text = "\rTrain: 0%| 0/9\rTrain: 50%| 4/9\rTrain: 100%| 9/9\nwarning: slow\r\n"
    assert execute_notebooks.final_screen_text(text) == "Train: 100%| 9/9\nwarning: slow\r\n"


def test_one_stderr_output_in_place_of_the_last_and_stdout_joined_again():
    figure = {"output_type": "display_data", "data": {"text/plain": ["<Figure>"]}, "metadata": {}}
    outputs = [
        stream("stderr", ["\rEpoch: 0%| 0/2"]),
        stream("stdout", ["step 0: loss 9.1\n"]),
        stream("stderr", "\rEpoch: 50%| 1/2"),
        stream("stdout", ["step 1: loss 7.3\n"]),
        stream("stderr", ["\rEpoch: 100%| 2/2", "\n"]),
        figure,
    ]
    assert execute_notebooks.collapse_progress(outputs) == [
        stream("stdout", ["step 0: loss 9.1\n", "step 1: loss 7.3\n"]),
        stream("stderr", ["Epoch: 100%| 2/2\n"]),
        figure,
    ]


def test_outputs_without_stderr_are_left_alone():
    outputs = [stream("stdout", ["a\n"]), stream("stdout", ["b\n"])]
    assert execute_notebooks.collapse_progress(outputs) is outputs


def test_a_cleared_bar_leaves_an_empty_stderr_output():
    # tqdm(leave=False) clears its line; nbval still sees a stderr stream, so one is kept.
    outputs = [stream("stderr", ["\rstep 1/2", "\r        \r"]), stream("stdout", ["done\n"])]
    assert execute_notebooks.collapse_progress(outputs) == [
        stream("stderr", []),
        stream("stdout", ["done\n"]),
    ]
