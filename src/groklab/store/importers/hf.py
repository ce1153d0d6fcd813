"""Hugging Face checkpoint series (MultiBERTs, (Poly)Pythia, any `Trainer` output) as a groklab sweep: one run
per seed, one metrics row per checkpoint (training step) with the 14 weight statistics of Hu et al. 2023
(spec training-maps.md §3), so `groklab map / show / report / compare` read them like a trained sweep.

    groklab import hf SERIES_DIR --out SWEEP_DIR [--pattern REGEX] [--eval-text FILE]
    import_hf("~/.cache/huggingface/hub", "sweeps/multiberts")          # the same from Python

What is read (nothing is downloaded; transformers, when needed, runs with HF_HUB_OFFLINE=1 and
local_files_only=True):
- (a) directories: every directory under SERIES_DIR (3 levels deep at most) that holds a config.json or
  weights is a checkpoint, named by its path relative to SERIES_DIR, e.g. `seed_0/checkpoint-500` (a
  `Trainer`'s output) or `seed3/step1000`;
- (b) a Hugging Face hub cache (SERIES_DIR is the cache, e.g. ~/.cache/huggingface/hub, or one
  `models--ORG--NAME` directory in it): each `models--ORG--NAME/refs/REVISION` file names the commit whose
  files are in `snapshots/COMMIT/` (huggingface_hub's cache layout); the checkpoint is named
  `ORG/NAME@REVISION`, e.g. `EleutherAI/pythia-160m-seed3@step1000` or
  `google/multiberts-seed_0-step_20k@main`. A snapshot no ref names is `ORG/NAME@COMMIT`.
Weights: model.safetensors, pytorch_model.bin, or their sharded form (*.index.json and the shards).

Seed and step come from the name: by default the last `seed[_-]N` (no seed: 0) and the last
`checkpoint-N`, `stepN`, `step_N` or `global_stepN`, where N may end in k (x1000) or m (x10^6), as
MultiBERTs' `step_20k`. `pattern` replaces this: a regular expression searched in the name, with a named
group `step` and optionally `seed` (e.g. `run(?P<seed>\\d+)/ckpt_(?P<step>\\d+)`). Names that match no
step are left out (listed in the progress lines), e.g. a Trainer's final model beside its checkpoints.

Statistics (`checkpoint_statistics`), per checkpoint, as the released code computes them for BERT
(`get_metrics_hf_transformer` in michahu/modeling-training `src/metrics.py`; spec §2.4, §3.2):
- BERT: per layer the full query, key and value weights (not split by head), the attention output dense,
  the intermediate dense and the output dense weights: 6 matrices per layer; w_all over those weights,
  b_all over the intermediate and output dense biases;
- GPT-NeoX (Pythia): the same matrices in its names: the fused query_key_value weight split into its
  query, key and value (each d_model x d_model; its rows are interleaved per head), attention.dense,
  mlp.dense_h_to_4h and mlp.dense_4h_to_h; b_all over the two MLP biases.
Embeddings, LayerNorms and the LM head are left out, as there. The matrices are read one at a time
(safetensors' safe_open; torch.load(mmap=True) for .bin files) and w_all's median is found without
concatenating the weights (`measures.weight_stats.distribution_stats`), so the memory used is that of
the largest matrix, not of the model. Each run keeps its statistics in `import_cache.json`, keyed by the
weight files' paths, sizes and modification times: importing the series again (with new checkpoints,
say) computes only what changed.

Metrics columns besides the statistics: a `Trainer`'s trainer_state.json log_history gives `train_loss`
(its `loss`), `test_loss` (`eval_loss`), `test_X` (any other `eval_X`; `eval_accuracy`: `test_acc`),
`lr` and `grad_norm`, each taken at the checkpoint from the last entry logged since the previous one;
`eval_text` adds `text_loss`, the checkpoint's loss on a text file tokenized with its own tokenizer
(`measures.text_loss`: masked-LM loss at fixed 15% positions for BERT, next-token loss for GPT-NeoX).

The sweep records how its map is fitted: `covariance: diag` (Hu et al.'s choice for their 5 MultiBERTs:
few runs), `metric`: the convergence column (the first of test_acc, test_loss, text_loss, train_loss
every run has; none: the map is drawn without the detour test) and `threshold: null` (derived when the
map is fitted: the worst of the runs' final values, see dynamics.convergence_threshold).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from groklab.errors import ConfigError, RunDirError
from groklab.measures.weight_stats import aggregate_matrix_stats, distribution_stats, matrix_stats
from groklab.store.importers import file_key, staged
from groklab.store.run_dir import RunDir, _atomic_write
from groklab.store.sweep_dir import LOGS, RUNS, SWEEP, SweepDir

FORMAT = "hf"
CACHE, CACHE_VERSION = "import_cache.json", 1
SAFETENSORS, BIN = "model.safetensors", "pytorch_model.bin"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")
MAX_DEPTH = 3  # directory levels searched below SERIES_DIR (layout a)
EVAL_TOKENS = 16_384  # tokens of the eval text scored per checkpoint
METRIC_ORDER = ("test_acc", "test_loss", "text_loss", "train_loss")  # the sweep's convergence column: the first
SEED_RE = re.compile(r"seed[_-]?(?P<seed>\d+)", re.IGNORECASE)
STEP_RE = re.compile(r"(?:checkpoint|global_step|step)[_-]?(?P<step>\d+[km]?)(?![0-9a-z])", re.IGNORECASE)


@dataclass(frozen=True)
class Arch:
    """Where one architecture keeps the matrices of the statistics (names relative to one layer)."""

    layers: str  # the layer stack, e.g. "encoder.layer" (keys "<prefix>encoder.layer.<i>.<name>")
    matrices: tuple[str, ...]
    biases: tuple[str, ...]
    fused_qkv: str | None  # a (3 * d_model, d_model) weight interleaved per head: split into Q, K, V
    objective: str  # "masked" | "causal": how `text_loss` scores it


ARCHS = {
    "bert": Arch(
        "encoder.layer",
        (
            "attention.self.query.weight",
            "attention.self.key.weight",
            "attention.self.value.weight",
            "attention.output.dense.weight",
            "intermediate.dense.weight",
            "output.dense.weight",
        ),
        ("intermediate.dense.bias", "output.dense.bias"),
        None,
        "masked",
    ),
    "gpt_neox": Arch(
        "layers",
        (
            "attention.query_key_value.weight",
            "attention.dense.weight",
            "mlp.dense_h_to_4h.weight",
            "mlp.dense_4h_to_h.weight",
        ),
        ("mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.bias"),
        "attention.query_key_value.weight",
        "causal",
    ),
}


@dataclass(frozen=True)
class Checkpoint:
    seed: int
    step: int
    name: str  # what the pattern was matched against
    path: Path  # the directory with config.json and the weights


@dataclass
class Series:
    root: Path
    layout: str  # "dirs" | "cache"
    checkpoints: list[Checkpoint]  # sorted by seed, step
    ignored: list[str]  # names that matched no step
    config: dict  # the first checkpoint's config.json

    @property
    def seeds(self) -> list[int]:
        return sorted({c.seed for c in self.checkpoints})

    def run(self, seed: int) -> list[Checkpoint]:
        return [c for c in self.checkpoints if c.seed == seed]


# -- finding the checkpoints ----------------------------------------------------------------------------


def find_series(series_dir: str | Path, pattern: str | None = None) -> Series:
    """The checkpoints of a series directory (either layout), checked: every run has the same steps, every
    checkpoint a config.json of the same supported architecture and its weight files. RunDirError /
    ConfigError, in one line, for anything else."""
    root = Path(series_dir).expanduser()
    if not root.is_dir():
        raise RunDirError(f"no directory {root}; give the directory of the checkpoint series")
    regex = _compile(pattern)
    repos = _cache_repos(root)
    layout, candidates = ("cache", _cache_candidates(repos)) if repos else ("dirs", _dir_candidates(root))
    found, ignored = {}, []
    for name, path in candidates:
        parsed = _parse(name, regex)
        if parsed is None:
            ignored.append(name)
            continue
        if parsed in found:
            raise RunDirError(
                f"two checkpoints of seed {parsed[0]} at step {parsed[1]}: {found[parsed].name} and {name}; "
                "remove one, or tell them apart with --pattern (named groups seed and step)"
            )
        found[parsed] = Checkpoint(parsed[0], parsed[1], name, path)
    if not found:
        raise RunDirError(
            f"no checkpoint found in {root} (looked for directories named like seed_N/checkpoint-STEP or "
            f"stepSTEP with config.json and weights, or a Hugging Face cache models--ORG--NAME/refs)"
            + (f"; names seen: {', '.join(ignored[:3])}: match them with --pattern" if ignored else "")
        )
    checkpoints = sorted(found.values(), key=lambda c: (c.seed, c.step))
    _check_steps(checkpoints)
    config = _check_architecture(checkpoints)
    return Series(root, layout, checkpoints, sorted(ignored), config)


def _compile(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"--pattern is not a regular expression ({err}): {pattern}") from None
    if "step" not in regex.groupindex:
        raise ConfigError(f"--pattern needs a named group step, e.g. (?P<step>\\d+), and may have seed: {pattern}")
    return regex


def _number(text: str) -> int:
    """'500' -> 500, '20k' -> 20000, '2m' -> 2000000."""
    text = text.lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(text[:-1] if scale > 1 else text) * scale


def _parse(name: str, regex: re.Pattern | None) -> tuple[int, int] | None:
    """(seed, step) of a checkpoint's name, or None when it names no step."""
    try:
        if regex is not None:
            match = regex.search(name)
            if match is None or match.group("step") is None:
                return None
            seed = match.groupdict().get("seed")
            return (_number(seed) if seed else 0), _number(match.group("step"))
        steps, seeds = list(STEP_RE.finditer(name)), list(SEED_RE.finditer(name))
        if not steps:
            return None
        return (int(seeds[-1].group("seed")) if seeds else 0), _number(steps[-1].group("step"))
    except ValueError:
        raise ConfigError(f"--pattern: the seed and step of {name} are not numbers") from None


