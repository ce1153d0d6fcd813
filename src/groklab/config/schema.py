"""Validated config objects: what a run is (task, model, training) and where it comes from.

A run config is plain data. Task and model parameters are validated by the task or model that
owns them (`groklab.tasks`, `groklab.models`), so adding a task or a model is one new file there;
the training settings are generic and validated here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
)

from groklab.config.plugins import load_plugins


class Strict(BaseModel):
    """Unknown keys are errors; configs are immutable values."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Open(BaseModel):
    """A name plus parameters that the owning layer validates."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def params(self) -> dict:
        return dict(self.model_extra or {})


class TaskConfig(Open):
    """`name` picks a task from `groklab.tasks.TASKS`; the other keys are that task's parameters."""

    name: str


class ModelConfig(Open):
    """`arch` picks a model from `groklab.models.MODELS`; the other keys are its parameters."""

    arch: str = "transformer"


class EarlyStop(Strict):
    """Stop once `metric` reaches `threshold` (a loss: falls to it; anything else: rises to it) at `patience`
    consecutive evaluations."""

    metric: str = "test_acc"
    threshold: float = 0.99
    patience: PositiveInt = 1


class Grokfast(Strict):
    """Grokfast's gradient filter (Lee et al. 2024, arXiv 2405.20233; `groklab.training.interventions`):
    "ema" (mu <- alpha mu + (1 - alpha) g, g <- g + lamb mu) or "ma" (g <- g + lamb mean of the last
    `window` gradients, unfiltered until the window is full when `warmup`). `lamb` defaults to the paper's
    2.0 (ema) / 5.0 (ma); `normalize_lr` divides the filtered gradient by (1 + lamb) (the fairness ablation)."""

    kind: Literal["ema", "ma"] = "ema"
    alpha: float = Field(0.98, ge=0.0, lt=1.0)
    lamb: NonNegativeFloat | None = None
    window: PositiveInt = 100
    warmup: bool = True
    normalize_lr: bool = False

    @property
    def resolved_lamb(self) -> float:
        return self.lamb if self.lamb is not None else {"ema": 2.0, "ma": 5.0}[self.kind]


class TrainConfig(Strict):
    """The optimisation loop (`groklab.training`) and the interventions around its step
    (`groklab.training.interventions`)."""

    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1.0  # AdamW: decoupled; Adam and SGD: added to the gradient (L2)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW, Adam
    eps: PositiveFloat = 1e-8  # AdamW, Adam (Prieto et al. go down to 1e-25)
    momentum: NonNegativeFloat = 0.0  # SGD
    warmup_steps: NonNegativeInt = 10  # lr factor min(step / warmup_steps, 1); step 0 has lr 0
    decay_steps: PositiveInt | None = None  # then linear decay to 0 at this step (Murty et al.'s code: 2M)
    batch_size: Literal["full"] | PositiveInt = "full"
    grad_clip: PositiveFloat | None = None  # max global grad norm
    loss_dtype: Literal["float32", "float64"] = "float64"
    max_steps: PositiveInt = 10_000
    eval_every: PositiveInt = 100
    eval_train_size: PositiveInt | None = None  # train metrics on the first N training examples (large datasets)
    checkpoint_every: PositiveInt = 100
    early_stop: EarlyStop | None = None
    # the loss trained on: softmax cross-entropy, or StableMax cross-entropy (Prieto et al. 2025; float64)
    loss_fn: Literal["cross_entropy", "stablemax"] = "cross_entropy"
    grokfast: Grokfast | None = None  # a gradient filter between backward and the step
    orthograd: bool = False  # ⊥Grad: the gradient's component along the weights removed
    weight_norm: Literal["init"] | PositiveFloat | None = None  # the total weight norm held fixed (Omnigrok)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    flush_denormal: bool = True  # CPU: denormal floats flushed to zero (groklab.runtime)


