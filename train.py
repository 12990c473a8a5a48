"""
Train a SigLIP-style dual encoder with the SigLIP loss (baseline), C2LIP's concept losses, DeGLA's
hard negatives and self-distillation, or both methods at once (METHOD.md §2, §3, §3.9).

One code path for every world size (gloo on CPU, nccl on GPU); world size 1 is the general case:

    python train.py                                   # tiny model on the built-in world, CPU, ~4-5 min
    python train.py --loss=c2lip                      # + L_npc and L_xac (concepts by NLTK chunking)
    python train.py --loss=degla                      # DeGLA: hard negatives, EMA teacher, IGC/TGC/distill
    python train.py --loss=c2lip+degla                # both in one objective
    python train.py --data=my/captions.jsonl          # your own images and captions (JSONL or CSV)
    python train.py --data='cc3m/{00000..01411}.tar'  # WebDataset shards, as img2dataset writes them
    torchrun --standalone --nproc_per_node=2 train.py --out_dir=runs/ddp   # the same run on 2 processes

Every field of Config is a --name=value flag (--help lists them); an unknown one is an error. A run
writes to out_dir (default runs/<loss>) and refuses a folder holding another run unless --resume or
--overwrite. The resolved config is written to out_dir/config.json and into every checkpoint.
"""

import copy
import math
import os
import random
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

import concepts
import data
import losses
import runtime
import world
from checkpoint import save_checkpoint, load_checkpoint, model_from_checkpoint  # noqa: F401 (re-exported)
import cli
from cli import UsageError, run
from model import DualEncoder, WordTokenizer, tokenizer_from_state_dict

# -----------------------------------------------------------------------------
# config


