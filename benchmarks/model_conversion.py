"""The packaged LM's one-time conversion (GGUF -> safetensors), with and without
`one_gguf_parse`: transformers builds a fresh `gguf.GGUFReader` for the tokenizer, the
config and the weights, and each parses the whole metadata (Gemma 3's 262,144-token
vocabulary). Both conversions run side by side in this process, alternating, each into
a new folder; the script prints their seconds, the ratio, and whether the two folders'
files are byte-identical.

    python benchmarks/model_conversion.py --model gemma3-270m --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import statistics
import tempfile
import time
from pathlib import Path

from qpeft.lm import backbone
from qpeft.lm.hardware import detect


def convert(alias: str, folder: Path, one_parse: bool) -> float:
    """Seconds for one conversion into `folder`."""
    original = backbone.one_gguf_parse
    if not one_parse:
        backbone.one_gguf_parse = contextlib.nullcontext
    try:
        start = time.perf_counter()
        backbone.dequantize_packaged(alias, folder)
        return time.perf_counter() - start
    finally:
        backbone.one_gguf_parse = original


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m", help="a packaged LM's alias")
    parser.add_argument("--repeats", type=int, default=2)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    print(f"CPU: {detect().describe()}")
    seconds: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for one_parse in (False, True):  # alternating: the page cache warms both alike
                folder = Path(tmp) / f"{one_parse}-{repeat}"
                folder.mkdir()
                seconds[one_parse].append(convert(args.model, folder, one_parse))
                print(f"  repeat {repeat}, one parse {one_parse}: {seconds[one_parse][-1]:.1f} s")
        names = sorted(p.name for p in (Path(tmp) / "False-0").iterdir())
        same = filecmp.cmpfiles(Path(tmp) / "False-0", Path(tmp) / "True-0", names, shallow=False)
    before, after = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"transformers as is: {before:.1f} s (median of {args.repeats})")
    print(f"one GGUF parse:     {after:.1f} s")
    print(f"ratio:              {before / after:.2f}x")
    print(f"identical files:    {same[0] == names} ({', '.join(names)})")


if __name__ == "__main__":
    main()
