"""The `rwkvx` command line: rwkvx <command> [options]; `rwkvx <command> --help` for each.

Commands are registered in COMMANDS by the @command decorator: a function that adds
its arguments to an argparse parser, and a function that runs it. A command that
lives in another module registers itself the same way when imported; list the
module in COMMAND_MODULES so main() imports it:

    from rwkvx.cli import command

    def _convert_arguments(p):
        p.add_argument("SRC")

    @command("convert", "convert a checkpoint to rwkv.cpp .bin", _convert_arguments)
    def convert(args) -> int: ...

Errors rwkvx raises on purpose (RWKVError), OS errors (missing file, ...) and a
missing compiled extension are printed as one line on stderr and exit with status 2;
no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import RWKVError

DEMO_MODEL = Path(__file__).with_name("demo") / "tiny-rwkv-7v0-834K-Q5_1.bin"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
TOKENIZER_CHOICES = ("auto", "world", "20b", "bytes")
# Modules that register more commands (convert, quantize, bench, ...) when imported.
COMMAND_MODULES: tuple[str, ...] = ("rwkvx.cli_formats",)


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Decorator: register `run(args) -> exit status (None means 0)` as the subcommand `name`."""
    def register(run):
        COMMANDS[name] = Command(name, help, add_arguments, run)
        return run
    return register


# ---- shared options -----------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_model_options(p: argparse.ArgumentParser, demo_default: bool = True) -> None:
    where = f" (default: the bundled demo model {DEMO_MODEL.name})" if demo_default else ""
    p.add_argument("--model", "-m", metavar="PATH", default=None, help="model file: rwkv.cpp .bin, .pth or .safetensors" + where)
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--tokenizer", choices=TOKENIZER_CHOICES, default="auto",
                   help="tokenizer (default: chosen from the model's vocabulary size)")


def _add_sampling_options(p: argparse.ArgumentParser, tokens: int, temperature: float, top_p: float) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--tokens", "-n", type=_positive_int, default=tokens, help=f"tokens to generate (default {tokens})")
    g.add_argument("--temperature", "-t", type=float, default=temperature,
                   help=f"softmax temperature, 0 = greedy (default {temperature})")
    g.add_argument("--top-p", type=float, default=top_p, help=f"nucleus sampling threshold (default {top_p})")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens, 0 = all (default 0)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the best one's probability")
    g.add_argument("--presence-penalty", type=float, default=0.0, help="alpha_presence (default 0)")
    g.add_argument("--frequency-penalty", type=float, default=0.0, help="alpha_frequency (default 0)")
    g.add_argument("--penalty-decay", type=float, default=1.0,
                   help="alpha_decay: occurrence counts are multiplied by it every token (default 1)")
    g.add_argument("--seed", type=int, default=None, help="random seed, for reproducible output")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop before this text (repeatable)")


def _sampler(args):
    from .sampling import Sampler

    return Sampler(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                   alpha_presence=args.presence_penalty, alpha_frequency=args.frequency_penalty,
                   alpha_decay=args.penalty_decay, seed=args.seed)


def _load_model(path, threads):
    from .model import load

    return load(path if path is not None else DEMO_MODEL, threads=threads)


def _tokenizer(choice: str, model=None):
    from .tokenizer import Tokenizer

    makers = {"world": Tokenizer.world, "20b": Tokenizer.neox20b, "bytes": Tokenizer.bytes}
    if choice == "auto":
        return Tokenizer.for_vocab_size(model.n_vocab)
    tokenizer = makers[choice]()
    if model is not None and tokenizer.n_vocab > model.n_vocab:
        raise RWKVError(f"the {tokenizer.name} tokenizer has {tokenizer.n_vocab} tokens but the model only "
                        f"{model.n_vocab}")
    return tokenizer


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ---- generate -----------------------------------------------------------------------------------


def _generate_arguments(p):
    _add_model_options(p)
    _add_sampling_options(p, tokens=200, temperature=1.0, top_p=0.9)
    p.add_argument("prompt", metavar="PROMPT", help="text to continue")


@command("generate", "stream a continuation of PROMPT", _generate_arguments)
def generate_command(args) -> int:
    from .generation import generate

    model = _load_model(args.model, args.threads)
    tokenizer = _tokenizer(args.tokenizer, model)
    for piece in generate(model, args.prompt, max_tokens=args.tokens, tokenizer=tokenizer, stop=args.stop,
                          sampler=_sampler(args)):
        _write(piece)
    _write("\n")
    return 0


# ---- chat ---------------------------------------------------------------------------------------

CHAT_HELP = "commands: /reset  /save PATH  /load PATH  /quit  (anything else is sent to the model)"
USER_PREFIX, ASSISTANT_PREFIX = "User: ", "Assistant:"


def _chat_arguments(p):
    _add_model_options(p)
    _add_sampling_options(p, tokens=300, temperature=1.0, top_p=0.5)
    p.add_argument("--system", default="", help="text fed once before the conversation (and after /reset)")


