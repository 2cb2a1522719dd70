"""Training options: :class:`TrainConfig`, stored in every checkpoint of :func:`~retrieval.train.fit`."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class TrainConfig:
    """Training options (JSON-serialisable; stored in every checkpoint).

    ``warmup_steps`` (if not None) overrides ``warmup_epochs``; the learning rate rises linearly
    over the warm-up, then follows a cosine down to ``min_lr``, updated every step.
    ``amp``: ``"auto"`` (on for CUDA only), ``"on"`` or ``"off"``; ``amp_dtype``: ``"auto"`` (bf16
    where supported, else fp16), ``"bf16"`` or ``"fp16"`` (fp16 uses a GradScaler).
    ``out_dir=None`` trains without writing anything.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None
    min_lr: float = 0.0
    grad_clip: float | None = None
    amp: str = "auto"
    amp_dtype: str = "auto"
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    out_dir: str | None = "runs/train"
    resume: bool = False
    log_every: int = 10
    shuffle: bool = True
    drop_last: bool = False
    find_unused_parameters: bool = False
    keep_epoch_checkpoints: bool = False

    def __post_init__(self):
        if isinstance(self.amp, bool):
            self.amp = "on" if self.amp else "off"
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer={self.optimizer!r}: expected 'sgd' or 'adamw'")
        if self.amp not in ("auto", "on", "off"):
            raise ValueError(f"amp={self.amp!r}: expected 'auto', 'on' or 'off'")
        if self.amp_dtype not in ("auto", "bf16", "fp16"):
            raise ValueError(f"amp_dtype={self.amp_dtype!r}: expected 'auto', 'bf16' or 'fp16'")
        if self.epochs < 0 or self.batch_size < 1 or self.log_every < 1:
            raise ValueError("epochs must be >= 0, batch_size and log_every >= 1")
        if self.lr < 0 or self.min_lr < 0 or self.warmup_epochs < 0 or (self.warmup_steps or 0) < 0:
            raise ValueError("lr, min_lr and the warm-up must be non-negative")
        if self.out_dir is not None:
            self.out_dir = str(self.out_dir)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a dict, ignoring keys that are not fields (task options may share the dict)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
