"""Training the Infinity transformer: teacher-forced next-scale prediction of the tokenizer's bits.

Per batch: a frozen tokenizer encodes the images; the multi-scale quantizer, with bitwise self-correction,
flips a random fraction of the bits of the first scales and re-quantizes the later residuals (paper
Algorithm 4), which gives both the inputs and the targets; with an on-policy share, that share of the rows takes
the model's own samples for its caption at those first scales (after a few scales given from the image) instead
of random flips: the errors it makes at inference, which are coherent where random flips are not, and the later
scales learn to correct those; a fraction of the prompts is replaced by the learned
empty prompt (classifier-free guidance); the loss is the cross-entropy of each of the d bits (the
Infinite-Vocabulary Classifier; or, with an index-wise head, of the 2^d-way index), every token of scale k weighted by l_k^-power (power 0: all tokens equal;
1: every scale counts as much as any other, however few tokens it has), and with an object weight w by
1 + w * the share of its cell that objects cover (pixels unlike the image's border): the few tokens that draw
objects count more than the many that repeat the background. With a coarse share, that share of the steps
trains only the first scales (`coarse_scales`): the causal mask makes their loss exactly the full loss's first
terms, and the positions do not depend on the last scale, so such a step is the same objective on the scales that
place and colour the objects, at a fraction of the cost (121 of 521 tokens for 5 of the embedded model's 7).

Both heads' losses are in nats per bit: -log p(a token's d bits) / d. The bitwise head's mean over its d bits is
exactly that (its bits are independent given the context); the index head's cross-entropy over 2^d classes is
divided by d. At initialisation both are ln 2 = 0.69, their gradients are of one size, and `--grad-clip` clips
them alike (per token, the index head's raw cross-entropy would be d times larger, and always clipped).

Randomness, so that two arms differ only in what is compared: the model is built from the run's seed alone (its
head drawn last: the same trunk whatever the head); the data, the self-correction flips and the condition dropout
each draw from their own generator of (seed, step), so turning self-correction on changes neither the images nor
which prompts are dropped.

Legend: B batch (this process), G global batch, L tokens of all scales, d bits, V logits per token, T text tokens.
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints import load_official_transformer, save_model
from ..data.objects import object_token_weights
from ..sampling import sample_scales
from ..schedules import Schedule
from ..text import TextEncoder
from ..tokenizer import BitwiseTokenizer, SelfCorrection
from ..tokenizer.model import latent_scales, patchify_bits, spatial_patch
from ..transformer import Infinity, TransformerConfig
from ..transformer.losses import bitwise_cross_entropy, index_cross_entropy, predicted_bits
from .data import ShapesSource, make_source
from .engine import Distributed, config_dict, load_init_weights, save_grid, step_generator
from .grow import deepen
from .shared import TextCache, load_text_encoder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TransformerLoss:
    scale_weight_power: float = 0.0  # token weight of scale k ~ (h_k * w_k) ** -power
    self_correction_scales: int = 0  # corrupt the first n scales (0: plain teacher forcing)
    self_correction_strength: float = 0.3  # largest flip probability
    cond_dropout: float = 0.1  # fraction of prompts replaced by the learned empty prompt
    object_weight: float = 0.0  # extra token weight x the share of the token's cell covered by objects
    on_policy_share: float = 0.0  # rows whose first self_correction_scales scales are the model's own samples
    on_policy_cfg: float = 3.0  # guidance and temperature of those samples (the pipeline's defaults)
    on_policy_tau: float = 0.25
    # The first scales of those rows come from the image: the background a caption leaves open is the image's.
    on_policy_given: int = 2
    coarse_scales: int = 5  # the scales a coarse step trains (the first ones)
    coarse_share: float = 0.0  # the share of the steps that are coarse

    def __post_init__(self) -> None:
        if self.scale_weight_power < 0 or not 0 <= self.cond_dropout < 1 or self.object_weight < 0:
            raise ValueError(f"need scale_weight_power >= 0, 0 <= cond_dropout < 1, object_weight >= 0: {self}")
        SelfCorrection(self.self_correction_scales, self.self_correction_strength)  # validates
        if not 0 <= self.on_policy_share <= 1 or self.on_policy_tau <= 0 or self.on_policy_given < 0:
            raise ValueError(f"need 0 <= on_policy_share <= 1, on_policy_tau > 0, on_policy_given >= 0: {self}")
        if self.on_policy_share and not self.on_policy_given < self.self_correction_scales:
            raise ValueError("on_policy_share needs self_correction_scales > on_policy_given (the scales that take "
                             f"the model's samples), got {self.self_correction_scales} <= {self.on_policy_given}")
        if not 0 <= self.coarse_share <= 1 or self.coarse_scales < 0 or (self.coarse_share and self.coarse_scales < 2):
            raise ValueError(f"need 0 <= coarse_share <= 1 and, with a coarse share, coarse_scales >= 2: {self}")


class GlobalBatchFlips:
    """Self-correction flips drawn for the whole global batch, this process keeping its rows.

    The same (seed, step) gives the same corrupted batch whatever the number of processes.
    """

    def __init__(self, cfg: SelfCorrection, generator: torch.Generator, global_batch: int, rows: slice):
        self.cfg, self.generator, self.global_batch, self.rows = cfg, generator, global_batch, rows

    def __call__(self, k: int, bits_Bhwd: torch.Tensor) -> torch.Tensor | None:
        if k >= self.cfg.num_scales:
            return None
        steps = int(round(100 * self.cfg.strength)) + 1
        p = torch.randint(0, steps, (), generator=self.generator).item() / 100
        u = torch.rand((self.global_batch, *bits_Bhwd.shape[1:]), generator=self.generator)[self.rows]
        return (u < p).to(bits_Bhwd.device)


class OnPolicyFlips:
    """Flips that turn the bits of the chosen rows, at the first len(sampled_bits) scales, into the model's own
    samples; the other rows (and the rows' later scales) take `fallback`'s flips, or none.

    sampled_bits[k]: (n, h_k, w_k, d) latent bits of the n chosen rows, sampled by the model from its own earlier
    scales; the quantizer then sums exactly those codes, so the chosen rows' inputs are what the model sees at
    inference, and the targets of the later scales are the true residuals against them.
    """

    def __init__(self, sampled_bits: list[torch.Tensor], rows_B: torch.Tensor, fallback: GlobalBatchFlips | None):
        self.sampled_bits, self.rows_B, self.fallback = sampled_bits, rows_B, fallback

    def __call__(self, k: int, bits_Bhwd: torch.Tensor) -> torch.Tensor | None:
        base = self.fallback(k, bits_Bhwd) if self.fallback is not None else None  # drawn always: same stream
        if k >= len(self.sampled_bits):
            return base
        mask = base.clone() if base is not None else torch.zeros_like(bits_Bhwd, dtype=torch.bool)
        mask[self.rows_B] = bits_Bhwd[self.rows_B] != self.sampled_bits[k].to(bits_Bhwd)
        return mask


def scale_weights(schedule: Schedule, power: float) -> torch.Tensor:
    """(L,) token weights with mean 1: tokens of scale k weigh (h_k w_k)^-power."""
    w = torch.cat([torch.full((h * w,), float(h * w) ** -power) for h, w in schedule.scales])
    return w / w.mean()


@functools.lru_cache(maxsize=2)
def shared_text_encoder(name: str, device: torch.device, max_length: int) -> TextEncoder:
    """The frozen text encoder, loaded once per process: runs trained one after another share it."""
    return load_text_encoder(name, device, max_length)


class TransformerTask:
    optimizers = ()  # only the model's: no optimizer of its own

    def __init__(
        self,
        config: TransformerConfig,
        tokenizer: BitwiseTokenizer,
        tokenizer_path: str,
        text_encoder: str,
        schedules: dict[str, Schedule],
        loss: TransformerLoss,
        data: str,
        batch_size: int,
        seed: int,
        init_from: str | None = None,
        sample_cfg: float = 3.0,
        object_count_weights: tuple[float, ...] | None = None,
    ):
        self.patch = spatial_patch(config.bits, tokenizer.bits)  # 2 for Infinity-8B's 2x2 tokens, else 1
        self.config, self.tokenizer, self.tokenizer_path = config, tokenizer.eval().requires_grad_(False), tokenizer_path
        self.text_encoder_name, self.schedules, self.loss_cfg = text_encoder, schedules, loss
        self.data, self.batch_size, self.seed, self.sample_cfg = data, batch_size, seed, sample_cfg
        with torch.random.fork_rng(devices=[]):  # the weights depend on the seed alone, not on what ran before
            torch.manual_seed(seed)
            self.model = Infinity(config)
        if init_from:
            init = load_init_weights(init_from, Infinity, config, load_official_transformer, grow=deepen)
            self.model.load_state_dict(init.state_dict())
        self.object_count_weights = object_count_weights
        self.source = make_source(data, schedules, seed, object_count_weights)
        self.self_correction = SelfCorrection(loss.self_correction_scales, loss.self_correction_strength)

    def identity(self) -> dict:
        return {
            "kind": "transformer", "config": self.config.to_dict(), "loss": self._loss_identity(),
            "tokenizer": self.tokenizer.config.to_dict(), "text_encoder": self.text_encoder_name,
            "data": self.data, "batch_size": self.batch_size, "seed": self.seed,
            **({"object_count_weights": list(self.object_count_weights)} if self.object_count_weights else {}),
            "schedules": {k: [list(g) for g in s.scales] for k, s in self.schedules.items()},
        }

    def _loss_identity(self) -> dict:
        """The loss settings; without coarse steps their fields are left out, so that checkpoints written before
        they existed still resume."""
        loss = config_dict(self.loss_cfg)
        if not self.loss_cfg.coarse_share:
            del loss["coarse_scales"], loss["coarse_share"]
        return loss

    def setup(self, dist: Distributed, wrapped: torch.nn.Module) -> None:
        self.wrapped, self.device = wrapped, dist.device
        self.tokenizer.to(dist.device)
        self.text = TextCache(shared_text_encoder(self.text_encoder_name, dist.device, self.config.text_maxlen))

    def losses(self, step: int, dist: Distributed) -> tuple[torch.Tensor, dict[str, float], int]:
        G, rows = self.batch_size, dist.shard(self.batch_size)
        batch = self.source.batch(step, G, rows)
        schedule = self.schedules[batch.aspect_ratio]
        flip_g = step_generator(self.seed, step, "flips")
        with torch.no_grad():
            x = batch.images_B3HW.to(self.device)
            flips = GlobalBatchFlips(self.self_correction, flip_g, G, rows) if self.self_correction.num_scales else None
            scales = latent_scales(schedule.scales, self.patch)
            f_BdHW = self.tokenizer.encode(x)
            if self.loss_cfg.on_policy_share:
                clean = self.tokenizer.quantize(f_BdHW, scales)
                given = [patchify_bits(b, self.patch) for b in clean.bits[:self.loss_cfg.on_policy_given]]
                flips = self._on_policy_flips(step, batch.captions, schedule, G, rows, given, flips)
            codes = self.tokenizer.quantize(f_BdHW, scales, flips=flips)
            x_BLd = self.tokenizer.teacher_forcing_inputs(codes, self.patch)
            targets_BLd = self.tokenizer.targets(codes, self.patch)
            drop_g = step_generator(self.seed, step, "cond-dropout")
            drop_B = (torch.rand(G, generator=drop_g) < self.loss_cfg.cond_dropout)[rows].to(self.device)
            text_BTE, lens_B = self.text(batch.captions, self.device)
        schedule, x_BLd, targets_BLd = self._coarse_prefix(step, schedule, x_BLd, targets_BLd)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits_BLV = self.wrapped(text_BTE, lens_B, x_BLd, schedule, drop_text_B=drop_B)
        weights = scale_weights(schedule, self.loss_cfg.scale_weight_power).to(self.device)
        if self.loss_cfg.object_weight:
            weights = weights * object_token_weights(x, schedule, self.loss_cfg.object_weight)
            weights = weights / weights.mean()
        head = self.config.head
        loss = (bitwise_cross_entropy if head == "bits" else index_cross_entropy)(logits_BLV, targets_BLd, weights)
        with torch.no_grad():
            B, L, d = targets_BLd.shape
            correct_BL = (predicted_bits(logits_BLV, d, head) == targets_BLd).float().mean(-1)
            coarse = sum(h * w for h, w in schedule.scales[:3])
            metrics = {"acc": float(correct_BL.mean()), "acc_coarse": float(correct_BL[:, :coarse].mean())}
        return loss, metrics, x.shape[0]

    def _coarse_prefix(self, step: int, schedule: Schedule, x_BLd: torch.Tensor, targets_BLd: torch.Tensor
                       ) -> tuple[Schedule, torch.Tensor, torch.Tensor]:
        """The step's schedule, inputs and targets: the first `coarse_scales` scales on a coarse step, else all."""
        cfg = self.loss_cfg
        coarse = cfg.coarse_share and cfg.coarse_scales < schedule.num_scales and bool(
            torch.rand((), generator=step_generator(self.seed, step, "coarse")) < cfg.coarse_share)
        if not coarse:
            return schedule, x_BLd, targets_BLd
        prefix = Schedule(schedule.scales[:cfg.coarse_scales], schedule.patch_size, schedule.h_div_w, schedule.budget)
        L = prefix.seq_len
        return prefix, x_BLd[:, :L - 1], targets_BLd[:, :L]

    def _on_policy_flips(self, step: int, captions: list[str], schedule: Schedule, G: int, rows: slice,
                         given_bits: list[torch.Tensor], fallback: GlobalBatchFlips | None) -> OnPolicyFlips:
        """Sample the first scales of this process's rows with the current weights (eval mode, no gradient) and
        give them to the chosen rows; `given_bits` (token bits of the first scales, from the image) are taken
        instead of samples there.

        Every row is sampled, chosen or not, so every process runs the same forwards (FSDP gathers weights in
        them). The rows are chosen for the global batch; the samples come from this process's generator.
        """
        g = step_generator(self.seed, step, "on-policy")
        rows_B = (torch.rand(G, generator=g) < self.loss_cfg.on_policy_share)[rows]
        sample_g = torch.Generator(self.device).manual_seed(int(torch.randint(0, 2**62, (), generator=g)))
        was_training = self.model.training
        text_BTE, lens_B = self.text(captions, self.device)
        sampled = []
        self.model.eval()
        try:
            events = sample_scales(self.model, self.tokenizer, text_BTE, lens_B, schedule,
                                   cfg=self.loss_cfg.on_policy_cfg, tau=self.loss_cfg.on_policy_tau,
                                   generator=sample_g, prefix_bits=given_bits)
            for event in events:
                sampled.append(event.latent_bits_Bhwd[rows_B])
                if len(sampled) == self.self_correction.num_scales:
                    break
            events.close()
        finally:
            self.model.train(was_training)
        return OnPolicyFlips(sampled, rows_B.to(self.device), fallback)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def _sample_prompts(self) -> list[str]:
        if self.data == "shapes":
            return ShapesSource(self.schedules, self.seed, split="heldout").batch(0, 6, slice(0, 6)).captions
        return self.source.batch(10**9, 6, slice(0, 6)).captions

    @torch.no_grad()
    def samples(self, model: Infinity, step: int, out_dir: Path) -> dict[str, float]:
        """A grid for fixed held-out prompts: one row per prompt, the decoded F_k of every scale across."""
        model.eval()
        prompts = self._sample_prompts()
        schedule = self.schedules[next(iter(self.schedules))]
        text_BTE, lens_B = self.text(prompts, self.device)
        g = torch.Generator(self.device).manual_seed(self.seed)
        columns = [ev.preview_B3HW for ev in sample_scales(
            model, self.tokenizer, text_BTE, lens_B, schedule, cfg=self.sample_cfg, generator=g, preview=True
        )]
        path = out_dir / "samples" / f"transformer_{step:07d}.png"
        save_grid(columns, path)
        path.with_suffix(".txt").write_text("\n".join(prompts) + "\n")
        return {}

    def export(self, model: Infinity, out_dir: Path) -> None:
        save_model(model, out_dir / "transformer.safetensors")
        (out_dir / "transformer_training.json").write_text(json.dumps(self.identity(), indent=1))
        logger.info("wrote %s", out_dir / "transformer.safetensors")