@command("chat", "talk with a model; the state is kept across turns", _chat_arguments)
def chat_command(args) -> int:
    from .generation import generate
    from .state_io import load_state, save_state

    model = _load_model(args.model, args.threads)
    tokenizer = _tokenizer(args.tokenizer, model)
    sampler = _sampler(args)
    stops = args.stop or ["\n\n", "\nUser:"]

    def initial_state():
        if not args.system:
            return model.new_state()
        _, state = model.forward(tokenizer.encode(args.system + "\n\n"), logits=None)
        return state

    state = initial_state()
    interactive = sys.stdin.isatty()
    print(CHAT_HELP, file=sys.stderr)
    while True:
        if interactive:
            _write(USER_PREFIX)
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        line = line.rstrip("\r\n")
        word, _, rest = line.strip().partition(" ")
        if word in ("/quit", "/exit"):
            break
        if word == "/reset":
            state = initial_state()
            print("state reset", file=sys.stderr)
        elif word in ("/save", "/load"):
            if not rest.strip():
                print(f"usage: {word} PATH", file=sys.stderr)
                continue
            try:
                if word == "/save":
                    save_state(state, model, rest.strip())
                    print(f"state saved to {rest.strip()}", file=sys.stderr)
                else:
                    state = load_state(rest.strip(), model)
                    print(f"state loaded from {rest.strip()}", file=sys.stderr)
            except (RWKVError, OSError) as e:
                print(f"rwkvx: error: {_message(e)}", file=sys.stderr)
        elif word.startswith("/"):
            print(f"unknown command {word}; {CHAT_HELP}", file=sys.stderr)
        elif line.strip():
            sampler.occurrence.clear()  # penalties apply within one reply, as in ChatRWKV
            prompt = f"{USER_PREFIX}{line.strip()}\n\n{ASSISTANT_PREFIX}"
            reply = generate(model, prompt, max_tokens=args.tokens, tokenizer=tokenizer, state=state, stop=stops,
                             sampler=sampler)
            _write(ASSISTANT_PREFIX)
            for piece in reply:
                _write(piece)
            _write("\n\n")
            state = reply.state
    return 0


# ---- info ---------------------------------------------------------------------------------------


def _info_arguments(p):
    p.add_argument("model", metavar="MODEL", help="model file: rwkv.cpp .bin, .pth or .safetensors")
    p.add_argument("--offload", metavar="LAYERS", type=_offload_layers,
                   help="also print the GPU offload plan: LAYERS is a count of last layers, 'all' or 'auto'")
    p.add_argument("--offload-head", choices=("auto", "on", "off"), default="auto",
                   help="place the head on the GPU: auto (when layers are offloaded and it fits), on, off")
    p.add_argument("--max-memory", type=_positive_int, metavar="MIB",
                   help="GPU memory budget in MiB for the plan (needed for 'auto' without a GPU)")


def _mib(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.2f} MiB)"


