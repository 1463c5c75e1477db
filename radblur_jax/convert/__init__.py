"""PyTorch -> Flax conversion of DINOv2 and Depth Anything V2 checkpoints (docs/conversion.md).

    from radblur_jax.convert import convert_checkpoint, load_pretrained
    convert_checkpoint("depth_anything_v2_vits.pth", "ckpt/da_vits")
    module, params, config = load_pretrained("ckpt/da_vits")
"""
from radblur_jax.convert.checkpoint import (
                                            ConversionResult,
                                            build_model,
                                            convert_checkpoint,
                                            load_pretrained,
                                            read_converted_config,
                                            save_converted,
)
from radblur_jax.convert.detect import (
                                            FORMATS,
                                            Detection,
                                            UnknownFormatError,
                                            check_format,
                                            detect_format,
)
from radblur_jax.convert.readers import (
                                            CheckpointError,
                                            LoadedCheckpoint,
                                            load_checkpoint,
                                            load_state_dict,
)

__all__ = [
    "FORMATS", "CheckpointError", "ConversionResult", "Detection", "LoadedCheckpoint",
    "UnknownFormatError", "build_model", "check_format", "convert_checkpoint", "detect_format",
    "load_checkpoint", "load_pretrained", "load_state_dict", "read_converted_config",
    "save_converted",
]
