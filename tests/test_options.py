"""Options objects check themselves, and the command line shows their fields as flags."""

import pytest

from ctxq_cli.errors import OptionError
from ctxq_cli.fill import ImputeOptions
from ctxq_cli.reading import ReadOptions
from ctxq_cli.reporting import as_flags
from ctxq_cli.train import MaskPriorOptions, TrainOptions


@pytest.mark.parametrize("kind, fields, message", [
    (TrainOptions, {"steps": 0}, "TrainOptions.steps must be a positive integer, not 0"),
    (TrainOptions, {"max_minutes": 0.0}, "TrainOptions.max_minutes must be > 0"),
    (TrainOptions, {"window": 2.5}, "TrainOptions.window must be a positive integer"),
    (TrainOptions, {"partition": "magic"}, "TrainOptions.partition must be one of auto, pixel"),
    (TrainOptions, {"normalization": "climate"}, "TrainOptions.normalization must be one of"),
    (TrainOptions, {"precision": "fp16"}, "TrainOptions.precision must be one of auto, bf16"),
    (TrainOptions, {"channels": (32, 60)}, "TrainOptions.channels must be multiples of 8"),
    (TrainOptions, {"attention_heads": 5},
     "TrainOptions.attention_heads 5 must divide the last width of TrainOptions.channels, 96"),
    (TrainOptions, {"val_fraction": 0.7}, "TrainOptions.val_fraction must be ≤ 0.5"),
    (MaskPriorOptions, {"channels": ()}, "MaskPriorOptions.channels must be multiples of 8"),
    (MaskPriorOptions, {"stem_patch": 5}, "MaskPriorOptions.stem_patch must be ≤ 4"),
    (ImputeOptions, {"ensemble": 0}, "ImputeOptions.ensemble must be a positive integer"),
    (ImputeOptions, {"tile": 4}, "ImputeOptions.tile must be ≥ 8"),
    (ImputeOptions, {"guidance_rho": 1.5}, "ImputeOptions.guidance_rho must be ≤ 1"),
    (ReadOptions, {"quality_var": "quality_level"},
     "ReadOptions.quality_var and ReadOptions.min_quality go together"),
])
def test_an_invalid_field_is_named_never_replaced(kind, fields, message):
    with pytest.raises(OptionError) as info:
        kind(**fields)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)      # what a notebook user would catch


def test_valid_options_keep_every_value():
    options = TrainOptions(steps=7, max_minutes=None, block_size=None, channels=(8, 16),
                           attention_heads=2, partition="block")
    assert (options.steps, options.channels, options.partition) == (7, (8, 16), "block")
    assert ImputeOptions(chunk=None, tile=None).chunk is None


def test_the_command_line_shows_fields_as_their_flags():
    text = "TrainOptions.max_minutes must be > 0; ReadOptions.quality_var and ImputeOptions.tile"
    assert as_flags(text) == "--max-minutes must be > 0; --quality-var and --tile"
    assert as_flags("a/TrainOptions.txt: no such file") == "a/TrainOptions.txt: no such file"