@dataclass
class Config:
    # run
    config: str = ""                 # a recipe file (configs/*.toml) of these names; flags given with it override it
    out_dir: str = ""                # logs, config and checkpoints ("" = runs/<loss>)
    seed: int = 0
    resume: bool = False             # continue from out_dir/ckpt.pt if it exists (says which it did)
    overwrite: bool = False          # replace the run already in out_dir (otherwise starting there is refused)
    init: str = ""                   # start from this checkpoint's weights (fresh optimizer and step count)
    # data
    data: str = "world"              # "world" (built in), a JSONL/CSV file, or WebDataset shards (brace pattern, folder, .txt list)
    image_key: str = "image"         # field names in a JSONL/CSV file
    caption_key: str = "caption"     # shards: "caption" reads {key}.txt, another name that field of {key}.json
    resampled: bool = False          # shards: each epoch draws shards with replacement (the C2LIP recipe)
    samples_per_epoch: int = 0       # shards: samples one epoch covers (needed with --resampled; 0 = all)
    shuffle_window: int = 1024       # shards: samples a rank shuffles together (a shuffle buffer that resumes exactly)
    world_scenes: int = 40000        # training scenes of the built-in world
    world_seed: int = 0              # which scenes (fixed across --seed, so seeds vary training, not data)
    min_objects: int = 2
    max_objects: int = 3
    world_split: str = "default"     # default | compositional: held-out colour-shape pairs and spatial facts (world.py)
    relations: bool = False          # world captions state a spatial relation ("a red circle left of a blue square")
    world_bare: float = 0.0          # world captions: each object named without its colour with this probability ("a circle")
    world_partial: float = 0.0       # world captions: with this probability a caption names only some of its objects
    world_bare_all: float = 0.0      # world captions: with this probability a caption names its objects without colours
    workers: int = 0                 # DataLoader worker processes per rank
    bad_data: str = "skip"           # skip (and report) or error on a bad record or unreadable image
    max_skip_fraction: float = 0.01  # stop once more than this fraction of the records was skipped
    # model
    model: str = "tiny"              # size preset in model.PRESETS: tiny, S/16, B/16
    image_size: int = 0              # 0 = the preset's
    image_pos_std: float = 0.0       # 0 = the model's (0.02); from scratch: init std of the image position embeddings (METHOD.md §12)
    text_pos_std: float = 0.0        # 0 = the model's (0.02); from scratch: init std of the text position embeddings (METHOD.md §11)
    concept_head: bool = False       # from scratch, concept losses: L_npc and L_xac read a second MAP head (METHOD.md §12)
    # loss
    loss: str = "siglip"             # siglip | c2lip | degla | c2lip+degla (L_base + C2LIP's concept losses + DeGLA's)
    npc_weight: float = 1.0          # C2LIP: weight of L_npc
    xac_weight: float = 0.01         # C2LIP: weight of L_xac
    xac_temperature: float = 1.0     # C2LIP: lambda inside the patch softmax
    xac_chunk: int = 0               # C2LIP: images per L_xac chunk (0 = all at once)
    concepts: str = ""               # C2LIP: concept cache from `python concepts.py extract` ("" = extract now)
    relation_concepts: bool = False  # C2LIP: each "subject relation object" phrase of a caption is a concept too
    concept_negatives: bool = False  # C2LIP: that phrase swapped / its relation replaced, a negative concept in L_npc
    position_contrast: float = 0.0   # world: weight of a softmax over each object's phrase in its own cell and in the others, per image (METHOD.md §12)
    position_contrast_final: float = -1.0  # world: L_pos weight at the last step, linear from --position_contrast (-1 = constant)
    position_concepts: str = ""      # C2LIP, world: "add" = "a red circle at the top left" per object as a concept too; "only" = instead of the object phrases
    negatives: str = ""              # DeGLA: negatives file in the official shape ("" = generate with concepts.py)
    num_negatives: int = 4           # DeGLA: K hard negatives per caption
    relation_negatives: bool = False   # DeGLA: relation negatives (swap the phrases around a relation, replace the relation) in slots 2 and 4
    ema_decay: float = 0.9996        # DeGLA: teacher <- a * teacher + (1 - a) * student after every step
    igc_weight: float = 0.1          # DeGLA: lambda_1, image-grounded contrast
    tgc_weight: float = 0.1          # DeGLA: lambda_2, text-grounded contrast
    distill_weight: float = 0.005    # DeGLA: lambda_3 at distill_ref_batch; used as x distill_ref_batch / batch_size
    distill_ref_batch: int = 256     # DeGLA: the global batch lambda_3 was tuned at (official 8 x 32)
    tgc_scale: float = 10.0          # DeGLA: fixed logit scale of L_TGC (official code)
    tgc_mask: str = "own"            # DeGLA: own = the paper's own negatives | official = the released tiled mask (METHOD.md §3.5)
    base_own_only: bool = False      # DeGLA: L_base I->T over the image's own K negatives (paper) instead of all (code)
    # optimisation
    batch_size: int = 128            # global batch, split over ranks
    steps: int = 1000
    lr: float = 2e-3
    logit_lr_mult: float = 10.0      # lr multiplier of logit_scale and logit_bias (1.0 in the official recipes)
    warmup: int = 200                # 200, not 50: a short warm-up lets some seeds stall at the all-equal solution (METHOD.md §11)
    weight_decay: float = 0.1        # on tensors with dim >= 2 only
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    adamw: str = "auto"              # auto (fused on CUDA, foreach elsewhere) | fused | foreach: AdamW's implementation
    grad_clip: float = 0.0           # clip the global gradient norm to this before each update (0 = off)
    max_logit_scale: float = math.log(100.0)  # clamp after every step (both official codes)
    # system
    device: str = "auto"             # auto | cpu | cuda
    precision: str = "auto"          # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32: autocast of the forward; weights and losses stay fp32
    compile: bool = False
    distinct_texts: bool = True      # the text tower encodes each distinct text of a group once per step (same numbers)
    threads: int = 1                 # torch CPU threads per rank (0 = torch's default); 1 keeps CPU results exact
    log_every: int = 25
    ckpt_every: int = 250
    keep_ckpts: int = 2              # checkpoints kept in out_dir as ckpt_<step>.pt (ckpt.pt is always the newest)
    preempt_signal: str = "SIGUSR1"  # besides SIGTERM: finish the step, checkpoint, exit 75 ("" = SIGTERM only)
    eval: bool = True                # evaluate on the held-out world at the end (rank 0)
    eval_scenes: int = 1000
    nonfinite: str = "stop"          # a NaN/inf loss: stop (last good checkpoint kept) or skip the step


def parse_args(argv):
    """train.py's flags -> Config (see cli.parse_args)"""
    return cli.parse_args(argv, Config, prog="train.py", doc=__doc__)

# -----------------------------------------------------------------------------
# pieces of the loop


def get_lr(step, cfg):
    """linear warm-up over cfg.warmup steps, then cosine from lr to 0"""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def adamw_kind(cfg, device):
    """--adamw: fused (one kernel for all tensors, step counters on the device) under auto on CUDA; foreach
    (a few kernels per group) elsewhere under auto, which keeps CPU runs' numbers as they were"""
    if cfg.adamw == "auto":
        return "fused" if device.type == "cuda" else "foreach"
    return cfg.adamw