# The 14 weight statistics of Hu et al. 2023 (§3, spec training-maps.md §3.3): the columns the `weight_stats`
# measure set writes and the base features of a training map. Named here, above both, so the two agree.
WEIGHT_STATISTICS = (
    "l1",
    "l2",
    "trace",
    "spectral",
    "code_sparsity",
    "computational_sparsity",
    "mean_lambda",
    "variance_lambda",
    "mean_w",
    "median_w",
    "var_w",
    "mean_b",
    "median_b",
    "var_b",
)


class MeasuresConfig(Strict):
    """Measures computed during training (`groklab.measures`), landing as metrics columns."""

    every: PositiveInt = 100  # steps between measurements
    names: tuple[str, ...] = ("weights", "fourier")  # measure sets, see groklab.measures.MEASURES
    # Fourier key frequencies: "final" (the paper): found in the final model, and every checkpoint's
    # measures recomputed with them when the run ends (while training: found at each measurement);
    # "each": found at each measurement; or a list given.
    key_freqs: Literal["final", "each"] | tuple[PositiveInt, ...] = "final"
    key_method: Literal["neuron_argmax", "wl_norm", "we_norm"] = "neuron_argmax"
    min_fve: float = Field(0.85, ge=0.0, le=1.0)  # neuron_argmax: neurons a frequency explains this well
    min_share: float = Field(0.01, ge=0.0, le=1.0)  # ... and at least this fraction of neurons per frequency
    rel_threshold: float = Field(0.1, gt=0.0, le=1.0)  # wl_norm / we_norm: fraction of the largest frequency norm
    per_frequency: bool = False  # also excluded_loss_f1 .. f(p-1)/2
    # measure set "llc" (measures.llc): the SGLD step size, calibrated at each checkpoint ("each") or fixed
    # (the same at every checkpoint: comparable values, and one chain set per checkpoint instead of up to 7);
    # chains, draws and burn-in per step size; the minibatch of each SGLD step; the inverse temperature
    # n.beta: "batch" (m / log m, devinterp's default), "dataset" (n / log n, Lau et al.) or a number;
    # the localization gamma (see measures/llc.py for which to choose for a large model)
    llc_epsilon: Literal["each"] | PositiveFloat = "each"
    llc_batch: int = Field(256, ge=2)
    llc_nbeta: Literal["dataset", "batch"] | PositiveFloat = "batch"
    llc_gamma: PositiveFloat = 100.0
    llc_chains: PositiveInt = 4
    llc_draws: int = Field(200, ge=8)
    llc_burnin: NonNegativeInt = 100


class RunConfig(Strict):
    """Everything that determines a run. Same config (and machine) => bit-identical metrics."""

    name: str = "custom"
    source: str = ""  # provenance: paper, section / figure
    expected: str = ""  # the outcome the preset must produce, in words
    outcome: dict[str, bool | tuple[float, float]] = Field(default_factory=dict)
    # ... and as checks on the run's summary (groklab.dynamics.check_outcome): a bool must match,
    # [lo, hi] must contain the value. Tests (quick) and benchmarks (the long presets) apply them.
    seed: NonNegativeInt = 0
    data_seed: NonNegativeInt | None = None  # default: seed
    model_seed: NonNegativeInt | None = None  # default: seed
    # modules that register the user's own tasks, measure sets or models (groklab.config.plugins): a .py
    # file (relative to the config file; stored absolute) or a dotted module name; imported on validation
    plugins: tuple[str, ...] = Field((), validate_default=True)
    task: TaskConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    measures: MeasuresConfig | None = None

    @field_validator("plugins")
    @classmethod
    def _load_plugins(cls, plugins: tuple[str, ...]) -> tuple[str, ...]:
        """Discovery, once per process: the installed plugins (entry points) and this config's own."""
        return load_plugins(plugins)

    @property
    def resolved_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def resolved_model_seed(self) -> int:
        return self.seed if self.model_seed is None else self.model_seed
