"""Score a model's responses with a judge model served by Ollama (Chapter 7).

Reads the JSON file finetune_instructions.py writes (entries with "instruction", "input",
"output" and "model_response"), asks the judge (default llama3) through Ollama's local REST API
to score every response from 0 to 100 against the reference output, and prints the average.
Replies that are not a number are skipped and counted.

Needs a running Ollama server (https://ollama.com: `ollama serve`, then `ollama pull llama3`).
When none answers, it says so, prints an offline measure instead (the average word-overlap F1
between responses and reference outputs) and exits with status 1.

Example:
    python score_responses.py --responses instruction-data-with-response.json --judge-model llama3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.cli import HelpFormatter, add_option, errors_as_one_line, port_number, read_json_file
from shared.instruction import generate_model_scores, ollama_is_running, ollama_url, token_f1

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description="Score model responses 0-100 with a judge model served by Ollama.",
        formatter_class=HelpFormatter,
    )
    add_option(
        parser,
        "--responses",
        HERE / "instruction-data-with-response.json",
        default_text="ch07/instruction-data-with-response.json",
    )
    parser.add_argument(
        "--json-key", default="model_response", help="the field holding the response to score"
    )
    parser.add_argument("--judge-model", default="llama3", help="the judge model's name in Ollama")
    parser.add_argument("--ollama-host", default="127.0.0.1", help="the Ollama server's host")
    parser.add_argument(
        "--ollama-port", type=port_number, default=11434, help="the Ollama server's port"
    )
    add_option(parser, "--max-entries", default_text="all")
    return parser


def load_responses(path: Path, json_key: str) -> list[dict]:
    """The entries of a responses file; ValueError naming the file, and the first entry that
    lacks a field."""
    if not path.exists():
        raise ValueError(f"{path} does not exist; write it with finetune_instructions.py")
    data = read_json_file(path)
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list of entries")
    for index, entry in enumerate(data):
        for field in ("instruction", "output", json_key):
            if not isinstance(entry, dict) or not isinstance(entry.get(field), str):
                raise ValueError(f"{path}: entry {index} has no string field {field!r}")
    return data


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with errors_as_one_line():
        data = load_responses(args.responses, args.json_key)
    if args.max_entries is not None:
        data = data[: args.max_entries]

    url = ollama_url(args.ollama_host, args.ollama_port)
    if not ollama_is_running(url):
        f1 = sum(token_f1(e[args.json_key], e["output"]) for e in data) / len(data)
        print(f"No Ollama server answers at {url}; start one with `ollama serve`.")
        print(
            f"Offline measure instead: average word-overlap F1 with the reference outputs "
            f"over {len(data)} responses: {f1:.3f}"
        )
        return 1

    result = generate_model_scores(data, json_key=args.json_key, model=args.judge_model, url=url)
    print(f"Judge: {args.judge_model} at {url}")
    print(f"Scored {len(result.scores)} of {len(data)} responses")
    if result.skipped:
        shown = ", ".join(map(str, result.skipped[:10]))
        more = " ..." if len(result.skipped) > 10 else ""
        print(
            f"Skipped {len(result.skipped)} replies that were not a score (entries {shown}{more})"
        )
    if result.average is None:
        print("No reply was a score; no average to report")
        return 1
    print(f"Average score: {result.average:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