def configure_optimizer(model, cfg, log=print):
    """AdamW (fused or foreach, adamw_kind); decay iff p.dim() >= 2 (matrices, embeddings, pos-embeds, MAP
    latent); logit params apart"""
    device = model.logit_scale.device
    kind = adamw_kind(cfg, device)
    logit = [model.logit_scale, model.logit_bias]
    others = [p for n, p in model.named_parameters() if p.requires_grad and n not in ("logit_scale", "logit_bias")]
    decay = [p for p in others if p.dim() >= 2]
    no_decay = [p for p in others if p.dim() < 2]
    log(f"optimizer: {len(decay)} decayed tensors ({sum(p.numel() for p in decay):,} params), "
        f"{len(no_decay)} not decayed ({sum(p.numel() for p in no_decay):,}), logit scale/bias at {cfg.logit_lr_mult}x lr, "
        f"{kind} AdamW{' (--adamw=auto on ' + device.type + ')' if cfg.adamw == 'auto' else ''}")
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": logit, "weight_decay": 0.0, "lr_mult": cfg.logit_lr_mult},
    ]
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                 **{"fused" if kind == "fused" else "foreach": True})
    except RuntimeError as e:  # fused on a device this torch build has no fused kernel for
        raise UsageError(f"--adamw=fused: {str(e).splitlines()[0][:200]}; use --adamw=foreach") from None


# each loss and what it reads besides the captions: concepts (C2LIP), hard negatives and the EMA teacher (DeGLA)
LOSSES = {"siglip": (), "c2lip": ("concepts",), "degla": ("negatives",), "c2lip+degla": ("concepts", "negatives")}


def uses_concepts(loss):
    return "concepts" in LOSSES[loss]


def uses_negatives(loss):
    return "negatives" in LOSSES[loss]


def text_groups(loss, concept_negatives=False, positions=False):
    """the groups of texts a loss needs besides the captions (data.Collate tokenises them by name)"""
    return (("concepts",) * uses_concepts(loss) + ("concept_negatives",) * (uses_concepts(loss) and concept_negatives)
            + ("negatives",) * uses_negatives(loss) + ("positions",) * positions)


TEACHER_TEXTS = ("captions", "negatives")  # what DeGLA's EMA teacher encodes (besides the images)


def compute_losses(out, batch, cfg, rank_images):
    """the loss terms of one step, as a dict of scalars (this rank's share of each global loss).

    out: the model's outputs, texts by name (out["text"]["captions"], ["concepts"], ["negatives"]);
    batch["owner"]["concepts"]: local image index of each concept; batch["teacher"]: the EMA teacher's outputs;
    batch["sizes"] (optional): every rank's count of each group's texts (losses.gather_sizes, once a step).
    rank_images: every rank's image count (list); this rank's rows start at the sum of earlier ones.
    With negatives DeGLA's L_base replaces L_con.
    """
    rank, _ = losses.world_info()
    offset = sum(rank_images[:rank])
    t, b, text = out["logit_scale"], out["logit_bias"], out["text"]
    sizes = batch.get("sizes", {})
    y_all, _ = losses.gather(text["captions"], sizes=sizes.get("captions"))
    terms = {}
    if uses_negatives(cfg.loss):
        v_all, _ = losses.gather(out["image"], sizes=rank_images)
        q_all, _ = losses.gather(text["negatives"], sizes=sizes.get("negatives"))  # negatives gathered apart from the captions: the layout [P], [Q] holds
        terms["base"] = losses.degla_base_loss(out["image"], v_all, y_all, q_all, t, offset, cfg.base_own_only)
    else:
        terms["con"] = losses.siglip_loss(out["image"], y_all, t, b, offset)
    if uses_concepts(cfg.loss):  # sigmoid losses: t and b, shared with L_con (or, combined, b trained by these alone)
        c_all, _ = losses.gather(text["concepts"], sizes=sizes.get("concepts"))
        owner_all = losses.gather_owners(batch["owner"]["concepts"], rank_images, sizes.get("concepts"))
        n_all = losses.gather(text["concept_negatives"], sizes=sizes.get("concept_negatives"))[0] \
            if "concept_negatives" in text else None  # --concept_negatives: columns no image owns (§2.7)
        x_concept = out.get("concept_image", out["image"])  # --concept_head: the concept losses' own pooling
        terms["npc"] = losses.concept_loss(x_concept, c_all, owner_all, t, b, offset, n_all)
        terms["xac"] = losses.xattn_concept_loss(out["patch_tokens"], c_all, owner_all, t, b, offset,
                                                 cfg.xac_temperature, cfg.xac_chunk)
    if "positions" in text:  # --position_contrast: which cell each object is in, scored by the image embedding
        terms["pos"] = losses.position_contrast_loss(out["image"], text["positions"], batch["owner"]["positions"], t,
                                                     sum(rank_images), world.GRID ** 2)
    if uses_negatives(cfg.loss):  # softmax losses: t only (IGC) or a fixed scale (TGC)
        tea = batch["teacher"]
        terms["igc"] = losses.igc_loss(out["image"], y_all, q_all, t, offset)
        terms["tgc"] = losses.tgc_loss(y_all, tea["text"]["captions"], q_all, offset, cfg.tgc_scale, cfg.tgc_mask)
        terms["distill"] = losses.distill_loss((out["image"], text["captions"], text["negatives"]),
                                               (tea["image"], tea["text"]["captions"], tea["text"]["negatives"]))
    return terms


