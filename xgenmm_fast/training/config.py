"""Training configuration: typed sections with defaults (SPEC §5), loaded from YAML, overridden with
`key=value` pairs on the command line (OmegaConf dot-list syntax, e.g. `optim.lr=1e-4 train.zero_stage=3`).

    model:    which weights to start from and how to run them
    data:     what to read (shared with `xgenmm-fast validate`)
    optim:    AdamW and the learning-rate schedule
    train:    steps, batch geometry, DeepSpeed, checkpoints, logging
    dpo:      (DPOConfig, `xgenmm-fast dpo` only) the preference loss, its reference model, the data format
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import OmegaConf


@dataclass
class ModelSection:
    init: str = "tiny"  # preset name (random init), HF checkpoint dir, or training .pt (with `config`)
    config: Optional[str] = None  # preset or config.json for a .pt init, or to override a preset
    overrides: dict = field(default_factory=dict)  # e.g. {text: {num_hidden_layers: 4}} for a random init
    freeze_vision: bool = True  # the original recipe trains everything but the vision encoder
    gradient_checkpointing: bool = False
    seed: int = 0  # weights of a random init
    # kernel backends, op -> backend (e.g. {varlen_attention: torch_varlen}; "*" for every op that has it);
    # default: the dispatch's own choice (Triton on a GPU). XGENMM_OPS does the same from the environment.
    ops: dict = field(default_factory=dict)
    # attention kernel settings measured on this GPU (benchmarks/sweep_attention_tiles.py's JSON; applied on every
    # rank, on every node); XGENMM_KERNEL_SETTINGS does the same from the environment, which DeepSpeed's multi-node
    # launcher does not pass on to other hosts
    kernel_settings: Optional[str] = None


@dataclass
class DataSection:
    data_path: str = ""  # JSON/JSONL file, folder of them, or mixture YAML
    image_path_map: Optional[str] = None
    tokenizer: Optional[str] = None  # tokenizer directory; None = build the bundled tiny tokenizer
    max_text_tokens: int = 2048
    max_tokens: int = 4096  # packing budget per row (tokens, image tokens included)
    pack_window: int = 2048  # samples packed together before rows are shuffled
    num_workers: int = 2
    eval_data_path: Optional[str] = None
    preprocess_backend: str = "auto"
    resize_order: str = "installed"  # or "horizontal_first": older Pillow's bicubic, as the released training


@dataclass
class OptimSection:
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 2000
    min_lr_ratio: float = 0.0
    grad_clip: float = 1.0
    # torch's single-kernel AdamW: "auto" = on CUDA (the foreach AdamW took 12% of an SFT step's GPU time on
    # an H200, benchmarks/results/2026-11-26-nvidia-h200-sft-profile.json), true, false
    fused: str = "auto"


@dataclass
class TrainSection:
    output_dir: str = "runs/sft"
    max_steps: int = 0  # 0 = derived from epochs
    epochs: float = 1.0
    rows_per_step: int = 1  # packed rows per micro-step per rank (each up to data.max_tokens tokens)
    grad_accum: int = 1
    zero_stage: int = 2
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    seed: int = 42  # data order
    log_every: int = 1
    save_every: int = 0  # steps; 0 = only at the end
    keep_last: int = 2
    resume: str = "auto"  # auto (latest in output_dir if any) | never | a checkpoint dir
    fail_fast: bool = False  # a bad record stops the run instead of being skipped
    export_hf: bool = True  # write an HF-format copy of the final weights
    progress: bool = True
    tensorboard: bool = True
    # extra DeepSpeed config, deep-merged over the generated one (e.g. {zero_optimization:
    # {offload_optimizer: {device: cpu}, stage3_param_persistence_threshold: 0}}); keys the trainer owns
    # (micro-batch size, accumulation, clipping, ZeRO stage, bf16) cannot be overridden here
    deepspeed: dict = field(default_factory=dict)


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)


@dataclass
class DPOSection:
    beta: float = 0.1  # SPEC §5 reference value
    loss: str = "sigmoid"  # sigmoid (DPO) | ipo
    label_smoothing: float = 0.0  # sigmoid only: conservative DPO's assumed label-noise rate, in [0, 0.5)
    nll_weight: float = 0.0  # weight of the NLL term on the chosen answers (mean per token); 0 = off
    reference: str = "online"  # online: a frozen copy of the starting weights runs next to the policy |
    #                            precomputed: its log-probs computed once before training, kept in the run dir
    format: str = "auto"  # preference record format: auto | canonical | vlfeedback | rlaif_v | llava_rlhf


def _dpo_train_section() -> TrainSection:
    return TrainSection(output_dir="runs/dpo")


@dataclass
class DPOConfig(TrainConfig):
    """The SFT config plus `dpo:`; `data.data_path` holds preference records (data/preference.py)."""
    train: TrainSection = field(default_factory=_dpo_train_section)
    dpo: DPOSection = field(default_factory=DPOSection)


def load_dpo_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Any:
    """`load_config` with the DPOConfig schema, plus checks of the `dpo:` section."""
    cfg = load_config(path, overrides, schema=DPOConfig)
    d = cfg.dpo
    if d.loss not in ("sigmoid", "ipo"):
        raise ValueError(f"dpo.loss must be sigmoid or ipo, got {d.loss!r}")
    if d.reference not in ("online", "precomputed"):
        raise ValueError(f"dpo.reference must be online or precomputed, got {d.reference!r}")
    if d.beta <= 0:
        raise ValueError(f"dpo.beta must be positive, got {d.beta}")
    if not 0.0 <= d.label_smoothing < 0.5:
        raise ValueError(f"dpo.label_smoothing must be in [0, 0.5), got {d.label_smoothing}")
    if d.nll_weight < 0:
        raise ValueError(f"dpo.nll_weight must be >= 0, got {d.nll_weight}")
    from ..data.preference import FORMATS
    if d.format not in FORMATS:
        raise ValueError(f"dpo.format must be one of {', '.join(FORMATS)}, got {d.format!r}")
    return cfg


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None, schema: type = TrainConfig) -> Any:
    """Defaults <- YAML file <- dot-list overrides; unknown keys are errors (typos must not pass).
    `schema`: TrainConfig (SFT) or DPOConfig."""
    cfg = OmegaConf.structured(schema)
    if path:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.load(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"training config not found: {path}") from None
        except Exception as e:  # omegaconf raises several types; all mean "this file does not fit"
            raise ValueError(f"{path}: {e}") from None
    if overrides:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except Exception as e:
            raise ValueError(f"bad override in {overrides}: {e}") from None
    if cfg.optim.schedule not in ("cosine", "linear", "constant"):
        raise ValueError(f"optim.schedule must be cosine, linear or constant, got {cfg.optim.schedule!r}")
    if cfg.train.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"train.zero_stage must be 0-3, got {cfg.train.zero_stage}")
    if not cfg.data.data_path:
        raise ValueError("data.data_path is required (a JSON file, a folder of them, or a mixture YAML)")
    return cfg
