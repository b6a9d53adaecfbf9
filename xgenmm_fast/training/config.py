"""Training configuration: typed sections with defaults (SPEC §5), loaded from YAML, overridden with
`key=value` pairs on the command line (OmegaConf dot-list syntax, e.g. `optim.lr=1e-4 train.zero_stage=3`).

    model:    which weights to start from and how to run them
    data:     what to read (shared with `xgenmm-fast validate`)
    optim:    AdamW and the learning-rate schedule
    train:    steps, batch geometry, DeepSpeed, checkpoints, logging
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


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)


def load_config(path: Optional[str] = None, overrides: Optional[list[str]] = None) -> Any:
    """Defaults <- YAML file <- dot-list overrides; unknown keys are errors (typos must not pass)."""
    cfg = OmegaConf.structured(TrainConfig)
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