@command("info", "architecture, shapes, data types, size and estimated memory of a model file", _info_arguments)
def info_command(args) -> int:
    from .architecture import MATRIX_TENSORS, infer_shape, layer_local_name
    from .formats.checkpoint import open_model_source
    from .formats.rwkvcpp import RwkvCppFile

    source = open_model_source(args.model)
    is_bin = isinstance(source, RwkvCppFile)
    shape = infer_shape({name: t.shape for name, t in source.tensors.items()}, source.path)
    by_type: Counter = Counter()
    bytes_by_type: Counter = Counter()
    mapped = copied = 0
    for name, t in source.tensors.items():
        by_type[t.type.name] += 1
        bytes_by_type[t.type.name] += t.nbytes
        if layer_local_name(name) in MATRIX_TENSORS:
            mapped += t.nbytes
        else:  # small vectors are copied into float32 at load (v5.1 repeats per-head values per channel)
            copied += 4 * (t.n_elements * (shape.head_size if shape.arch == "v5.1" else 1))
    state_bytes = 4 * shape.state_len
    logits_bytes = 4 * shape.n_vocab
    rows = [
        ("file", source.path),
        ("size", _mib(os.path.getsize(source.path))),
        ("format", f"rwkv.cpp version {source.header.version}, data type {source.header.data_type.name}"
         if is_bin else f"PyTorch checkpoint, converted in memory to {source.header.data_type.name}"),
        ("arch", shape.arch),
        ("n_vocab", shape.n_vocab),
        ("n_embd", shape.n_embd),
        ("n_layer", shape.n_layer),
        ("n_ffn", shape.n_ffn),
        ("n_head", f"{shape.n_head} x head_size {shape.head_size}"),
    ]
    if shape.lora_dims:
        rows.append(("lora dims", ", ".join(f"{k}={v}" for k, v in shape.lora_dims)))
    rows.append(("tensors", f"{len(source.tensors)}"))
    for type_name, count in sorted(by_type.items()):
        rows.append((f"  {type_name}", f"{count} tensors, {_mib(bytes_by_type[type_name])}"))
    rows += [
        ("memory", f"~{_mib(mapped + copied + state_bytes + logits_bytes)} estimated:"),
        ("  weights", f"{_mib(mapped)} " + ("memory-mapped from the file" if is_bin else "in memory")),
        ("  vectors", f"{_mib(copied)} float32 copies"),
        ("  state", f"{_mib(state_bytes)} per sequence ({shape.state_len} float32)"),
        ("  logits", f"{_mib(logits_bytes)} per token of output"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    if args.offload is not None:
        print(_offload_plan(args).describe())
    return 0


def _offload_plan(args):
    from .model import load
    from .offload import Offload

    max_memory = args.max_memory * 2**20 if args.max_memory else None
    head = {"auto": "auto", "on": True, "off": False}[args.offload_head]
    if args.offload == "auto":
        policy = Offload.auto(max_memory=max_memory)
    else:
        policy = Offload(layers=args.offload, head=head, max_memory=max_memory)
    return policy.plan(load(args.model))


def _offload_layers(text: str):
    """--offload value: 'all', 'auto' or a count of layers (>= 0)."""
    if text in ("all", "auto"):
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a layer count, 'all' or 'auto', not {text!r}")
    return int(text)


# ---- perplexity ---------------------------------------------------------------------------------


def _perplexity_arguments(p):
    p.add_argument("model", metavar="MODEL", help="model file: rwkv.cpp .bin, .pth or .safetensors")
    p.add_argument("textfile", metavar="TEXTFILE", help="text to score (read as bytes)")
    p.add_argument("--chunk", type=_positive_int, default=256, help="tokens per forward call (default 256)")
    p.add_argument("--limit", type=_positive_int, default=None, help="score only the first N tokens")
    p.add_argument("--threads", type=_positive_int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--tokenizer", choices=TOKENIZER_CHOICES, default="auto",
                   help="tokenizer (default: chosen from the model's vocabulary size)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar on stderr (default: only on a terminal)")


@command("perplexity", "perplexity of a model on a text file", _perplexity_arguments)
def perplexity_command(args) -> int:
    from .perplexity import evaluate
    from .progress import ProgressBar

    model = _load_model(args.model, args.threads)
    tokenizer = _tokenizer(args.tokenizer, model)
    with open(args.textfile, "rb") as f:
        tokens = tokenizer.encode(f.read())
    if args.limit:
        tokens = tokens[: args.limit]
    start = time.perf_counter()
    with ProgressBar(total=max(len(tokens) - 1, 0), label="perplexity", unit="tok", force=args.progress) as bar:
        result = evaluate(model, tokens, chunk=args.chunk, progress=bar.update)
    seconds = time.perf_counter() - start
    print(f"perplexity {result.perplexity!r}")
    print(f"tokens {len(tokens)} ({result.n_predicted} predicted), {seconds:.3f} s, "
          f"{(result.n_predicted / seconds) if seconds > 0 else float('inf'):.1f} tokens/s")
    return 0


# ---- tokenize -----------------------------------------------------------------------------------


def _tokenize_arguments(p):
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", "-m", metavar="PATH", help="use the tokenizer of this model's vocabulary size")
    which.add_argument("--tokenizer", choices=TOKENIZER_CHOICES[1:], help="tokenizer by name (default: world)")
    p.add_argument("--pieces", action="store_true", help="print each token id with its bytes, one per line")
    p.add_argument("text", metavar="TEXT", help="text to tokenize")


@command("tokenize", "print the token ids of TEXT", _tokenize_arguments)
def tokenize_command(args) -> int:
    from .formats.checkpoint import open_model_source

    if args.model:
        # The header is enough: no need to build the model.
        from .tokenizer import Tokenizer

        tokenizer = Tokenizer.for_vocab_size(open_model_source(args.model).header.n_vocab)
    else:
        tokenizer = _tokenizer(args.tokenizer or "world")
    ids = tokenizer.encode(args.text)
    if args.pieces:
        for token in ids:
            print(f"{token}\t{tokenizer.token_bytes(token)!r}")
    else:
        print(" ".join(map(str, ids)))
    print(f"{len(ids)} tokens ({tokenizer.name} tokenizer)", file=sys.stderr)
    return 0


# ---- entry point --------------------------------------------------------------------------------


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    return str(error) or type(error).__name__


def build_parser() -> argparse.ArgumentParser:
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="rwkvx", description="Fast RWKV language model inference on CPU.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(run=cmd.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 error, 130 interrupted)."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # never die printing an unencodable character
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (RWKVError, OSError) as e:
        if isinstance(e, BrokenPipeError):  # stdout closed early (`rwkvx generate ... | head`)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        print(f"rwkvx: error: {_message(e)}", file=sys.stderr)
        return EXIT_ERROR
    except ImportError as e:  # a compiled extension missing or stale: say so, without a traceback
        print(f"rwkvx: error: cannot import part of rwkvx ({e}); rebuild it with `pip install .` "
              f"or `python setup.py build_ext --inplace`", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's, so commands that other
    # modules register into rwkvx.cli.COMMANDS are seen.
    from rwkvx.cli import main as _main

    sys.exit(_main())
