"""Train a small character-level GPT on text that ships with Python.

Token + position embeddings, N pre-norm blocks (x + attention(layer_norm(x)), then
x + MLP(layer_norm(x)) with a 4x GELU hidden layer), a final layer norm and an output
projection tied to the token embedding (`--untied` gives it its own weights), trained with
Adam as one compiled step on random windows of the text: The Zen of Python (the `this`
module) by default, or the source of any standard-library module (`--module textwrap`).
Prints the loss while training and ends with a line sampled from the model, one character
at a time from a compiled prediction function (`--temperature 0` for greedy decoding):

    python examples/char_transformer.py [--blocks 2] [--width 48] [--context 32]
        [--steps 300] [--module this] [--untied] [--temperature 0.8]
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import inspect
import io
import math
import time

import numpy as np

import graphc as gc


def load_text(module: str) -> str:
    """The Zen of Python for "this" (whose import prints it: silenced), else the source of
    the standard-library module `module`."""
    with contextlib.redirect_stdout(io.StringIO()):
        mod = importlib.import_module(module)
    if module == "this":
        return codecs.decode(mod.s, "rot13")
    return inspect.getsource(mod)


def build(vocab: int, context: int, width: int, blocks: int, heads: int, tied: bool,
          seed: int) -> tuple[gc.Graph, gc.Value, gc.Value]:
    """(graph, logits (B, context, vocab), mean next-character cross-entropy)."""
    g = gc.Graph("char_transformer", seed=seed)
    ids = g.input("ids", (None, context), dtype="int64")
    targets = g.input("targets", (None, context), dtype="int64")
    positions = g.const(np.arange(context))
    h = (gc.nn.embedding(ids, vocab, width, name="tok", std=0.1)
         + gc.nn.embedding(positions, context, width, name="pos", std=0.1))
    for b in range(blocks):
        h = h + gc.nn.multi_head_attention(gc.nn.layer_norm(h, name=f"block{b}.ln1"), heads,
                                           causal=True, name=f"block{b}.attn")
        hidden = gc.gelu(gc.nn.linear(gc.nn.layer_norm(h, name=f"block{b}.ln2"), 4 * width,
                                      name=f"block{b}.mlp_in"))
        h = h + gc.nn.linear(hidden, width, name=f"block{b}.mlp_out")
    h = gc.nn.layer_norm(h, name="ln_final")
    if tied:
        logits = gc.nn.embedding_logits(h, "tok")
    else:
        logits = gc.nn.linear(h, vocab, name="head")
    loss = gc.mean(gc.softmax_cross_entropy(logits, targets))
    return g, logits, loss


def windows(codes: np.ndarray, context: int, batch: int, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray]:
    """`batch` random windows of the text and the same windows shifted by one character."""
    starts = rng.integers(0, len(codes) - context, size=batch)
    rows = starts[:, None] + np.arange(context + 1)
    chunk = codes[rows]
    return chunk[:, :-1], chunk[:, 1:]


def sample_line(predict: gc.runtime.CompiledFunction, prompt: np.ndarray, chars: str,
                length: int, temperature: float, rng: np.random.Generator) -> str:
    """Characters generated after `prompt` (context codes) until a newline or `length`."""
    window = prompt.copy()
    out = []
    for _ in range(length):
        (logits,) = predict(ids=window[None, :])
        scores = logits[0, -1].astype(np.float64)
        if temperature > 0:
            p = np.exp((scores - scores.max()) / temperature)
            code = int(rng.choice(len(p), p=p / p.sum()))
        else:
            code = int(np.argmax(scores))
        if chars[code] == "\n":
            break
        out.append(chars[code])
        window = np.concatenate([window[1:], [code]])
    return "".join(out)


def main(argv: list[str] | None = None) -> tuple[float, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", default="this",
                        help="'this' (The Zen of Python) or a stdlib module whose source to "
                             "learn")
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--untied", action="store_true",
                        help="an output projection of its own instead of the token table")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--sample-length", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    text = load_text(args.module)
    chars = "".join(sorted(set(text)))
    codes = np.array([chars.index(c) for c in text], dtype=np.int64)
    print(f"text: {len(text)} characters of {args.module!r}, {len(chars)} distinct")

    g, logits, loss = build(len(chars), args.context, args.width, args.blocks, args.heads,
                            not args.untied, args.seed)
    count = sum(p.size for p in g.param_values.values())
    start = time.perf_counter()
    step = gc.compile(loss, optimizer=gc.optim.Adam(lr=args.lr))
    predict = gc.compile([logits])
    print(f"{args.blocks} blocks, width {args.width}, {args.heads} heads, context "
          f"{args.context}, {'untied' if args.untied else 'tied'} output: {count} parameters; "
          f"compiled in {time.perf_counter() - start:.2f} s")

    rng = np.random.default_rng(args.seed)
    every = max(1, args.steps // 10)
    first = last = math.nan
    start = time.perf_counter()
    for k in range(1, args.steps + 1):
        x, y = windows(codes, args.context, args.batch_size, rng)
        last = float(step(ids=x, targets=y))
        if k == 1:
            first = last
        if k == 1 or k % every == 0 or k == args.steps:
            print(f"step {k:5d}  loss {last:.4f}  ({time.perf_counter() - start:.2f} s)")
    print(f"loss {first:.4f} -> {last:.4f} (uniform guess: {math.log(len(chars)):.4f})")

    # a prompt that ends a line, so the sample is the whole next line
    ends = [i + 1 for i, c in enumerate(text) if c == "\n" and i + 1 >= args.context]
    stop = int(rng.choice(ends)) if ends else args.context
    prompt = codes[stop - args.context:stop]
    line = sample_line(predict, prompt, chars, args.sample_length, args.temperature, rng)
    print(f"prompt: {text[stop - args.context:stop]!r}")
    print(f"sample: {line}")
    return first, last


if __name__ == "__main__":
    main()
