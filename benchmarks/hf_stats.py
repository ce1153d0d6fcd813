"""Seconds and peak memory per checkpoint of the weight statistics of `groklab import hf` (Hu et al. 2023's 14
statistics; store/importers/hf.py) on a BERT-base-sized model, against a baseline measured in the same run.

The checkpoint is generated here: BertForMaskedLM(BertConfig()) (110M parameters, random init), saved with
save_pretrained as model.safetensors in a temporary directory. Two ways of computing its statistics, each in a
fresh process so that their peak memories are their own:
- groklab: the importer's path, one tensor at a time (safetensors' safe_open), the median of all weights by
  radix selection (measures.weight_stats.distribution_stats);
- baseline: the released code's way (michahu/modeling-training src/metrics.py): the whole model loaded with
  transformers' from_pretrained, the statistics of its matrices, the weights and biases concatenated.
Both give the same numbers (checked). groklab is imported before torch, as the CLI does (it bounds OpenMP's spin-waiting,
groklab/runtime.py: without it, beside other busy processes, one float64 SVD of a 3072 x 768 matrix took 14 s
instead of 0.3 s on 2 cores). Memory is the process's peak resident set (VmHWM) and its peak anonymous
memory (RssAnon, sampled every 2 ms: the heap, without the mapped file's pages, which the OS can drop), each
less what the process held after its imports. Also timed: importing a 1-seed, 1-checkpoint series with
`import_hf` and importing it again (its statistics cached).

With --pythia, also a GPT-NeoX checkpoint of pythia-410m's size (hidden 1024, 24 layers, intermediate 4096,
vocab 50304; float16 as Pythia's are; 405M parameters), groklab's path only (its peak memory is the point).

    python benchmarks/hf_stats.py [--pythia] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import groklab  # noqa: F401 (before torch: it bounds OpenMP's spin-waiting, groklab/runtime.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class _PeakAnon:
    """The peak of RssAnon while the block runs, sampled every 2 ms."""

    def __enter__(self):
        self.peak, self.done = _status_kb("RssAnon"), False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while not self.done:
            self.peak = max(self.peak, _status_kb("RssAnon"))
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()
        self.peak = max(self.peak, _status_kb("RssAnon"))


def child(mode: str, path: str) -> None:
    """One measurement in this process: print a JSON line {seconds, peak_rss_mb, peak_anon_mb, stats}; mode
    "import": {first, cached}, the seconds of import_hf of the series at `path` and of importing it again."""
    import torch

    if mode == "import":
        from groklab.store.importers.hf import import_hf

        out = Path(path).parent / (Path(path).name + "-sweep")
        shutil.rmtree(out, ignore_errors=True)
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            import_hf(path, out)
            times.append(time.perf_counter() - t0)
        print(json.dumps({"first": times[0], "cached": times[1]}))
        return

    from groklab.measures.weight_stats import aggregate_matrix_stats, matrix_stats
    from groklab.store.importers.hf import Checkpoint, CheckpointReader, checkpoint_statistics

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    config = json.loads((Path(path) / "config.json").read_text())
    if mode == "baseline":
        import transformers

        transformers.logging.set_verbosity_error()
    rss0, anon0 = _status_kb("VmRSS"), _status_kb("RssAnon")
    t0 = time.perf_counter()
    with _PeakAnon() as peak:
        if mode == "groklab":
            with CheckpointReader(Checkpoint(0, 0, "bench", Path(path))) as reader:
                stats = checkpoint_statistics(reader, config)
        else:  # the released code: the whole model, then its matrices; weights and biases concatenated
            model = transformers.AutoModelForMaskedLM.from_pretrained(path)
            with torch.no_grad():
                layers = model.bert.encoder.layer
                matrices = [
                    m.weight
                    for layer in layers
                    for m in (
                        layer.attention.self.key,
                        layer.attention.self.query,
                        layer.attention.self.value,
                        layer.attention.output.dense,
                        layer.intermediate.dense,
                        layer.output.dense,
                    )
                ]
                biases = [b.bias for layer in layers for b in (layer.intermediate.dense, layer.output.dense)]
                stats = aggregate_matrix_stats([matrix_stats(w) for w in matrices])
                for suffix, tensors in (("w", matrices), ("b", biases)):
                    flat = torch.cat([t.detach().double().flatten() for t in tensors])
                    stats.update(
                        {
                            f"mean_{suffix}": flat.mean().item(),
                            f"median_{suffix}": flat.median().item(),
                            f"var_{suffix}": flat.var().item(),
                        }
                    )
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": (_status_kb("VmHWM") - rss0) / 1024,
                "peak_anon_mb": (peak.peak - anon0) / 1024,
                "stats": stats,
            }
        )
    )


def measure(mode: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return "unknown CPU"


def make_bert(directory: Path) -> int:
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(transformers.BertConfig())
    model.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


def make_pythia_410m(directory: Path) -> int:
    """pythia-410m's shapes, random float16 weights, written tensor by tensor into one safetensors file."""
    import torch
    import transformers
    from safetensors.torch import save_file

    config = transformers.GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=2048,
        rotary_pct=0.25,
    )
    directory.mkdir(parents=True, exist_ok=True)
    config.architectures = ["GPTNeoXForCausalLM"]
    config.to_json_file(str(directory / "config.json"))
    g = torch.Generator().manual_seed(0)
    h, f = 1024, 4096

    def rand(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).half()

    tensors = {"gpt_neox.embed_in.weight": rand(50304, h), "embed_out.weight": rand(50304, h)}
    for i in range(24):
        p = f"gpt_neox.layers.{i}."
        tensors.update(
            {
                p + "attention.query_key_value.weight": rand(3 * h, h),
                p + "attention.query_key_value.bias": rand(3 * h),
                p + "attention.dense.weight": rand(h, h),
                p + "attention.dense.bias": rand(h),
                p + "mlp.dense_h_to_4h.weight": rand(f, h),
                p + "mlp.dense_h_to_4h.bias": rand(f),
                p + "mlp.dense_4h_to_h.weight": rand(h, f),
                p + "mlp.dense_4h_to_h.bias": rand(h),
                p + "input_layernorm.weight": torch.ones(h).half(),
                p + "input_layernorm.bias": torch.zeros(h).half(),
                p + "post_attention_layernorm.weight": torch.ones(h).half(),
                p + "post_attention_layernorm.bias": torch.zeros(h).half(),
            }
        )
    tensors["gpt_neox.final_layer_norm.weight"] = torch.ones(h).half()
    tensors["gpt_neox.final_layer_norm.bias"] = torch.zeros(h).half()
    save_file(tensors, str(directory / "model.safetensors"), {"format": "pt"})
    return sum(t.numel() for t in tensors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("MODE", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--pythia", action="store_true", help="also a 410M-parameter GPT-NeoX checkpoint")
    parser.add_argument("--keep", type=Path, help="generate the checkpoints here and keep them")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    import torch

    work = args.keep or Path(tempfile.mkdtemp(prefix="groklab-hf-bench-"))
    try:
        print(
            f"CPU: {cpu_name()}; {os.cpu_count()} CPUs visible; torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        bert = work / "bert-base" / "seed_0" / "checkpoint-0"
        if not (bert / "model.safetensors").is_file():
            t0 = time.perf_counter()
            n = make_bert(bert)
            print(
                f"generated BertForMaskedLM(BertConfig()): {n / 1e6:.1f}M parameters in {time.perf_counter() - t0:.1f} s"
            )
        size = (bert / "model.safetensors").stat().st_size / 2**20
        ours, base = measure("groklab", bert), measure("baseline", bert)
        worst = max(
            abs(ours["stats"][k] - base["stats"][k]) / max(abs(base["stats"][k]), 1e-300)
            for k in ours["stats"]
            if not math.isnan(base["stats"][k])
        )
        print(
            f"BERT-base checkpoint: model.safetensors {size:.0f} MiB; the 14 statistics (max relative difference "
            f"between the two ways: {worst:.1e})"
        )
        print(f"{'':<44}{'s / checkpoint':>15}{'peak RSS MiB':>14}{'peak anon MiB':>15}")
        for name, r in (
            ("groklab (tensor by tensor, safe_open)", ours),
            ("baseline (from_pretrained, concatenated)", base),
        ):
            print(f"{name:<44}{r['seconds']:>15.2f}{r['peak_rss_mb']:>14.0f}{r['peak_anon_mb']:>15.0f}")
        print(
            f"ratio groklab / baseline: time {ours['seconds'] / base['seconds']:.2f}, peak RSS "
            f"{ours['peak_rss_mb'] / base['peak_rss_mb']:.2f}, peak anonymous memory "
            f"{ours['peak_anon_mb'] / base['peak_anon_mb']:.2f}"
        )
        r = measure("import", work / "bert-base")
        print(f"import_hf of the 1-checkpoint series: {r['first']:.2f} s; again (cached): {r['cached']:.2f} s")
        if args.pythia:
            neox = work / "pythia-410m" / "step0"
            if not (neox / "model.safetensors").is_file():
                t0 = time.perf_counter()
                n = make_pythia_410m(neox)
                print(
                    f"generated a pythia-410m-sized GPT-NeoX (float16): {n / 1e6:.1f}M parameters in {time.perf_counter() - t0:.1f} s"
                )
            size = (neox / "model.safetensors").stat().st_size / 2**20
            r = measure("groklab", neox)
            print(
                f"pythia-410m-sized checkpoint ({size:.0f} MiB): groklab {r['seconds']:.2f} s / checkpoint, peak RSS "
                f"{r['peak_rss_mb']:.0f} MiB, peak anonymous {r['peak_anon_mb']:.0f} MiB"
            )
        else:
            print("pythia-410m-sized checkpoint: not run (--pythia)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