LOSS_WEIGHTS = {  # each term's weight at a step (only L_pos's may change over the run)
    "con": lambda cfg, step: 1.0, "npc": lambda cfg, step: cfg.npc_weight, "xac": lambda cfg, step: cfg.xac_weight,
    # --position_contrast_final >= 0: linear from --position_contrast at the first step to it at the last
    "pos": lambda cfg, step: cfg.position_contrast if cfg.position_contrast_final < 0 else
    cfg.position_contrast + (cfg.position_contrast_final - cfg.position_contrast) * step / max(1, cfg.steps - 1),
    "base": lambda cfg, step: 1.0, "igc": lambda cfg, step: cfg.igc_weight, "tgc": lambda cfg, step: cfg.tgc_weight,
    # METHOD.md §3.6: L_distill is a sum over the batch, so its pull grows with N; keep the strength lambda_3
    # had at the reference batch: 0.005 * 256 / N (0.01 at our default N = 128)
    "distill": lambda cfg, step: cfg.distill_weight * cfg.distill_ref_batch / cfg.batch_size}


@torch.no_grad()
def ema_update(teacher, student, decay):
    """theta* <- a * theta* + (1 - a) * theta over all parameters, in order; buffers are not averaged (METHOD.md §3.2)"""
    # one fused call over all tensors (a Python loop of lerp_ launches one kernel per tensor on a GPU)
    torch._foreach_lerp_(list(teacher.parameters()), [p.detach() for p in student.parameters()], 1.0 - decay)


# -----------------------------------------------------------------------------
# data setup


def build_data(cfg, mcfg, log=print, tokenizer=None):
    """(dataset, tokenizer) for the configured source; adds concepts (C2LIP) or negatives (DeGLA).

    tokenizer: the one a checkpoint brings (--init, --resume); None builds the world's vocabulary, or a
    word vocabulary of the user's captions, concepts and negatives.
    """
    dataset, tokenizer = runtime.training_source(cfg, mcfg, log, tokenizer)
    keys = getattr(dataset, "keys", None)  # shards: caches and negatives files are joined by sample key
    vocab = set(world.world_vocabulary(cfg.relations)) if cfg.data == "world" else None  # replacements stay in-vocabulary
    annotations = {}
    if uses_concepts(cfg.loss):
        if cfg.concepts:
            annotations["concepts"] = concepts.load_concept_cache(cfg.concepts, dataset.captions, keys)
        else:
            t0 = time.time()
            annotations["concepts"] = concepts.extract_concepts_batch(dataset.captions)
            log(f"concepts: extracted for {len(dataset)} captions in {time.time() - t0:.1f}s "
                f"with tagger {concepts.tagger_name()}")
        if cfg.relation_concepts or cfg.concept_negatives:  # METHOD.md §2.7; no held-out fact in any training text
            held_out = world.names_held_out if cfg.data == "world" and cfg.world_split != "default" else None
            concepts.add_relation_concepts(annotations, dataset.captions, cfg.seed, vocab, cfg.relation_concepts,
                                           cfg.concept_negatives, held_out, log)
        if cfg.position_concepts:  # METHOD.md §12: object phrases that state where the object is
            annotations["concepts"] = world.with_position_concepts(annotations["concepts"], dataset.objects,
                                                                   cfg.position_concepts == "only")
        n = [len(c) for c in annotations["concepts"]]
        log(f"concepts: {sum(n) / len(n):.2f} per caption on average, max {max(n)}")
    if cfg.position_contrast:  # METHOD.md §12: each object in its own cell first, then in the others
        annotations["positions"] = [[p for o in objs for p in world.position_variants(o)] for objs in dataset.objects]
    if uses_negatives(cfg.loss):
        annotations["negatives"], keep = concepts.negatives_for(dataset.captions, cfg.num_negatives, cfg.seed, cfg.negatives,
                                                                    vocab, keys, cfg.data, log, relations=cfg.relation_negatives)
        if cfg.data == "world" and cfg.world_split != "default":  # no held-out pair or fact in any training text
            captions = [dataset.captions[i] for i in keep]
            annotations["negatives"], kept = world.clean_negatives(captions, annotations["negatives"],
                                                                  cfg.num_negatives, cfg.seed, vocab, cfg.relation_negatives)
            log(f"negatives: {len(captions) - len(kept)} more captions dropped, without K clean of held-out text")
            keep = [keep[i] for i in kept]
        if len(keep) < len(dataset):
            dataset = dataset.subset(keep) if keys is not None else data.Subset(dataset, keep)
            for name in ("concepts", "concept_negatives", "positions"):
                if name in annotations:
                    annotations[name] = [annotations[name][i] for i in keep]
    if tokenizer is None:  # word vocabulary of the user's captions, concepts and negatives, saved in the checkpoint
        texts = dataset.captions + [p for values in annotations.values() for rec in values for p in rec]
        tokenizer = WordTokenizer.build(texts, mcfg.context_length, min_count=2, max_size=mcfg.vocab_size - 3)
    if annotations:
        dataset = dataset.annotate(**annotations) if keys is not None else data.Annotated(dataset, **annotations)
    return dataset, tokenizer

