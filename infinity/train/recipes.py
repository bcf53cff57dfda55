"""Named training recipes: the model configs and scale schedules a run starts from.

`shapes-*` recipes are the small models trained on the procedural shapes data (the embedded model of the app);
`infinity-2b` fine-tunes the released model on the official schedules.

The shapes schedules put 128 px on the short side at downsampling 8 (a 16-cell side): 1:1 is 128x128,
3:2 is 128x192 (landscape), 2:3 is 192x128 (portrait). Seven scales each, the last one the full latent.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..schedules import SHAPES_PATCH, Schedule, official_schedules, shapes_schedules, square_schedule
from ..tokenizer import TOKENIZER_PRESETS, TokenizerConfig
from ..tokenizer.model import spatial_patch
from ..transformer import TRANSFORMER_PRESETS, TransformerConfig


@dataclass(frozen=True)
class Recipe:
    """The configs a run starts from. The bit depth d is a choice within a recipe: the tokenizer trainer takes it
    (`--bits`), and the transformer takes its d from the tokenizer it is trained on (`transformer_config`)."""

    tokenizer: TokenizerConfig
    transformer: TransformerConfig
    schedules: dict[str, Schedule]
    text_encoder: str  # "minilm" or a Flan-T5 name on the Hugging Face hub

    def tokenizer_config(self, bits: int = 0) -> TokenizerConfig:
        """The recipe's tokenizer with `bits` per latent cell (0: the recipe's own)."""
        return dataclasses.replace(self.tokenizer, bits=bits or self.tokenizer.bits)

    def transformer_config(self, tokenizer: TokenizerConfig, head: str = "bits", depth: int = 0) -> TransformerConfig:
        """The recipe's transformer for this tokenizer: d = the tokenizer's bits times the recipe's spatial patch
        squared; `head` and `depth` (0: the recipe's) are what a run may choose besides."""
        s = spatial_patch(self.transformer.bits, self.tokenizer.bits)
        return dataclasses.replace(self.transformer, bits=s * s * tokenizer.bits, head=head,
                                   depth=depth or self.transformer.depth)

    def check(self, name: str, tokenizer: TokenizerConfig, transformer: TransformerConfig) -> None:
        """ValueError unless the two configs are this recipe's, up to what a run chooses (the bit depth, the
        transformer's head and depth), naming the fields that differ."""
        want_tok = self.tokenizer_config(tokenizer.bits)
        want_tr = self.transformer_config(tokenizer, transformer.head, transformer.depth)
        diffs = [f"tokenizer.{f.name}: {getattr(tokenizer, f.name)!r} (recipe: {getattr(want_tok, f.name)!r})"
                 for f in dataclasses.fields(want_tok) if getattr(tokenizer, f.name) != getattr(want_tok, f.name)]
        diffs += [f"transformer.{f.name}: {getattr(transformer, f.name)!r} (recipe: {getattr(want_tr, f.name)!r})"
                  for f in dataclasses.fields(want_tr) if getattr(transformer, f.name) != getattr(want_tr, f.name)]
        if diffs:
            raise ValueError(f"the weights are not those of the recipe {name} (any bit depth, head and depth): "
                             + "; ".join(diffs))


def _shapes_tokenizer() -> TokenizerConfig:
    return TokenizerConfig(bits=16, base_channels=24, channel_multipliers=(1, 2, 4, 4), num_res_blocks=1, patch_size=8)


def _claims_recipe(pixels: int) -> Recipe:
    """The claims in miniature at `pixels` x `pixels`: the embedded model's tokenizer architecture, a transformer
    of 4 blocks of width 144 with one scale embedding per scale of the square schedule."""
    schedule = square_schedule(pixels, SHAPES_PATCH)
    return Recipe(
        tokenizer=_shapes_tokenizer(),
        transformer=TransformerConfig(
            depth=4, width=144, num_heads=3, bits=16, text_channels=384, text_maxlen=32,
            max_scales=schedule.num_scales, drop_path_rate=0.0,
        ),
        schedules={"1:1": schedule},
        text_encoder="minilm",
    )


RECIPES: dict[str, Recipe] = {
    # The embedded model: ~2 M tokenizer parameters (24-channel base), ~4 M transformer parameters, MiniLM text features (E=384).
    "shapes-small": Recipe(
        tokenizer=_shapes_tokenizer(),
        transformer=TransformerConfig(
            depth=6, width=192, num_heads=3, bits=16, text_channels=384, text_maxlen=32, max_scales=7,
            drop_path_rate=0.0,
        ),
        schedules=shapes_schedules(),
        text_encoder="minilm",
    ),
    # The paper's claims in miniature (python -m infinity.experiments claims): the embedded model's tokenizer
    # architecture (any d), 64x64 px square images only (an 8x8 latent, five scales, 121 tokens against the
    # embedded model's 7 scales and 3 aspect ratios up to 384 tokens) and a transformer of ~1.7 M parameters
    # (4 blocks of width 144), so that one arm trains in well under half an hour on two CPU cores.
    "shapes-claims": _claims_recipe(64),
    # The same at 96x96 px (a 12x12 latent, six scales, 265 tokens): a small object covers more than one latent
    # cell, so that the scene parser can read the tokenizer's reconstructions (at 64 px it reads about half).
    "shapes-claims-96": _claims_recipe(96),
    # For tests: a few thousand parameters, 32 px images.
    "shapes-tiny": Recipe(
        tokenizer=TokenizerConfig(bits=8, base_channels=32, channel_multipliers=(1, 1, 1), num_res_blocks=1, patch_size=4),
        transformer=TransformerConfig(
            depth=2, width=48, num_heads=2, bits=8, text_channels=384, text_maxlen=32, max_scales=4,
            drop_path_rate=0.0,
        ),
        schedules={
            "1:1": Schedule(((1, 1), (2, 2), (4, 4), (8, 8)), patch_size=4, h_div_w=1.0),
            "3:2": Schedule(((1, 1), (2, 3), (4, 6), (8, 12)), patch_size=4, h_div_w=0.667),
        },
        text_encoder="minilm",
    ),
    "infinity-2b": Recipe(
        tokenizer=TOKENIZER_PRESETS["infinity-vae-d32reg"].config,
        transformer=TRANSFORMER_PRESETS["infinity-2b"],
        schedules=official_schedules("0.06M", ("1:1", "4:3", "3:4", "16:9", "9:16")),
        text_encoder="google/flan-t5-xl",
    ),
}
