"""Training the multi-scale bitwise tokenizer: reconstruction through all K residual scales.

Loss of a batch (weights are options; 0 turns a term off):
    recon       L1 of the reconstruction from F_K, each pixel weighted 1 + object_weight where it differs from
                the image's background (the median of its border), so small objects count
    color       L1 between 4x average-pooled images: colour fidelity over texture
    entropy     the BSQ/LFQ entropy penalty summed over scales (confident bits, all codes used)
    commitment  features pulled towards their codes, summed over scales
    feature_commitment  MSE between the encoder's features f and their quantization F_K (stop-gradient on
                F_K): keeps f within reach of the K unit-norm codes, so the straight-through gradient is honest
    gan         hinge loss of a PatchGAN discriminator, from step `gan_start` on; the discriminator's AdamW
                follows the generator's learning rate (warm-up, then cosine)
    perceptual  LPIPS, only when the `lpips` package and its weights are installed (never faked)

With `decoder_only`, the encoder (and so every bit it produces) is frozen and only the decoder learns: the
fine-tuning that sharpens reconstructions while a transformer trains on the same, unchanging bits.

With a `sampler` (a model folder whose transformer was trained on this encoder's bits) and `decoder_only`, a
share of every batch is decoded not from the encoder's bits of the image but from the bits that transformer
samples for the image's caption (the folder's default cfg and tau), the bits of the first `sample_given_scales`
scales taken from the image so that the sample and the image show the same scene (on the shapes data the
first two, 1x1 and 2x2, fix the background, which captions often leave open). The
decoder learns to turn the transformer's own outputs, errors included, into the scene; the rest of the batch
keeps its reconstruction honest. Without this, the decoder only ever meets the encoder's bits.

With `crop_size`, every image is cut to a random square crop first and quantized on the scales of the
schedule that fit the crop: the networks are convolutional, so crops teach the same local reconstruction at a
fraction of the cost (4x fewer pixels for 64 px crops of 128 px images).

With `low_res` stages (progressive resolution), the steps before a stage's end train on whole images downscaled
to the stage's short side (area averaging), quantized on the schedule's scales clipped to the smaller latent grid:
the whole picture at a fraction of the cost, then the model's own sizes for the steps after the last stage.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..checkpoints import load_official_tokenizer, save_model
from ..data.objects import background_mask
from ..images import psnr
from ..options import sampler_options
from ..sampling import sample_image
from ..schedules import Schedule
from ..tokenizer import BitwiseTokenizer, TokenizerConfig
from ..tokenizer.model import latent_scales, patchify_bits
from .data import Batch, ShapesSource, make_source
from .discriminator import PatchDiscriminator, hinge_discriminator_loss, hinge_generator_loss
from .engine import (
    Distributed,
    OptimConfig,
    adamw,
    config_dict,
    load_init_weights,
    save_grid,
    step_generator,
    step_seed,
)
from .shared import TextCache

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerLoss:
    recon: float = 1.0
    object_weight: float = 0.0
    color: float = 0.0
    entropy: float = 0.1
    commitment: float = 0.25
    feature_commitment: float = 0.0
    gan: float = 0.0
    gan_start: int = 0
    perceptual: float = 0.0

    def __post_init__(self) -> None:
        if min(self.recon, self.object_weight, self.color, self.entropy, self.commitment, self.feature_commitment,
               self.gan, self.perceptual) < 0:
            raise ValueError(f"loss weights must be >= 0: {self}")


LATENT_LAYERS = ("encoder.conv_out.", "decoder.conv_in.")  # the layers whose shapes depend on the bits d


def load_trunk(model: BitwiseTokenizer, path: str) -> None:
    """Copy a trained tokenizer's weights into `model`, all but LATENT_LAYERS, which keep their fresh
    initialisation whatever the bit depths: tokenizers of several d then start from the same trunk and differ
    only in d (the bit-depth comparison), and start far ahead of random weights."""
    from ..checkpoints import load_model

    trunk = load_model(path)
    if not isinstance(trunk, BitwiseTokenizer) or dataclasses.replace(trunk.config, bits=model.config.bits) != model.config:
        raise ValueError(f"{path}: not a tokenizer of this architecture (any bit depth): {model.config}")
    state = {k: v for k, v in trunk.state_dict().items() if not k.startswith(LATENT_LAYERS)}
    missing = model.load_state_dict(state, strict=False).missing_keys
    if any(not k.startswith(LATENT_LAYERS) for k in missing):
        raise ValueError(f"{path}: lacks {[k for k in missing if not k.startswith(LATENT_LAYERS)][:3]}")


def random_crops(
    x_B3HW: torch.Tensor, scales, size: int, patch: int, generator: torch.Generator, global_batch: int, rows: slice
) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Square crops at patch-aligned offsets drawn for the global batch (this process keeps its rows), and
    the schedule's scales clipped to the crop's latent grid."""
    H, W = x_B3HW.shape[-2:]
    n = size // patch
    tops = torch.randint(0, (H - size) // patch + 1, (global_batch,), generator=generator)[rows] * patch
    lefts = torch.randint(0, (W - size) // patch + 1, (global_batch,), generator=generator)[rows] * patch
    crops = torch.stack([img[:, t:t + size, l:l + size] for img, t, l in zip(x_B3HW, tops.tolist(), lefts.tolist())])
    clipped = list(dict.fromkeys((min(h, n), min(w, n)) for h, w in scales))
    return crops, clipped


def parse_low_res(stages: list[str] | None) -> tuple[tuple[int, int], ...]:
    """'SIZE:UNTIL' strings (short side in pixels, first step at a larger size) -> sorted (size, until) pairs."""
    out = []
    for text in stages or ():
        try:
            size, until = (int(v) for v in text.split(":"))
        except ValueError:
            raise ValueError(f"a low-resolution stage is SIZE:UNTIL_STEP (e.g. 64:4800), got {text!r}") from None
        out.append((size, until))
    return tuple(sorted(out, key=lambda st: st[1]))


def downscale(x_B3HW: torch.Tensor, scales, size: int, patch: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Whole images with their short side area-averaged down to `size`, and the scales clipped to that latent grid."""
    H, W = x_B3HW.shape[-2:]
    h, w = H * size // min(H, W), W * size // min(H, W)
    small = F.interpolate(x_B3HW, size=(h, w), mode="area")
    n_h, n_w = h // patch, w // patch
    return small, list(dict.fromkeys((min(a, n_h), min(b, n_w)) for a, b in scales))


def _perceptual_loss():
    try:
        import lpips
    except ImportError:
        raise ValueError(
            "--perceptual-weight needs the `lpips` package and its VGG weights, which are not installed; "
            "install them (pip install lpips; the weights download on first use) or train with weight 0"
        ) from None
    try:
        return lpips.LPIPS(net="vgg", verbose=False).eval().requires_grad_(False)
    except Exception as e:  # the VGG weights download from the internet on first use
        raise ValueError(f"LPIPS could not load its VGG weights ({e}); train with --perceptual-weight 0") from None


class CaptionSampler:
    """A trained transformer (with its text encoder and default cfg / tau) that samples F_K for captions.

    `pipe` is a loaded model folder (an InfinityPipeline, built by the caller: trainers do not import the
    pipeline); `folder` names it in the run's identity.
    """

    def __init__(self, pipe, folder: str):
        self.pipe, self.folder = pipe, folder
        self.text_cache = TextCache(pipe.text_encoder)  # captions repeat across steps: encode each once

    def check(self, tokenizer: BitwiseTokenizer, schedules: dict[str, Schedule]) -> None:
        """Refuse a transformer that samples another encoder's bits, or lacks one of the schedules."""
        pipe = self.pipe
        if pipe.tokenizer.config != tokenizer.config or any(
            not torch.equal(a, b) for a, b in zip(pipe.tokenizer.encoder.state_dict().values(),
                                                  tokenizer.encoder.state_dict().values())
        ):
            raise ValueError(f"{self.folder}: its transformer was trained on another encoder's bits than --init-from's")
        for name, schedule in schedules.items():
            if name not in pipe.schedules or pipe.schedules[name].scales != schedule.scales:
                raise ValueError(f"{self.folder}: no schedule {name} {list(schedule.scales)} "
                                 f"(it has {sorted(pipe.schedules)})")

    def to(self, device: torch.device) -> None:
        self.pipe.transformer.to(device)
        self.pipe.tokenizer.to(device)
        self.pipe.device = device

    @torch.no_grad()
    def features(
        self, img_B3HW: torch.Tensor, captions: list[str], schedule: Schedule, given: int, seed: int
    ) -> torch.Tensor:
        """F_K (B, d, H, W): the sum of the codes the transformer samples for the captions, the bits of the first
        `given` scales those of the images."""
        pipe, s = self.pipe, self.pipe.spatial_patch
        bits = pipe.tokenizer.encode_scales(img_B3HW, latent_scales(schedule.scales, s)).bits[:given]
        text_BTE, lens_B = self.text_cache(captions, pipe.device)
        options = sampler_options(pipe.defaults, schedule.num_scales, None, None, None, None, None, None)
        generator = torch.Generator(pipe.device).manual_seed(seed)
        event = sample_image(pipe.transformer, pipe.tokenizer, text_BTE, lens_B, schedule, generator=generator,
                             prefix_bits=[patchify_bits(b, s) for b in bits], **options)
        return event.F_BdHW


class TokenizerTask:
    def __init__(
        self,
        config: TokenizerConfig,
        schedules: dict[str, Schedule],
        loss: TokenizerLoss,
        data: str,
        batch_size: int,
        seed: int,
        optim: OptimConfig,
        init_from: str | None = None,
        crop_size: int = 0,
        decoder_only: bool = False,
        sampler: CaptionSampler | None = None,
        sample_share: float = 0.5,
        sample_given_scales: int = 2,
        init_trunk_from: str | None = None,
        low_res: tuple[tuple[int, int], ...] = (),
    ):
        smallest = min(min(s.pixel_hw) for s in schedules.values())
        if any(size % config.patch_size or not 0 < size < smallest or until < 1 for size, until in low_res):
            raise ValueError(f"low-resolution stages need a size that is a multiple of the patch size "
                             f"{config.patch_size} and below the smallest image side {smallest}, and a step >= 1: "
                             f"{list(low_res)}")
        if low_res and (crop_size or sampler):
            raise ValueError("low-resolution stages train on whole images: not with --crop-size or --sample-from")
        self.low_res = low_res
        if crop_size and (crop_size % config.patch_size or crop_size > min(min(s.pixel_hw) for s in schedules.values())):
            raise ValueError(f"crop size {crop_size} must be a multiple of the patch size {config.patch_size} "
                             f"and fit every image of the schedules")
        if decoder_only and not init_from:
            raise ValueError("decoder-only fine-tuning needs the trained tokenizer to start from (--init-from)")
        if sampler and not decoder_only:
            raise ValueError("training the decoder on a transformer's samples needs --decoder-only: the transformer "
                             "was trained on the bits of this encoder, which must not change")
        if sampler and not 0 < sample_share < 1:
            raise ValueError(f"the share of the batch decoded from samples must be in (0, 1), got {sample_share}: "
                             "the rest keeps reconstructing the encoder's bits")
        if sampler and not 0 <= sample_given_scales < min(s.num_scales for s in schedules.values()):
            raise ValueError(f"the scales given from the image must leave at least one to sample, got {sample_given_scales}")
        if sampler and crop_size:
            raise ValueError("the transformer samples whole images: --sample-from does not go with --crop-size")
        self.crop_size, self.decoder_only = crop_size, decoder_only
        self.sampler, self.sample_share = sampler, sample_share if sampler else 0.0
        self.sample_given_scales = sample_given_scales if sampler else 0
        self.config, self.schedules, self.loss_cfg = config, schedules, loss
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.model = BitwiseTokenizer(config)
        if init_from and init_trunk_from:
            raise ValueError("start from whole weights (--init-from) or from a trunk (--init-trunk-from), not both")
        if init_from:
            init = load_init_weights(init_from, BitwiseTokenizer, config, load_official_tokenizer)
            self.model.load_state_dict(init.state_dict())
        if init_trunk_from:
            load_trunk(self.model, init_trunk_from)
        self.init_trunk_from = init_trunk_from
        if decoder_only:
            self.model.encoder.requires_grad_(False)
        if sampler is not None:
            sampler.check(self.model, schedules)
        self.source = make_source(data, schedules, seed)
        self.discriminator = PatchDiscriminator() if loss.gan > 0 else None
        self.disc_optimizer = adamw(self.discriminator, optim) if self.discriminator is not None else None
        self.optimizers = (self.disc_optimizer,) if self.disc_optimizer is not None else ()  # the loop sets their lr
        self.perceptual = _perceptual_loss() if loss.perceptual > 0 else None

    def identity(self) -> dict:
        return {
            "kind": "tokenizer", "config": self.config.to_dict(), "loss": config_dict(self.loss_cfg),
            "data": self.data, "batch_size": self.batch_size, "seed": self.seed, "crop_size": self.crop_size,
            "decoder_only": self.decoder_only, "sample_from": self.sampler.folder if self.sampler else None,
            "sample_share": self.sample_share,
            "sample_given_scales": self.sample_given_scales, "init_trunk_from": self.init_trunk_from,
            "low_res": [list(st) for st in self.low_res],
            "schedules": {k: [list(g) for g in s.scales] for k, s in self.schedules.items()},
        }

    def setup(self, dist: Distributed, wrapped: torch.nn.Module) -> None:
        if self.sampler is not None:
            if dist.world_size > 1:
                raise ValueError("--sample-from trains in one process (the sampled rows bypass DDP's forward)")
            self.sampler.to(dist.device)
        self.wrapped = wrapped
        if self.discriminator is not None:
            self.discriminator.to(dist.device)
            self.disc_wrapped = dist.wrap(self.discriminator)
        if self.perceptual is not None:
            self.perceptual.to(dist.device)

    def losses(self, step: int, dist: Distributed) -> tuple[torch.Tensor, dict[str, float], int]:
        batch: Batch = self.source.batch(step, self.batch_size, dist.shard(self.batch_size))
        x = batch.images_B3HW.to(dist.device)
        scales = self.schedules[batch.aspect_ratio].scales
        size = next((size for size, until in self.low_res if step < until), 0)
        if size:
            x, scales = downscale(x, scales, size, self.config.patch_size)
        if self.crop_size:
            x, scales = random_crops(x, scales, self.crop_size, self.config.patch_size,
                                     step_generator(self.seed, step, "crop"), self.batch_size, dist.shard(self.batch_size))
        m = round(self.sample_share * x.shape[0])  # the first m rows are decoded from the transformer's samples
        recon, codes = self.wrapped(x[m:], scales)
        q_losses = codes.losses
        metrics = {"psnr": float(psnr(recon.detach().clamp(-1, 1), x[m:]).mean()),
                   "feature_gap": float(q_losses["feature_commitment"].detach())}
        if m:
            sampled_F = self.sampler.features(x[:m], batch.captions[:m], self.schedules[batch.aspect_ratio],
                                              self.sample_given_scales, step_seed(self.seed, step, "samples"))
            recon_sampled = self.model.decoder(sampled_F)
            metrics["psnr_from_samples"] = float(psnr(recon_sampled.detach().clamp(-1, 1), x[:m]).mean())
            recon = torch.cat([recon_sampled, recon])
        cfg = self.loss_cfg
        weight = 1 + cfg.object_weight * background_mask(x).float() if cfg.object_weight else 1.0
        l1 = ((recon - x).abs() * weight).mean()
        total = cfg.recon * l1 + cfg.entropy * q_losses["entropy_penalty"] + cfg.commitment * q_losses["commitment"]
        metrics["l1"] = float(l1.detach())
        if cfg.feature_commitment:
            total = total + cfg.feature_commitment * q_losses["feature_commitment"]
        if cfg.color:
            color = F.l1_loss(F.avg_pool2d(recon, 4), F.avg_pool2d(x, 4))
            total = total + cfg.color * color
            metrics["color"] = float(color.detach())
        if self.perceptual is not None:
            perceptual = self.perceptual(recon, x).mean()
            total = total + cfg.perceptual * perceptual
            metrics["perceptual"] = float(perceptual.detach())
        if self.discriminator is not None and step >= cfg.gan_start:
            d_loss = hinge_discriminator_loss(self.disc_wrapped(x), self.disc_wrapped(recon.detach()))
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_optimizer.step()
            g_loss = hinge_generator_loss(self.disc_wrapped(recon))
            total = total + cfg.gan * g_loss
            metrics.update(d_loss=float(d_loss.detach()), g_loss=float(g_loss.detach()))
        return total, metrics, x.shape[0]

    def state_dict(self) -> dict:
        if self.discriminator is None:
            return {}
        return {"discriminator": self.discriminator.state_dict(), "disc_optimizer": self.disc_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.discriminator is not None:
            self.discriminator.load_state_dict(state["discriminator"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])

    def _sample_batch(self) -> Batch:
        if self.data == "shapes":
            return ShapesSource(self.schedules, self.seed, split="heldout").batch(0, 6, slice(0, 6))
        return self.source.batch(10**9, 6, slice(0, 6))

    @torch.no_grad()
    def samples(self, model: BitwiseTokenizer, step: int, out_dir: Path) -> dict[str, float]:
        """A grid on held-out images (input, then the decode of every F_k) and their PSNR."""
        model.eval()
        batch = self._sample_batch()
        schedule = self.schedules[batch.aspect_ratio]
        device = next(model.parameters()).device
        x = batch.images_B3HW.to(device)
        codes = model.encode_scales(x, schedule.scales)
        columns = [x] + [model.decode(F_k) for F_k in codes.cumulative]
        save_grid(columns, out_dir / "samples" / f"tokenizer_{step:07d}.png")
        return {"sample_psnr": float(psnr(columns[-1], x).mean())}

    def export(self, model: BitwiseTokenizer, out_dir: Path) -> None:
        save_model(model, out_dir / "tokenizer.safetensors")
        logger.info("wrote %s", out_dir / "tokenizer.safetensors")