# -----------------------------------------------------------------------------
# the steps of main


def build_model(cfg, mcfg, tokenizer, resume_ckpt, init_ckpt, device, log):
    """(student, EMA teacher or None) on device, with the checkpoint's weights where there is one"""
    mcfg.vocab_size = tokenizer.vocab_size
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = DualEncoder(mcfg)
    if init_ckpt is not None:
        try:
            model.load_state_dict(init_ckpt["model"])
        except RuntimeError as e:
            raise UsageError(f"checkpoint weights do not fit its own model config ({str(e)[:200]}); "
                             f"the file was written by another version or edited") from None
    model.to(device)
    teacher = None
    if uses_negatives(cfg.loss):
        if cfg.loss == "degla":  # no softmax loss uses b, and DDP needs every trainable param used
            model.logit_bias.requires_grad_(False)  # (c2lip+degla: the sigmoid concept losses train it)
        teacher = copy.deepcopy(model).requires_grad_(False).eval()  # EMA teacher, fp32 (METHOD.md §3.2)
        if resume_ckpt is not None:
            if "teacher" not in resume_ckpt:
                raise UsageError(f"the checkpoint in {cfg.out_dir} has no EMA teacher: it was not written by a "
                                 f"--loss=degla run; use another --out_dir")
            teacher.load_state_dict(resume_ckpt["teacher"])
    source = cfg.model if init_ckpt is None else f"from {'--resume' if resume_ckpt is not None else cfg.init}"
    log(f"model {source}: {model.num_params() / 1e6:.2f}M parameters, {model.visual.num_patches} patches, "
        f"vocab {tokenizer.vocab_size}, context {mcfg.context_length}")
    return model, teacher


def uses_bf16(cfg, env):
    """--precision: bf16 autocast on every device when asked, on CUDA only under auto"""
    return cfg.precision == "bf16" or (cfg.precision == "auto" and env.use_cuda)


def train_step(batch, forward, teacher, cfg, env, report, step=0):
    """forward, loss and backward of one global batch -> (loss, terms, images on this rank); the step sets
    scheduled loss weights (LOSS_WEIGHTS)"""
    # every rank's images and texts per group, in one exchange: the gathers of the losses need them
    batch["sizes"] = losses.gather_sizes({"images": batch["images"].shape[0],
                                          **{k: v.shape[0] for k, v in batch["rows"].items()}}, env.device)
    rank_images = batch["sizes"]["images"]
    report.add_skipped(batch["skipped"], cfg.batch_size - sum(rank_images))
    images = batch["images"].to(env.device, non_blocking=True)
    def to_device(group):
        return {k: v.to(env.device, non_blocking=True) for k, v in group.items()}
    texts, rows, batch["owner"] = to_device(batch["texts"]), to_device(batch["rows"]), to_device(batch["owner"])
    with torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=uses_bf16(cfg, env)):
        out = forward(images, texts, rows, return_tokens=uses_concepts(cfg.loss))
        if teacher is not None:
            with torch.no_grad():
                batch["teacher"] = teacher(images, {k: texts[k] for k in TEACHER_TEXTS},
                                           {k: rows[k] for k in TEACHER_TEXTS})
        terms = compute_losses(out, batch, cfg, rank_images)
        loss = sum(LOSS_WEIGHTS[k](cfg, step) * v for k, v in terms.items())
    # each rank holds its share of the global loss; x world so that DDP's gradient mean is the global gradient
    (loss * env.world).backward()
    return loss, terms, images.shape[0]