def _is_checkpoint_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or any(_weight_files(path))


def _dir_candidates(root: Path) -> list[tuple[str, Path]]:
    """(name, path) of every directory below `root`, at most MAX_DEPTH levels, with a config or weights."""
    out = []
    for here, dirs, _ in os.walk(root, followlinks=True):
        depth = len(Path(here).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_DEPTH else []
        if depth and _is_checkpoint_dir(Path(here)):
            out.append((Path(here).relative_to(root).as_posix(), Path(here)))
    return out


def _cache_repos(root: Path) -> list[Path]:
    """The `models--ORG--NAME` directories of a hub cache given as itself, its parent or its parent's parent."""
    if root.name.startswith("models--"):
        return [root]
    for base in (root, root / "hub"):
        repos = sorted(p for p in base.glob("models--*") if p.is_dir())
        if repos:
            return repos
    return []


def _cache_candidates(repos: list[Path]) -> list[tuple[str, Path]]:
    """(ORG/NAME@REVISION, snapshot directory) for every ref of every repo (huggingface_hub's cache:
    refs/REVISION holds the commit hash, snapshots/COMMIT the files), and ORG/NAME@COMMIT for snapshots that
    no ref names."""
    out = []
    for repo in repos:
        repo_id = repo.name[len("models--") :].replace("--", "/")
        named = set()
        refs = repo / "refs"
        for ref in sorted(p for p in refs.rglob("*") if p.is_file()) if refs.is_dir() else []:
            revision = ref.relative_to(refs).as_posix()
            try:
                commit = ref.read_text().strip()
            except (OSError, UnicodeDecodeError):
                raise RunDirError(f"{ref} is unreadable; the cache is damaged") from None
            snapshot = repo / "snapshots" / commit
            if not snapshot.is_dir():
                raise RunDirError(
                    f"{repo_id}@{revision}: refs/{revision} names snapshot {commit[:12]}, which is not in the cache "
                    f"({repo}); download the revision again or delete the ref"
                )
            named.add(commit)
            out.append((f"{repo_id}@{revision}", snapshot))
        snapshots = repo / "snapshots"
        for snapshot in sorted(p for p in snapshots.iterdir() if p.is_dir()) if snapshots.is_dir() else []:
            if snapshot.name not in named:
                out.append((f"{repo_id}@{snapshot.name}", snapshot))
    return out


def _check_steps(checkpoints: list[Checkpoint]) -> None:
    """Every run has the same steps (the training map compares runs checkpoint by checkpoint)."""
    steps: dict[int, set[int]] = {}
    for c in checkpoints:
        steps.setdefault(c.seed, set()).add(c.step)
    union = set().union(*steps.values())
    for seed, have in steps.items():
        missing = sorted(union - have)
        if missing:
            others = sorted(s for s, h in steps.items() if missing[0] in h)
            raise RunDirError(
                f"seed {seed} has no checkpoint at step {', '.join(map(str, missing[:5]))}"
                + (" ..." if len(missing) > 5 else "")
                + f" (seed {others[0]} has); every run needs the same steps: fetch the missing checkpoints "
                "or leave the extra ones out"
            )


def _weight_files(path: Path) -> list[Path]:
    """The files holding a checkpoint's tensors: a sharded index's shards, else the single file (safetensors
    first)."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            try:
                weight_map = json.loads((path / index).read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError):
                raise RunDirError(f"{path / index} is corrupt; fetch the checkpoint again") from None
            return [path / name for name in sorted(set(weight_map.values()))]
    return [path / name for name in (SAFETENSORS, BIN) if (path / name).is_file()][:1]


def _read_config(c: Checkpoint) -> dict:
    path = c.path / "config.json"
    if not path.is_file():
        raise RunDirError(f"{c.name} has no config.json (an incomplete download?); fetch it again or remove it")
    try:
        config = json.loads(path.read_text())
        assert isinstance(config, dict)
        return config
    except (OSError, ValueError, AssertionError):
        raise RunDirError(f"{path} is corrupt (not a JSON object); fetch the checkpoint again") from None


def _signature(config: dict) -> tuple:
    keys = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
    return tuple(config.get(k) for k in keys)


def _check_architecture(checkpoints: list[Checkpoint]) -> dict:
    """One supported architecture and size across the series; every checkpoint has its weight files."""
    first, first_config = None, None
    for c in checkpoints:
        config = _read_config(c)
        model_type = config.get("model_type")
        if model_type not in ARCHS:
            raise ConfigError(
                f"{c.name} is a {model_type!r} model; groklab import hf reads {' and '.join(ARCHS)} "
                "(BERT / MultiBERTs and GPT-NeoX / Pythia) checkpoints"
            )
        if first is None:
            first, first_config = c, config
        elif _signature(config) != _signature(first_config):
            raise ConfigError(
                f"mixed architectures: {first.name} is {_describe(first_config)} but {c.name} is "
                f"{_describe(config)}; import each series on its own"
            )
        if not _weight_files(c.path):
            raise RunDirError(
                f"{c.name} has no weights ({SAFETENSORS} or {BIN}); an incomplete download? fetch it again"
            )
    return first_config


def _describe(config: dict) -> str:
    return (
        f"{config.get('model_type')} ({config.get('num_hidden_layers')} layers, d_model {config.get('hidden_size')}, "
        f"{config.get('num_attention_heads')} heads, d_mlp {config.get('intermediate_size')})"
    )


# -- reading one checkpoint a tensor at a time ----------------------------------------------------------


class CheckpointReader:
    """A checkpoint's tensors by name, each read from disk when asked (safetensors: safe_open; .bin:
    torch.load with mmap=True), so that only the tensors in use are in memory."""

    def __init__(self, checkpoint: Checkpoint):
        self.checkpoint, self.files = checkpoint, _weight_files(checkpoint.path)
        self._where: dict[str, Path] = {}
        self._open: dict[Path, object] = {}
        for path in self.files:
            for name in self._handle(path).keys():  # noqa: SIM118 (safe_open is no dict)
                self._where[name] = path

    def _corrupt(self, path: Path, err: Exception) -> RunDirError:
        return RunDirError(
            f"checkpoint {self.checkpoint.name}: {path.name} is corrupt ({type(err).__name__}: "
            f"{str(err)[:80]}); fetch it again or remove the checkpoint"
        )

    def _handle(self, path: Path):
        if path not in self._open:
            try:
                if path.suffix == ".safetensors":
                    from safetensors import safe_open

                    self._open[path] = safe_open(str(path), "pt")
                else:
                    self._open[path] = _torch_load(path)
            except Exception as err:  # a damaged file fails in many ways (header, pickle, zip, EOF)
                raise self._corrupt(path, err) from None
        return self._open[path]

    def keys(self) -> list[str]:
        return list(self._where)

    def get(self, name: str) -> torch.Tensor:
        path = self._where[name]
        try:
            handle = self._handle(path)
            return handle.get_tensor(name) if path.suffix == ".safetensors" else handle[name]
        except RunDirError:
            raise
        except Exception as err:
            raise self._corrupt(path, err) from None

    def close(self) -> None:
        self._open.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _torch_load(path: Path) -> dict:
    """A .bin state dict whose tensors stay in the file (mmap) until read; files from before torch's zip
    format (2020) cannot be mapped and are read whole."""
    try:
        return torch.load(str(path), map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(str(path), map_location="cpu", weights_only=True)


def tensor_names(keys: list[str], config: dict, where: str = "checkpoint") -> tuple[list[str], list[str]]:
    """(matrix names, bias names) of the statistics in a checkpoint with these tensor `keys` and config.json
    (whatever the key prefix: bert., gpt_neox. or none)."""
    arch = ARCHS[config["model_type"]]
    head = f"{arch.layers}.0.{arch.matrices[0]}"
    prefixes = [key[: -len(head)] for key in keys if key.endswith(head)]
    prefixes = [prefix for prefix in prefixes if prefix == "" or prefix.endswith(".")]
    if not prefixes:
        raise RunDirError(f"{where} has no tensor '*{head}': not a complete {config['model_type']} checkpoint")
    prefix = min(prefixes, key=len)
    n_layers = int(config["num_hidden_layers"])
    names = {
        part: [f"{prefix}{arch.layers}.{i}.{name}" for i in range(n_layers) for name in getattr(arch, part)]
        for part in ("matrices", "biases")
    }
    have = set(keys)
    missing = [name for name in names["matrices"] + names["biases"] if name not in have]
    if missing:
        raise RunDirError(f"{where} has no tensor '{missing[0]}': not a complete {config['model_type']} checkpoint")
    return names["matrices"], names["biases"]


def split_qkv(weight: torch.Tensor, n_heads: int) -> list[torch.Tensor]:
    """GPT-NeoX's fused query_key_value weight (3 * d_model, d_model), whose output rows are grouped per head
    as [q, k, v] (transformers' GPTNeoXAttention), as the full Q, K and V weights (d_model, d_model) each."""
    d_model = weight.shape[1]
    per_head = weight.view(n_heads, 3, weight.shape[0] // (3 * n_heads), d_model)  # (heads, qkv, d_head, d_model)
    return [per_head[:, i].reshape(-1, d_model) for i in range(3)]


@torch.no_grad()
def checkpoint_statistics(reader: CheckpointReader, config: dict) -> dict[str, float]:
    """The 14 features of Hu et al. for one checkpoint of a supported architecture (see the module's
    docstring for which matrices), reading one tensor at a time."""
    arch = ARCHS[config["model_type"]]
    matrices, biases = tensor_names(reader.keys(), config, reader.checkpoint.name)
    per_matrix = []
    for name in matrices:
        weight = reader.get(name)
        fused = arch.fused_qkv is not None and name.endswith(arch.fused_qkv)
        parts = split_qkv(weight, int(config["num_attention_heads"])) if fused else [weight]
        per_matrix += [matrix_stats(part) for part in parts]
        del weight, parts
    row = aggregate_matrix_stats(per_matrix)
    for suffix, names in (("w", matrices), ("b", biases)):
        stats = distribution_stats(lambda names=names: (reader.get(name) for name in names))
        row.update({f"{key}_{suffix}": stats[key] for key in ("mean", "median", "var")})
    return row


# -- metrics a Trainer logged -----------------------------------------------------------------------------

_SKIPPED = ("runtime", "samples_per_second", "steps_per_second")


def _metric_name(key: str) -> str | None:
    """A log_history key as a groklab metrics column, or None for the ones not kept."""
    if key == "loss":
        return "train_loss"
    if key in ("learning_rate", "grad_norm"):
        return {"learning_rate": "lr"}.get(key, key)
    if key.startswith("eval_") and not key.endswith(_SKIPPED):
        rest = key[len("eval_") :]
        return "test_" + {"accuracy": "acc"}.get(rest, rest)
    return None


def trainer_metrics(checkpoints: list[Checkpoint]) -> dict[int, dict[str, float]]:
    """{step: {column: value}} from the runs' trainer_state.json files (every checkpoint's, merged): each
    checkpoint gets the last value of each key logged after the previous checkpoint and up to its step."""
    entries = {}
    for c in checkpoints:
        path = c.path / "trainer_state.json"
        if not path.is_file():
            continue
        try:
            history = json.loads(path.read_text()).get("log_history", [])
            for entry in history:
                entries[json.dumps(entry, sort_keys=True)] = entry
        except (OSError, ValueError, AttributeError):
            raise RunDirError(f"{path} is corrupt; fetch the checkpoint again or delete the file") from None
    steps = sorted(c.step for c in checkpoints)
    out: dict[int, dict[str, float]] = {step: {} for step in steps}
    for entry in sorted(entries.values(), key=lambda e: e.get("step", -1)):
        at = bisect.bisect_left(steps, entry.get("step", math.inf))
        if at == len(steps):
            continue  # logged after the last checkpoint
        for key, value in entry.items():
            name = _metric_name(key)
            if name and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[steps[at]][name] = float(value)
    return out


# -- a held-out loss on a text ----------------------------------------------------------------------------


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded (before transformers reads it)
    try:
        import transformers
    except ImportError:
        raise ConfigError("--eval-text needs the transformers library: pip install 'groklab[hf]'") from None
    transformers.logging.set_verbosity_error()
    return transformers


class TextScorer:
    """`text_loss` of checkpoints on one text (`measures.text_loss`), each tokenized with its own tokenizer:
    the checkpoint's tokenizer files, else the first checkpoint of the series that has them, else
    `tokenizer` (a directory) if given."""

    def __init__(self, text_path: str | Path, series: Series, max_tokens: int = EVAL_TOKENS, tokenizer=None):
        try:
            self.text = Path(text_path).read_text(errors="replace")
        except OSError as err:
            raise ConfigError(f"--eval-text: cannot read {text_path}: {err.strerror}") from None
        if not self.text.strip():
            raise ConfigError(f"--eval-text: {text_path} is empty")
        if max_tokens < 2:
            raise ConfigError(f"--eval-tokens must be at least 2, got {max_tokens}")
        self.series, self.max_tokens = series, max_tokens
        self.tokenizer = Path(tokenizer) if tokenizer else None
        if self.tokenizer is not None and not self.tokenizer.is_dir():
            raise ConfigError(f"--tokenizer: no directory {self.tokenizer}")
        self.objective = ARCHS[series.config["model_type"]].objective
        config = series.config
        window = int(config.get("max_position_embeddings") or 512)
        self.length = min(128, window) - 2 if self.objective == "masked" else min(512, window)
        digest = hashlib.sha256(self.text.encode()).hexdigest()[:16]
        self.key = f"text_loss:{digest}:{max_tokens}:{self.length}:{self.objective}"
        self._tokens: dict[tuple, tuple] = {}

    def _tokenizer_dir(self, c: Checkpoint) -> Path:
        for candidate in [c] + self.series.checkpoints:
            if any((candidate.path / name).is_file() for name in TOKENIZER_FILES):
                return candidate.path
        if self.tokenizer is not None:
            return self.tokenizer
        raise ConfigError(
            f"--eval-text: no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) in {c.name} or the other "
            "checkpoints; give the model's tokenizer directory with --tokenizer"
        )

    def _blocks(self, where: Path):
        files = tuple(file_key(where / n) if (where / n).is_file() else "" for n in TOKENIZER_FILES)
        if files not in self._tokens:
            transformers = _transformers()
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(where), local_files_only=True)
            except Exception as err:  # a broken or unknown tokenizer fails in many ways
                raise RunDirError(f"--eval-text: cannot load the tokenizer in {where} ({err})"[:300]) from None
            from groklab.measures.text_loss import token_blocks

            ids = tokenizer(self.text, add_special_tokens=False)["input_ids"]
            self._tokens[files] = (token_blocks(ids, self.length, self.max_tokens), tokenizer)
        return self._tokens[files]

    def __call__(self, c: Checkpoint) -> float:
        from groklab.measures.text_loss import causal_lm_loss, masked_lm_loss

        blocks, tokenizer = self._blocks(self._tokenizer_dir(c))
        transformers = _transformers()
        auto = transformers.AutoModelForMaskedLM if self.objective == "masked" else transformers.AutoModelForCausalLM
        try:
            model = auto.from_pretrained(str(c.path), local_files_only=True).float().eval()
        except Exception as err:
            raise RunDirError(
                f"--eval-text: cannot load the model of {c.name} ({type(err).__name__}: {err})"[:300]
            ) from None
        if int(blocks.max()) >= model.config.vocab_size:
            raise ConfigError(
                f"--eval-text: the tokenizer's ids exceed {c.name}'s vocabulary; give its own with --tokenizer"
            )
        if self.objective == "causal":
            return causal_lm_loss(model, blocks)
        if tokenizer.mask_token_id is None:
            raise ConfigError(f"--eval-text: {c.name}'s tokenizer has no mask token; a masked LM needs one")
        return masked_lm_loss(model, blocks, tokenizer.mask_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)


# -- the import -------------------------------------------------------------------------------------------


def _cache_key(c: Checkpoint) -> str:
    return "|".join(f"{path.resolve()}:{file_key(path)}" for path in _weight_files(c.path))


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data["entries"] if data.get("version") == CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # none, or unreadable: computed again


def _is_hf_import(path: Path) -> bool:
    try:
        return SweepDir.is_sweep(path) and (SweepDir.open(path).spec.get("imported") or {}).get("format") == FORMAT
    except RunDirError:
        return False


def _run_config(series: Series, seed: int, steps: list[int]) -> dict:
    """A RunConfig (groklab.config) describing an imported run: what it is, not how to train it."""
    config = series.config
    gaps = [b - a for a, b in zip(steps, steps[1:]) if b > a]
    model = {
        "arch": f"hf:{config['model_type']}",
        "architectures": list(config.get("architectures") or []),
        "n_layers": config.get("num_hidden_layers"),
        "d_model": config.get("hidden_size"),
        "n_heads": config.get("num_attention_heads"),
        "d_mlp": config.get("intermediate_size"),
        "d_vocab": config.get("vocab_size"),
    }
    return {
        "name": f"hf-import-{series.root.name}",
        "source": f"imported by `groklab import hf` from {series.root} ({series.layout} layout)",
        "seed": seed,
        "task": {"name": "hf_import", "series": str(series.root)},
        "model": {k: v for k, v in model.items() if v is not None},
        "train": {
            "max_steps": max(max(steps), 1),
            "eval_every": min(gaps) if gaps else 1,
            "checkpoint_every": min(gaps) if gaps else 1,
        },
        "measures": {"every": min(gaps) if gaps else 1, "names": ["weight_stats"]},
    }


def _config_yaml(series: Series, seed: int, steps: list[int]) -> str:
    """The run's config.yaml: checked as a RunConfig, written with only what is known of the run (no training
    defaults: it was not trained by groklab)."""
    from groklab.config import config_from_dict

    config = config_from_dict(_run_config(series, seed, steps))
    return yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True), sort_keys=False)


