import json
import os

import pytest
import torch

import losses
import train


def small(tmp_path, **kw):
    base = dict(out_dir=str(tmp_path / "run"), world_scenes=256, batch_size=32, steps=6, warmup=2, log_every=2,
                ckpt_every=3, eval=False, lr=2e-3)
    base.update(kw)
    return train.Config(**base)


def read_metrics(cfg):
    with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as f:
        return [json.loads(l) for l in f]


def test_parse_args():
    cfg = train.parse_args(["--steps=7", "--lr=0.1", "--resume", "--eval=false", "--loss=c2lip", "--out-dir=x"])
    assert (cfg.steps, cfg.lr, cfg.resume, cfg.eval, cfg.loss, cfg.out_dir) == (7, 0.1, True, False, "c2lip", "x")
    with pytest.raises(ValueError, match="unknown option --stpes"):
        train.parse_args(["--stpes=3"])
    with pytest.raises(ValueError, match="expected int"):
        train.parse_args(["--steps=many"])
    with pytest.raises(ValueError, match="needs a value"):
        train.parse_args(["--lr"])
    with pytest.raises(ValueError, match="boolean"):
        train.parse_args(["--eval=maybe"])


def test_lr_schedule():
    cfg = train.Config(lr=1.0, warmup=10, steps=110)
    assert train.get_lr(0, cfg) == pytest.approx(0.1)
    assert train.get_lr(9, cfg) == pytest.approx(1.0)
    assert train.get_lr(60, cfg) == pytest.approx(0.5)
    assert train.get_lr(110, cfg) == pytest.approx(0.0)


def test_optimizer_groups():
    from model import DualEncoder, model_config
    m = DualEncoder(model_config("tiny", vocab_size=30))
    opt = train.configure_optimizer(m, train.Config(), log=lambda *a: None)
    decay, no_decay, logit = opt.param_groups
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert any(p is m.visual.attn_pool.latent for p in decay["params"])  # the MAP latent is decayed
    assert logit["params"][0] is m.logit_scale and logit["lr_mult"] == 10.0
    n = sum(len(g["params"]) for g in opt.param_groups)
    assert n == len(list(m.parameters()))


def test_training_lowers_the_loss_on_a_fixed_batch():
    # overfit one batch: the loss must fall well below its starting value
    import data
    import world
    from model import DualEncoder, WordTokenizer, model_config
    torch.manual_seed(0)
    tok = WordTokenizer(world.world_vocabulary(), 16)
    m = DualEncoder(model_config("tiny", vocab_size=tok.vocab_size))
    ds = world.WorldDataset(32, seed=0)
    batch = data.Collate(tok, 32)([ds[i] for i in range(32)])
    opt = train.configure_optimizer(m, train.Config(), log=lambda *a: None)
    first = None
    for step in range(40):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * g["lr_mult"]
        out = m(batch["images"], batch["texts"], batch["rows"])
        loss = losses.siglip_loss(out["image"], out["text"]["captions"], out["logit_scale"], out["logit_bias"])
        first = first if first is not None else loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.5 * first


@pytest.mark.parametrize("loss_name", ["siglip", "c2lip"])
def test_train_runs_and_logs(tmp_path, loss_name):
    cfg = small(tmp_path, loss=loss_name)
    train.main(cfg)
    rows = read_metrics(cfg)
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    if loss_name == "c2lip":
        assert {"con", "npc", "xac"} <= set(rows[0])
    ckpt = train.load_checkpoint(os.path.join(cfg.out_dir, "ckpt.pt"))
    assert ckpt["step"] == 6 and ckpt["config"]["loss"] == loss_name


def test_resume_matches_uninterrupted(tmp_path):
    full = small(tmp_path / "a")
    train.main(full)
    # stop after 3 steps (a checkpoint is written there), then resume to 6
    part = small(tmp_path / "b", steps=3)
    train.main(part)
    resumed = small(tmp_path / "b", resume=True)
    train.main(resumed)
    a = train.load_checkpoint(os.path.join(full.out_dir, "ckpt.pt"))["model"]
    b = train.load_checkpoint(os.path.join(resumed.out_dir, "ckpt.pt"))["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    la = [r["loss"] for r in read_metrics(full)]
    lb = [r["loss"] for r in read_metrics(resumed)]
    assert lb[-1] == pytest.approx(la[-1], rel=1e-5)


def test_bad_checkpoints_are_clear(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        train.load_checkpoint(str(p))
    torch.save({"weights": torch.zeros(2)}, p)
    with pytest.raises(ValueError, match="not a checkpoint of this project"):
        train.load_checkpoint(str(p))