def finish_step(model, teacher, optimizer, cfg):
    """the update after a finite backward: the optional norm clip, AdamW, the logit clamp, then the EMA teacher"""
    if cfg.grad_clip > 0:  # on the all-reduced gradients, so every rank clips alike; no host sync
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.logit_scale.clamp_(0, cfg.max_logit_scale)
    if teacher is not None:
        ema_update(teacher, model, cfg.ema_decay)  # after the clamp (METHOD.md §3.7)


# -----------------------------------------------------------------------------
# the training loop


def set_lr(optimizer, step, cfg):
    lr = get_lr(step, cfg)
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_mult"]
    return lr


def train_loop(cfg, env, model, forward, teacher, optimizer, batches, run):
    """steps until cfg.steps; `run` (runtime.Run) counts them, agrees with the other ranks after each one (all
    finite? a stop signal anywhere?), logs, checkpoints and stops cleanly on preemption. Returns the last step."""
    model.train()
    with run:
        while run.step < cfg.steps:
            lr = set_lr(optimizer, run.step, cfg)
            loss, terms, n_images = train_step(next(batches), forward, teacher, cfg, env, run.report, run.step)
            finite, stopping = run.agree(loss)  # one host sync per step
            if finite:
                finish_step(model, teacher, optimizer, cfg)
                run.log(loss, terms, lr, model, n_images)
            else:  # drop this step's gradients (or stop, under --nonfinite=stop)
                optimizer.zero_grad(set_to_none=True)
                run.skip_nonfinite(terms)
            run.checkpoint(stopping, model, optimizer, teacher)
    return run.step


# -----------------------------------------------------------------------------
# main


def main(cfg):
    cfg.out_dir = cfg.out_dir or os.path.join("runs", cfg.loss)
    env = runtime.setup_distributed(cfg)
    log = print if env.master else (lambda *a, **k: None)
    runtime.check_config(cfg, env.world, LOSSES)
    runtime.claim_out_dir(cfg, env)
    resume_ckpt, init_ckpt, mcfg = runtime.load_start(cfg, log)
    random.seed(cfg.seed)
    dataset, tokenizer = build_data(cfg, mcfg, log, tokenizer_from_state_dict(init_ckpt["tokenizer"]) if init_ckpt else None)
    report = runtime.BadDataReport(cfg, dataset, tokenizer, env.master, log)
    model, teacher = build_model(cfg, mcfg, tokenizer, resume_ckpt, init_ckpt, env.device, log)
    optimizer = configure_optimizer(model, cfg, log)
    step = runtime.resume_optimizer(optimizer, resume_ckpt, log)
    torch.manual_seed(cfg.seed + 1000 * env.rank + step)  # per-rank stream from here on
    forward = runtime.wrap_model(model, cfg, env)
    batches, steps_per_epoch = runtime.make_batches(cfg, mcfg, dataset, tokenizer, env, step,
                                                    text_groups(cfg.loss, cfg.concept_negatives, cfg.position_contrast > 0))
    if env.master:
        runtime.write_run_info(cfg, mcfg, env)
    log(f"training {cfg.steps} steps, global batch {cfg.batch_size} on {env.world} rank(s) ({env.device}), "
        f"{steps_per_epoch} steps per epoch, {'bf16 autocast' if uses_bf16(cfg, env) else 'fp32'} (losses in fp32)")
    train_loop(cfg, env, model, forward, teacher, optimizer, batches, runtime.Run(cfg, env, tokenizer, report, step, log))
    report.summary()
    if env.master and cfg.eval and cfg.data == "world":
        import evaluate
        evaluate.final_eval(model, tokenizer, cfg, mcfg.image_size, env.device, log)
    if env.ddp:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main, Config, doc=__doc__)
