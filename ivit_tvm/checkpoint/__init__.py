"""I-ViT checkpoints: written atomically with metadata, read safely into a model with frozen scales.

On disk: `{"model": state_dict, "ivit_meta": {...}}` written by torch.save, so I-ViT's and timm's
scripts take it with `model.load_state_dict(ckpt["model"])`. Reading also accepts what users of
the public release have: a raw state_dict or `{"state_dict": ...}`, with scale buffers saved as
[] or [C] where a fresh module holds [1] (docs/semantics.md, "Checkpoint format"), and
infers the model configuration from key names and shapes when there is no metadata.
Files are read with torch.load(weights_only=True): a pickle that would run code is refused.

io.py reads and writes files, infer.py finds the model configuration, validate.py checks that
a state_dict fits the model.
"""

from .errors import AssumedConfigWarning, CheckpointError
from .infer import infer_config
from .io import (
    CheckpointInfo,
    atomic_torch_save,
    load_checkpoint,
    read_torch_file,
    save_checkpoint,
    unwrap_state_dict,
)
from .validate import SCALE_SUFFIX, config_summary, uncalibrated_acts

__all__ = [
    "SCALE_SUFFIX", "AssumedConfigWarning", "CheckpointError", "CheckpointInfo",
    "atomic_torch_save", "config_summary",
    "infer_config", "load_checkpoint", "read_torch_file", "save_checkpoint", "uncalibrated_acts",
    "unwrap_state_dict",
]
