"""python -m infinity.train {tokenizer,transformer} ...: train the tokenizer, then the transformer on its bits.

Runs as one process (CPU or one GPU) or under torchrun (gloo on CPU, NCCL on GPUs), e.g.
    torchrun --nproc-per-node 2 -m infinity.train transformer --tokenizer runs/tok/tokenizer.safetensors ...
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from ..checkpoints import CheckpointError, load_model
from ..tokenizer import BitwiseTokenizer
from ..transformer import Infinity
from .engine import Distributed, OptimConfig
from .loop import RunConfig, train
from .recipes import RECIPES
from .shared import load_text_encoder
from .tokenizer_trainer import CaptionSampler, TokenizerLoss, TokenizerTask, parse_low_res
from .transformer_trainer import TransformerLoss, TransformerTask

logger = logging.getLogger("infinity.train")


def _common(p: argparse.ArgumentParser, lr: float) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--recipe", default="shapes-small", choices=sorted(RECIPES),
                   help="model configs and scale schedules to train (default: %(default)s, the embedded model)")
    g.add_argument("--data", default="shapes",
                   help="'shapes' (procedural scenes rendered on the fly), a JSONL file in the official layout "
                        "(one line per image: image_path, h_div_w, text), or (tokenizer) a folder of images")
    g.add_argument("--out", required=True, help="run folder: checkpoint, metrics.jsonl, samples/, exported weights")
    g.add_argument("--steps", type=int, required=True, help="total optimisation steps of the run")
    g.add_argument("--batch-size", type=int, default=16, help="global batch, split over the processes (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="fixes data, flips and dropout (default: %(default)s)")
    g.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out if there is one")
    g.add_argument("--stop-at", type=int, default=0,
                   help="end this process after this step (checkpoint and weights written; the learning rate still "
                        "follows --steps): a long run in segments (default: %(default)s, run to --steps)")
    g.add_argument("--start-step", type=int, default=0,
                   help="with --init-from and no checkpoint: the step those weights were exported at, so that the "
                        "schedules go on from there (the fresh optimizer warms up again; default: %(default)s)")
    g.add_argument("--init-from", default=None,
                   help="start from these weights: an official .pth or our .safetensors (fine-tuning)")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto (default: %(default)s)")
    g.add_argument("--threads", type=int, default=0, help="CPU threads per process (0: torch's default)")
    g.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="bf16: forward under bf16 autocast, fp32 master weights; auto: bf16 where the device has "
                        "native bf16 (CUDA, a CPU with avx512_bf16 / amx_bf16), else fp32 (default: %(default)s)")
    g.add_argument("--log-every", type=int, default=10, help="steps between metrics lines (default: %(default)s)")
    g.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default: %(default)s)")
    g.add_argument("--sample-every", type=int, default=0, help="steps between sample grids (0: at the end only)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    g.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard weights, gradients and optimizer state (FSDP2) instead of DDP; "
                        "the EMA stays a whole copy per process (--ema-decay 0 for models that cannot)")
    o = p.add_argument_group("optimiser (AdamW, linear warmup then cosine)")
    o.add_argument("--lr", type=float, default=lr, help="peak learning rate (default: %(default)s)")
    o.add_argument("--min-lr-ratio", type=float, default=0.1, help="final lr / peak lr (default: %(default)s)")
    o.add_argument("--warmup-steps", type=int, default=200, help="(default: %(default)s)")
    o.add_argument("--weight-decay", type=float, default=0.05, help="on weight matrices only (default: %(default)s)")
    o.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 for none (default: %(default)s)")
    o.add_argument("--ema-decay", type=float, default=0.999, help="0 disables the EMA (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m infinity.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    tok = sub.add_parser("tokenizer", help="train the multi-scale bitwise tokenizer (VAE + BSQ/LFQ)")
    _common(tok, lr=1e-3)
    tok.add_argument("--bits", type=int, default=0,
                     help="bits per latent cell d (0: the recipe's); a transformer trained on it takes its d")
    t = tok.add_argument_group("tokenizer losses")
    t.add_argument("--init-trunk-from", default=None, metavar="TOKENIZER",
                   help="start from this tokenizer's weights (any bit depth) except the two layers whose shapes "
                        "depend on d, which start fresh: tokenizers of several d from one trunk")
    t.add_argument("--recon-weight", type=float, default=1.0, help="L1 reconstruction (default: %(default)s)")
    t.add_argument("--object-weight", type=float, default=0.0,
                   help="extra L1 weight of pixels that differ from the image's border colour (default: %(default)s)")
    t.add_argument("--color-weight", type=float, default=0.0, help="L1 of 4x-pooled colours (default: %(default)s)")
    t.add_argument("--entropy-weight", type=float, default=0.1, help="BSQ/LFQ entropy penalty (default: %(default)s)")
    t.add_argument("--commitment-weight", type=float, default=0.25,
                   help="each scale's normalised residual pulled towards its code (default: %(default)s)")
    t.add_argument("--feature-commitment-weight", type=float, default=0.0,
                   help="the encoder's features pulled towards their quantized sum F_K (default: %(default)s)")
    t.add_argument("--gan-weight", type=float, default=0.0, help="PatchGAN hinge loss, 0 for none (default: %(default)s)")
    t.add_argument("--gan-start", type=int, default=0, help="first step of the GAN loss (default: %(default)s)")
    t.add_argument("--low-res", nargs="+", default=None, metavar="SIZE:UNTIL",
                   help="progressive resolution: before step UNTIL, whole images downscaled to a SIZE-pixel short "
                        "side (e.g. 64:4800); the model's own sizes after the last stage")
    t.add_argument("--crop-size", type=int, default=0,
                   help="train on random square crops of this many pixels (0: whole images; default: %(default)s)")
    t.add_argument("--decoder-only", action="store_true",
                   help="freeze the encoder of --init-from and train the decoder only: the bits stay the same, so a "
                        "transformer trained on them meanwhile stays valid")
    t.add_argument("--sample-from", default=None, metavar="MODEL_DIR",
                   help="with --decoder-only: decode part of each batch from the bits this model folder's "
                        "transformer samples for the captions (its default cfg and tau), so that the decoder learns "
                        "the transformer's outputs; the folder's tokenizer must have --init-from's encoder")
    t.add_argument("--sample-share", type=float, default=0.5,
                   help="share of each batch decoded from the transformer's samples (default: %(default)s)")
    t.add_argument("--sample-given-scales", type=int, default=2,
                   help="with --sample-from: the first N scales' bits come from the image, so the sample shows "
                        "its scene (background included; default: %(default)s)")
    t.add_argument("--perceptual-weight", type=float, default=0.0,
                   help="LPIPS; needs the lpips package and its weights (default: %(default)s)")

    tr = sub.add_parser("transformer", help="train the transformer on a trained tokenizer's bits")
    _common(tr, lr=5e-4)
    t = tr.add_argument_group("transformer")
    t.add_argument("--tokenizer", required=True, help="the trained tokenizer (.safetensors from the tokenizer trainer)")
    t.add_argument("--scale-weight-power", type=float, default=0.0,
                   help="tokens of scale k weigh (h*w)^-power: 0 all tokens equal, 1 all scales equal (default: %(default)s)")
    t.add_argument("--self-correction-scales", type=int, default=0,
                   help="bitwise self-correction: flip bits at the first N scales (default: %(default)s)")
    t.add_argument("--self-correction-strength", type=float, default=0.3,
                   help="largest flip probability (default: %(default)s)")
    t.add_argument("--on-policy-share", type=float, default=0.0,
                   help="share of the rows whose first --self-correction-scales scales are the model's own samples "
                        "(at --on-policy-cfg / --on-policy-tau) instead of random flips (default: %(default)s)")
    t.add_argument("--on-policy-cfg", type=float, default=3.0, help="guidance of those samples (default: %(default)s)")
    t.add_argument("--on-policy-tau", type=float, default=0.25, help="temperature of those samples (default: %(default)s)")
    t.add_argument("--on-policy-given", type=int, default=2,
                   help="those rows' first scales come from the image, so a background the caption leaves open is "
                        "the image's (default: %(default)s)")
    t.add_argument("--cond-dropout", type=float, default=0.1,
                   help="fraction of prompts dropped for classifier-free guidance (default: %(default)s)")
    t.add_argument("--object-weight", type=float, default=0.0,
                   help="tokens weigh 1 + this x the share of their cell covered by objects (pixels unlike the "
                        "image's border), so the few tokens that draw objects count (default: %(default)s)")
    t.add_argument("--object-count-weights", type=float, nargs=3, metavar=("ONE", "TWO", "THREE"),
                   help="shapes data: relative weights of scenes with 1, 2 and 3 objects (default: equal)")
    t.add_argument("--coarse-share", type=float, default=0.0,
                   help="the share of the steps that train only the first --coarse-scales scales, where objects "
                        "are placed and coloured, at a fraction of a full step's cost (default: %(default)s)")
    t.add_argument("--coarse-scales", type=int, default=5,
                   help="the scales a coarse step trains (default: %(default)s)")
    t.add_argument("--sample-cfg", type=float, default=3.0, help="CFG of the sample grids (default: %(default)s)")
    t.add_argument("--depth", type=int, default=0,
                   help="transformer blocks (0: the recipe's); --init-from may then hold a shallower model of the "
                        "recipe, whose blocks are kept and the new ones added on top as identities (default: %(default)s)")
    t.add_argument("--head", choices=("bits", "index"), default="bits",
                   help="bits: the paper's bitwise classifier; index: a softmax over all 2^d indices, VAR-style, "
                        "for comparison at small d (default: %(default)s)")

    ex = sub.add_parser("export", help="assemble a model folder for InfinityPipeline from trained weights")
    ex.add_argument("--recipe", default="shapes-small", choices=sorted(RECIPES), help="(default: %(default)s)")
    ex.add_argument("--tokenizer", required=True, help="tokenizer.safetensors written by the tokenizer trainer")
    ex.add_argument("--transformer", required=True, help="transformer.safetensors written by the transformer trainer")
    ex.add_argument("--out", required=True, help="the model folder to write (e.g. assets/embedded)")
    ex.add_argument("--cfg", type=float, default=3.0, help="default guidance weight (default: %(default)s)")
    ex.add_argument("--tau", type=float, default=1.0, help="default temperature (default: %(default)s)")
    ex.add_argument("--cfg-schedule", type=float, nargs="+", default=None, metavar="CFG",
                    help="default guidance weight per scale, coarse to fine (replaces --cfg)")
    ex.add_argument("--tau-schedule", type=float, nargs="+", default=None, metavar="TAU",
                    help="default temperature per scale, coarse to fine (replaces --tau)")
    ex.add_argument("--example", action="append", default=[], help="an example prompt for the app (repeatable)")
    return parser


def _run_config(args: argparse.Namespace) -> RunConfig:
    if args.fsdp and getattr(args, "on_policy_share", 0.0) > 0:
        raise ValueError("--fsdp cannot be combined with --on-policy-share: on-policy sampling calls the model's "
                         "parts one by one, which FSDP does not gather; train with DDP (without --fsdp) instead")
    if args.start_step and not args.init_from:
        raise ValueError("--start-step continues exported weights: give them with --init-from")
    optim = OptimConfig(
        lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay,
    )
    return RunConfig(
        out_dir=args.out, steps=args.steps, batch_size=args.batch_size, seed=args.seed, optim=optim,
        log_every=args.log_every, checkpoint_every=args.checkpoint_every, sample_every=args.sample_every,
        resume=args.resume, progress=not args.no_progress, fsdp=args.fsdp,
        precision=args.precision, stop_at=args.stop_at, start_step=args.start_step,
    )


def _caption_sampler(folder: str) -> CaptionSampler:
    """The model folder's pipeline (on the CPU until the run's device is known), to sample for captions."""
    from ..pipeline import InfinityPipeline

    pipe = InfinityPipeline.from_pretrained(folder, device="cpu", dtype=torch.float32, local_files_only=True)
    return CaptionSampler(pipe, folder)


def _task(args: argparse.Namespace, run: RunConfig):
    recipe = RECIPES[args.recipe]
    if args.command == "tokenizer":
        loss = TokenizerLoss(
            recon=args.recon_weight, object_weight=args.object_weight, color=args.color_weight,
            entropy=args.entropy_weight, commitment=args.commitment_weight,
            feature_commitment=args.feature_commitment_weight, gan=args.gan_weight,
            gan_start=args.gan_start, perceptual=args.perceptual_weight,
        )
        return TokenizerTask(recipe.tokenizer_config(args.bits), recipe.schedules, loss, args.data, args.batch_size,
                             args.seed, run.optim, init_from=args.init_from, crop_size=args.crop_size,
                             decoder_only=args.decoder_only,
                             sampler=_caption_sampler(args.sample_from) if args.sample_from else None,
                             sample_share=args.sample_share, sample_given_scales=args.sample_given_scales,
                             init_trunk_from=args.init_trunk_from, low_res=parse_low_res(args.low_res))
    tokenizer = load_model(args.tokenizer)
    if not isinstance(tokenizer, BitwiseTokenizer):
        raise ValueError(f"{args.tokenizer} is not a tokenizer")
    loss = TransformerLoss(
        scale_weight_power=args.scale_weight_power, self_correction_scales=args.self_correction_scales,
        self_correction_strength=args.self_correction_strength, cond_dropout=args.cond_dropout,
        object_weight=args.object_weight, on_policy_share=args.on_policy_share, on_policy_cfg=args.on_policy_cfg,
        on_policy_tau=args.on_policy_tau, on_policy_given=args.on_policy_given,
        coarse_scales=args.coarse_scales, coarse_share=args.coarse_share,
    )
    config = recipe.transformer_config(tokenizer.config, args.head, args.depth)
    return TransformerTask(config, tokenizer, args.tokenizer, recipe.text_encoder, recipe.schedules, loss,
                           args.data, args.batch_size, args.seed, init_from=args.init_from, sample_cfg=args.sample_cfg,
                           object_count_weights=tuple(args.object_count_weights) if args.object_count_weights else None)


def export(args: argparse.Namespace) -> None:
    """Tokenizer + transformer + MiniLM + the recipe's schedules + sampling defaults -> a pipeline folder."""
    from ..options import SamplingDefaults
    from ..pipeline import InfinityPipeline

    recipe = RECIPES[args.recipe]
    tokenizer, transformer = load_model(args.tokenizer), load_model(args.transformer)
    if not isinstance(tokenizer, BitwiseTokenizer) or not isinstance(transformer, Infinity):
        raise ValueError(f"need a tokenizer and a transformer, got {args.tokenizer} and {args.transformer}")
    recipe.check(args.recipe, tokenizer.config, transformer.config)
    defaults = SamplingDefaults(cfg=args.cfg, tau=args.tau, cfg_schedule=args.cfg_schedule, tau_schedule=args.tau_schedule)
    text = load_text_encoder(recipe.text_encoder, torch.device("cpu"), recipe.transformer.text_maxlen)
    pipe = InfinityPipeline(tokenizer, transformer, text, recipe.schedules, defaults,
                            name=args.recipe, device="cpu", dtype=torch.float32, examples=args.example)
    logger.info("wrote %s", pipe.save_pretrained(args.out))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.command == "export":
        try:
            export(args)
        except (ValueError, FileNotFoundError, CheckpointError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    dist = None
    try:
        run = _run_config(args)
        dist = Distributed.from_env(args.device)
        torch.manual_seed(args.seed)  # the same initial weights in every process and every run of this seed
        task = _task(args, run)
        train(task, run, dist)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist is not None:
            dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