def import_hf(
    series_dir: str | Path,
    out: str | Path,
    pattern: str | None = None,
    eval_text: str | Path | None = None,
    eval_tokens: int = EVAL_TOKENS,
    tokenizer: str | Path | None = None,
    progress: Callable[[str], None] = lambda line: None,
) -> SweepDir:
    """Import the checkpoint series in `series_dir` (see the module's docstring) as the sweep `out`: built
    beside it and moved into place at the end, so an error leaves no half-made sweep (and an earlier import
    at `out` as it was); an earlier import at `out` is replaced, its cached statistics reused."""
    series = find_series(series_dir, pattern)
    out = Path(out)
    scorer = TextScorer(eval_text, series, eval_tokens, tokenizer) if eval_text else None
    steps = sorted({c.step for c in series.checkpoints})
    old = {}
    if _is_hf_import(out):
        for cache in (out / RUNS).glob(f"*/{CACHE}"):
            old.update(_read_cache(cache))
    for c in series.checkpoints:  # damaged headers and missing tensors are found before any work
        if "stats" not in old.get(_cache_key(c), {}):
            with CheckpointReader(c) as reader:
                tensor_names(reader.keys(), series.config, c.name)
    progress(
        f"{series.root}: {len(series.seeds)} run(s) (seeds {_ranges(series.seeds)}) x {len(steps)} checkpoints "
        f"(steps {steps[0]}..{steps[-1]}), {_describe(series.config)}, {series.layout} layout"
        + (f"; left out (no step in the name): {', '.join(series.ignored[:4])}" if series.ignored else "")
        + (" ..." if len(series.ignored) > 4 else "")
    )
    with staged(out, _is_hf_import) as tmp:
        metrics_found = []
        for seed in series.seeds:
            run = series.run(seed)
            logged = trainer_metrics(run)
            rows, cache = [], {}
            for c in run:
                key = _cache_key(c)
                entry = dict(old.get(key) or {})
                t0 = time.perf_counter()
                fresh = "stats" not in entry or (scorer is not None and scorer.key not in entry)
                if "stats" not in entry:
                    with CheckpointReader(c) as reader:
                        entry["stats"] = checkpoint_statistics(reader, series.config)
                row = {"step": c.step, **entry["stats"], **logged.get(c.step, {})}
                if scorer is not None:
                    if scorer.key not in entry:
                        entry[scorer.key] = scorer(c)
                    row["text_loss"] = entry[scorer.key]
                cache[key] = entry
                rows.append(row)
                progress(
                    f"seed {seed} step {c.step} ({c.name}): "
                    + (f"{time.perf_counter() - t0:.1f} s" if fresh else "cached")
                )
            run_dir = RunDir.create(tmp / RUNS / f"seed_{seed:04d}", _config_yaml(series, seed, steps))
            run_dir.write_metrics(rows)
            _atomic_write(
                run_dir.path / CACHE,
                lambda p, cache=cache: p.write_text(json.dumps({"version": CACHE_VERSION, "entries": cache})),
            )
            run_dir.write_summary(_summary(series, rows))
            metrics_found.append({k for row in rows for k, v in row.items() if v == v})
        metric = next((m for m in METRIC_ORDER if all(m in found for found in metrics_found)), None)
        spec = {
            "config": _run_config(series, series.seeds[0], steps),
            "grid": {},
            "seeds": series.seeds,
            "threshold": None,
            "metric": metric,
            "covariance": "diag",
            "imported": {
                "format": FORMAT,
                "series": str(series.root.resolve()),
                "layout": series.layout,
                "pattern": pattern,
                "model_type": series.config["model_type"],
                "architectures": list(series.config.get("architectures") or []),
                "checkpoints": len(series.checkpoints),
                "eval_text": str(Path(eval_text).resolve()) if eval_text else None,
            },
        }
        (tmp / LOGS).mkdir()
        (tmp / SWEEP).write_text(yaml.safe_dump(spec, sort_keys=False))
    return SweepDir.open(out)


def _summary(series: Series, rows: list[dict]) -> dict:
    last = rows[-1]
    summary = {
        "status": "imported",  # as every imported run's (store.importers); groklab map / compare use them
        "imported": {"format": FORMAT, "series": str(series.root), "model_type": series.config["model_type"]},
        "evaluations": len(rows),
        "last_step": last["step"],
        "step": last["step"],
    }
    for column in ("train_loss", "test_loss", "test_acc", "text_loss"):
        values = [row[column] for row in rows if isinstance(row.get(column), float) and row[column] == row[column]]
        if values:
            summary[f"final_{column}"] = values[-1]
    return summary


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(f"{start}-{v}" if v != start else str(v))
            start = None
    return ", ".join(parts)
